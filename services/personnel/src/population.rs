//! The population registry (公安库): the client personnel asks, with a short deadline so a slow registry never holds
//! up a 校验, and the development registry the platform ships (`make run`, tests), backed by a table loaded from a
//! CSV file (`身份证号码,姓名,是否死亡`).

use std::time::Duration;

use proto::population::population_registry_client::PopulationRegistryClient;
use proto::population::population_registry_server::{PopulationRegistry, PopulationRegistryServer};
use proto::population::{LookupReply, LookupRequest, PersonAnswer, PersonQuery, PopulationStatus};
use sqlx::PgPool;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// At most this many people in one lookup.
pub const MAX_BATCH: usize = 1000;

/// What the registry said of one person, as personnel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Found,
    NotFound,
    NameMismatch,
    Deceased,
    /// No answer in time: checked again later.
    Pending,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Found => "found",
            Answer::NotFound => "not_found",
            Answer::NameMismatch => "name_mismatch",
            Answer::Deceased => "deceased",
            Answer::Pending => "pending",
        }
    }

    /// The answer `as_str` wrote; anything else is asked again later.
    pub fn parse(stored: &str) -> Self {
        match stored {
            "found" => Answer::Found,
            "not_found" => Answer::NotFound,
            "name_mismatch" => Answer::NameMismatch,
            "deceased" => Answer::Deceased,
            _ => Answer::Pending,
        }
    }
}

/// The client. Connects lazily: personnel starts while the registry is down, and each lookup then answers Pending.
#[derive(Debug, Clone)]
pub struct Registry {
    client: Option<PopulationRegistryClient<Channel>>,
    timeout: Duration,
}

impl Registry {
    /// `url` empty: no registry is configured, every lookup is Pending.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = if url.trim().is_empty() {
            None
        } else {
            let endpoint = Endpoint::from_shared(url.trim().to_owned())
                .map_err(|error| anyhow::anyhow!("personnel.population_registry_url: {error}"))?
                .connect_timeout(timeout)
                .timeout(timeout);
            Some(PopulationRegistryClient::new(endpoint.connect_lazy()))
        };
        Ok(Self { client, timeout })
    }

    /// The answers for `people` (ID number, name), in order; all Pending when the registry does not answer in time.
    pub async fn lookup(&self, people: &[(String, String)]) -> Vec<Answer> {
        let pending = || vec![Answer::Pending; people.len()];
        let Some(client) = &self.client else { return pending() };
        let queries = people
            .iter()
            .map(|(id_number, name)| PersonQuery { id_number: id_number.clone(), name: name.clone() })
            .collect();
        let mut client = client.clone();
        match tokio::time::timeout(self.timeout, client.lookup(LookupRequest { queries })).await {
            Ok(Ok(reply)) => {
                let answers = reply.into_inner().answers;
                if answers.len() != people.len() {
                    tracing::warn!("the population registry answered a different number of people");
                    return pending();
                }
                answers
                    .iter()
                    .map(|answer| match PopulationStatus::try_from(answer.status) {
                        Ok(PopulationStatus::Found) => Answer::Found,
                        Ok(PopulationStatus::NotFound) => Answer::NotFound,
                        Ok(PopulationStatus::NameMismatch) => Answer::NameMismatch,
                        Ok(PopulationStatus::Deceased) => Answer::Deceased,
                        _ => Answer::Pending,
                    })
                    .collect()
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), "the population registry refused a lookup");
                pending()
            }
            Err(_) => {
                tracing::warn!(timeout_ms = self.timeout.as_millis(), "the population registry did not answer in time");
                pending()
            }
        }
    }
}

/// The development registry's schema, in a database of its own (it stands in for another bureau's system).
pub static DEVELOPMENT_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/population");

/// The development registry: a table of people, loaded from a file.
#[derive(Debug, Clone)]
pub struct DevelopmentRegistry {
    pool: PgPool,
}

impl DevelopmentRegistry {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn into_server(self) -> PopulationRegistryServer<Self> {
        PopulationRegistryServer::new(self)
    }

    /// Loads `身份证号码,姓名[,是否死亡]` rows (a header line first), replacing what the table had for those numbers.
    pub async fn load_csv(&self, text: &str) -> Result<u64, sqlx::Error> {
        let mut loaded = 0;
        let mut transaction = self.pool.begin().await?;
        for line in text.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let (Some(id_number), Some(name)) = (cells.first(), cells.get(1)) else { continue };
            if id_number.is_empty() {
                continue;
            }
            let deceased = cells.get(2).is_some_and(|cell| matches!(*cell, "是" | "1" | "true"));
            sqlx::query(
                "insert into population (id_number, name, deceased) values ($1, $2, $3) \
                 on conflict (id_number) do update set name = excluded.name, deceased = excluded.deceased",
            )
            .bind(id_number.to_ascii_uppercase())
            .bind(name)
            .bind(deceased)
            .execute(&mut *transaction)
            .await?;
            loaded += 1;
        }
        transaction.commit().await?;
        Ok(loaded)
    }
}

#[tonic::async_trait]
impl PopulationRegistry for DevelopmentRegistry {
    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<LookupReply>, Status> {
        let queries = request.into_inner().queries;
        if queries.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_BATCH} people a lookup")));
        }
        let numbers: Vec<String> = queries.iter().map(|query| query.id_number.clone()).collect();
        let known: Vec<(String, String, bool)> =
            sqlx::query_as("select id_number, name, deceased from population where id_number = any($1)")
                .bind(&numbers)
                .fetch_all(&self.pool)
                .await
                .map_err(kit::db::status)?;
        let answers = queries
            .into_iter()
            .map(|query| {
                let status = match known.iter().find(|(number, _, _)| *number == query.id_number) {
                    None => PopulationStatus::NotFound,
                    Some((_, _, true)) => PopulationStatus::Deceased,
                    Some((_, name, false)) if *name == query.name => PopulationStatus::Found,
                    Some(_) => PopulationStatus::NameMismatch,
                };
                PersonAnswer { id_number: query.id_number, status: status.into() }
            })
            .collect();
        Ok(Response::new(LookupReply { answers }))
    }
}

/// The `population` section: whether `pension all` serves the development registry, where, and from which file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct DevelopmentConfig {
    pub enabled: bool,
    pub addr: std::net::SocketAddr,
    /// A CSV of `身份证号码,姓名,是否死亡` loaded at start.
    pub file: Option<std::path::PathBuf>,
    pub database: kit::db::DatabaseConfig,
}

impl Default for DevelopmentConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 50070)),
            file: None,
            database: kit::db::DatabaseConfig::default(),
        }
    }
}

/// The development registry, bound and loaded.
#[derive(Debug)]
pub struct DevelopmentServer {
    listener: tokio::net::TcpListener,
    registry: DevelopmentRegistry,
}

impl DevelopmentServer {
    /// `None` unless enabled.
    pub async fn build(config: &DevelopmentConfig) -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        if !config.enabled {
            return Ok(None);
        }
        let pool = kit::db::connect(&config.database, "pension_population").await?;
        DEVELOPMENT_MIGRATOR.run(&pool).await.context("the development population registry's schema")?;
        let registry = DevelopmentRegistry::new(pool);
        if let Some(file) = &config.file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("population.file: cannot read {}", file.display()))?;
            let loaded = registry.load_csv(&text).await?;
            tracing::info!(loaded, file = %file.display(), "development population registry loaded");
        }
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("failed to bind the development population registry {}", config.addr))?;
        Ok(Some(Self { listener, registry }))
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
        tonic::transport::Server::builder()
            .add_service(self.registry.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(self.listener),
                shutdown.cancelled_owned(),
            )
            .await?;
        Ok(())
    }
}
