//! The life of a service process, the same for every service: connect to its database and migrate it, ensure its
//! event stream, then serve its tonic service on NATS RPC and on gRPC, relay its outbox, and answer the admin
//! endpoints; on shutdown, stop taking requests, finish those in flight, then flush the outbox.
//!
//! A service supplies only what is its own: its name, migrations, configuration and tonic service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;

use proto::names::{Namespace, Service};
use tonic::Status;

use crate::admin::Readiness;
use crate::db::DatabaseConfig;
use crate::nats::NatsConfig;
use crate::outbox::{Relay, RelayConfig};
use crate::process::Process;
use crate::rpc::NatsChannel;

/// What the components of one process share: the NATS connection, the namespace and readiness.
#[derive(Debug, Clone)]
pub struct Platform {
    pub nats: async_nats::Client,
    pub namespace: Namespace,
    pub readiness: Readiness,
    request_timeout: Duration,
}

impl Platform {
    /// Connects to NATS as configured in the `nats` section, and adds the "nats" readiness check.
    pub async fn connect(process: &Process, client_name: &str) -> anyhow::Result<Self> {
        let config: NatsConfig = process.settings.section("nats")?;
        Self::connect_with(&config, client_name, process.readiness.clone()).await
    }

    pub async fn connect_with(config: &NatsConfig, client_name: &str, readiness: Readiness) -> anyhow::Result<Self> {
        let namespace = Namespace::new(config.namespace.clone()).context("configuration key `nats.namespace`")?;
        let nats = crate::nats::connect(config, client_name).await.context("failed to connect to NATS")?;
        let check_nats = nats.clone();
        readiness.add("nats", move || {
            let nats = check_nats.clone();
            async move { crate::nats::check(&nats).await }
        });
        Ok(Self { nats, namespace, readiness, request_timeout: config.request_timeout })
    }

    /// Waits until the NATS connection is up, for short-lived commands whose first call must not race the
    /// background connect.
    pub async fn wait_connected(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.nats.connection_state() != async_nats::connection::State::Connected {
            anyhow::ensure!(Instant::now() < deadline, "cannot reach NATS within {} s", limit.as_secs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A channel for calling `service` over NATS RPC: `UnitsClient::new(platform.channel(Service::Units))`.
    pub fn channel(&self, service: Service) -> NatsChannel {
        self.channel_with_timeout(service, self.request_timeout)
    }

    /// A channel whose calls may take longer than requests usually do (maintenance, such as a key rotation).
    pub fn channel_with_timeout(&self, service: Service, timeout: Duration) -> NatsChannel {
        NatsChannel::new(self.nats.clone(), self.namespace.rpc_prefix(service.as_str()), timeout)
    }
}

/// The section every service has in the configuration (`identity`, `units`, …). Unset addresses and database take
/// the service's [`ServiceDefaults`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServiceConfig {
    pub database: DatabaseConfig,
    /// Where the service's own gRPC (with health and reflection) listens, for operators and debugging.
    pub grpc_addr: Option<SocketAddr>,
    /// Where `/healthz`, `/readyz` and `/metrics` listen when the service runs as its own process. In `pension all`
    /// the gateway's port serves them for the whole process instead.
    pub admin_addr: Option<SocketAddr>,
}

/// What a service is and where it listens unless configured otherwise.
#[derive(Debug, Clone, Copy)]
pub struct ServiceDefaults {
    pub service: Service,
    /// The database used when no URL is configured.
    pub database: &'static str,
    pub grpc_port: u16,
    pub admin_port: u16,
}

impl ServiceDefaults {
    fn grpc_addr(&self, config: &ServiceConfig) -> SocketAddr {
        config.grpc_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], self.grpc_port)))
    }

    fn admin_addr(&self, config: &ServiceConfig) -> SocketAddr {
        config.admin_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], self.admin_port)))
    }
}

/// What one running instance is, and the handles its code uses.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub service: &'static str,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    relay: Relay,
    /// A random id of this instance, so replicas can be told apart in replies and logs.
    pub instance_id: String,
    started: Instant,
}

/// The platform version, the same for every service of one build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Runtime {
    /// Connects the database and migrates it, ensures the service's event stream, adds the "postgres" readiness
    /// check, and records the start as a `ServiceStarted` event.
    pub async fn start(
        defaults: &ServiceDefaults,
        database: &DatabaseConfig,
        migrator: &Migrator,
        platform: &Platform,
    ) -> anyhow::Result<Self> {
        let service = defaults.service.as_str();
        let nats = platform.nats.clone();
        let readiness = &platform.readiness;
        // Migrations run as the owner, on a connection of their own; every query after them as the application role.
        let owner = crate::db::connect(&DatabaseConfig { max_connections: 1, ..database.clone() }, defaults.database)
            .await
            .with_context(|| format!("failed to connect the {service} database"))?;
        crate::db::migrate(&owner, migrator)
            .await
            .with_context(|| format!("failed to migrate the {service} database"))?;
        owner.close().await;
        let pool = crate::db::connect_application(database, defaults.database)
            .await
            .with_context(|| format!("failed to connect the {service} database"))?;
        let jetstream = jetstream::new(nats.clone());
        // The relay creates the stream on its first round (and again after failures), so a NATS outage at
        // start-up delays events instead of stopping the service.
        let (stream, subjects) = (platform.namespace.events_stream(service), platform.namespace.events_filter(service));
        let check_pool = pool.clone();
        readiness.add("postgres", move || {
            let pool = check_pool.clone();
            async move { crate::db::check(&pool).await }
        });
        let relay = Relay::new(pool.clone(), jetstream.clone(), RelayConfig::default()).with_stream(stream, subjects);
        let instance_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let runtime = Self { service, pool, nats, jetstream, relay, instance_id, started: Instant::now() };
        runtime.announce_start(&platform.namespace).await.context("failed to record the start in the outbox")?;
        Ok(runtime)
    }

    async fn announce_start(&self, namespace: &Namespace) -> Result<(), sqlx::Error> {
        use prost::Message as _;
        let event_id = crate::outbox::new_event_id();
        let event = proto::events::ServiceStarted {
            meta: Some(proto::events::EventMeta {
                event_id: event_id.to_string(),
                occurred_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                actor: "system".into(),
                trace_id: String::new(),
            }),
            service: self.service.to_owned(),
            version: VERSION.to_owned(),
            instance_id: self.instance_id.clone(),
        };
        let mut transaction = self.pool.begin().await?;
        let subject = namespace.event_subject(self.service, "service_started");
        crate::outbox::enqueue(&mut transaction, event_id, &subject, &event.encode_to_vec()).await?;
        transaction.commit().await?;
        self.wake_relay();
        Ok(())
    }

    /// Tells the relay that an event was committed, so it publishes without waiting for its next poll.
    pub fn wake_relay(&self) {
        self.relay.waker().notify_one();
    }

    /// The reply to every service's `GetStatus`: `UNAVAILABLE` when the database cannot be reached.
    pub async fn status(&self) -> Result<proto::common::ServiceStatus, Status> {
        let (backlog, handled, schema) = tokio::try_join!(
            crate::outbox::backlog(&self.pool),
            crate::consumer::handled_count(&self.pool),
            crate::db::schema_version(&self.pool),
        )
        .map_err(crate::db::status)?;
        Ok(proto::common::ServiceStatus {
            service: self.service.to_owned(),
            version: VERSION.to_owned(),
            instance_id: self.instance_id.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            outbox_backlog: u64::try_from(backlog).unwrap_or_default(),
            inbox_handled: u64::try_from(handled).unwrap_or_default(),
            schema_version: schema,
        })
    }
}

/// A service bound to its ports and ready to run.
pub struct ServiceApp<S> {
    runtime: Runtime,
    service: S,
    rpc_prefix: String,
    grpc_listener: TcpListener,
    admin: Option<(TcpListener, Readiness)>,
    descriptor_sets: Vec<&'static [u8]>,
    background: Vec<BackgroundTask>,
}

/// Work a service runs beside its servers (event consumers), started with them and stopped by the same shutdown.
type BackgroundTask = Box<dyn FnOnce(CancellationToken) -> futures::future::BoxFuture<'static, ()> + Send>;

impl<S> std::fmt::Debug for ServiceApp<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceApp")
            .field("service", &self.runtime.service)
            .field("rpc_prefix", &self.rpc_prefix)
            .finish_non_exhaustive()
    }
}

impl<S> ServiceApp<S>
where
    S: NamedService
        + tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// Binds the gRPC port and, with `serve_admin`, the admin port (port 0 picks a free one, as tests do).
    /// Without it the process serves the admin endpoints elsewhere (`pension all`).
    pub async fn bind(
        runtime: Runtime,
        service: S,
        (config, defaults): (&ServiceConfig, &ServiceDefaults),
        platform: &Platform,
        serve_admin: bool,
    ) -> anyhow::Result<Self> {
        let rpc_prefix = platform.namespace.rpc_prefix(defaults.service.as_str());
        let descriptor_sets = vec![proto::FILE_DESCRIPTOR_SET];
        let grpc_addr = defaults.grpc_addr(config);
        let grpc_listener = TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("failed to bind the {} gRPC port {grpc_addr}", runtime.service))?;
        let admin = match serve_admin.then_some(&platform.readiness) {
            Some(readiness) => Some((
                TcpListener::bind(defaults.admin_addr(config))
                    .await
                    .with_context(|| format!("failed to bind the {} admin port", runtime.service))?,
                readiness.clone(),
            )),
            None => None,
        };
        Ok(Self { runtime, service, rpc_prefix, grpc_listener, admin, descriptor_sets, background: Vec::new() })
    }

    /// Adds work to run beside the servers until shutdown, such as an event consumer.
    pub fn with_background<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background.push(Box::new(move |shutdown| Box::pin(task(shutdown))));
        self
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().and_then(|(listener, _)| listener.local_addr().ok()).map(|addr| addr.port())
    }

    /// Runs until `shutdown` is cancelled, then stops taking requests, finishes those in flight and flushes the
    /// outbox, in that order, so the events of the last requests are published too.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let service_name = self.runtime.service;
        let relay_shutdown = CancellationToken::new();
        let relay = tokio::spawn(self.runtime.relay.clone().run(relay_shutdown.clone()));
        let background: Vec<_> = self.background.into_iter().map(|task| tokio::spawn(task(shutdown.clone()))).collect();
        let admin = self.admin.map(|(listener, readiness)| {
            let router = crate::admin::router(readiness);
            tokio::spawn(crate::admin::serve_http(listener, router, shutdown.clone()))
        });
        let rpc = crate::rpc::RpcServer::new(self.runtime.nats.clone(), self.rpc_prefix, service_name).serve(
            S::NAME,
            self.service.clone(),
            shutdown.clone(),
        );
        let grpc = crate::grpc::GrpcServer {
            routes: tonic::service::Routes::new(self.service),
            service_names: vec![S::NAME.to_owned()],
            descriptor_sets: self.descriptor_sets,
        }
        .serve(self.grpc_listener, shutdown.clone());
        let (rpc, grpc) = tokio::join!(rpc, grpc);
        for task in background {
            if let Err(error) = task.await {
                tracing::warn!(service = service_name, %error, "a background task failed");
            }
        }
        relay_shutdown.cancel();
        let relay_result = tokio::time::timeout(Duration::from_secs(10), relay).await;
        if let Some(admin) = admin {
            admin.await.context("admin server task")?.context("admin server")?;
        }
        rpc.with_context(|| format!("{service_name} NATS RPC server"))?;
        grpc.with_context(|| format!("{service_name} gRPC server"))?;
        if relay_result.is_err() {
            tracing::warn!(service = service_name, "outbox relay did not stop in time");
        }
        Ok(())
    }
}
