//! Starting personnel and a development population registry for a test.

use std::time::Duration;

use kit::admin::Readiness;
use kit::rpc::NatsChannel;
use kit::service::{Platform, ServiceConfig};
use kit::shutdown::CancellationToken;
use kit::testing::{TestDatabase, isolated_nats};
use proto::common::Caller;
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use sqlx::PgPool;

pub struct TestPersonnel {
    pub client: PersonnelClient<NatsChannel>,
    pub pool: PgPool,
    pub platform: Platform,
    config: personnel::Config,
    /// Stops this instance of the service (the development registry has its own).
    instance: CancellationToken,
    shutdown: CancellationToken,
    _databases: Vec<TestDatabase>,
}

impl Drop for TestPersonnel {
    fn drop(&mut self) {
        self.instance.cancel();
        self.shutdown.cancel();
    }
}

impl TestPersonnel {
    /// Kills the running instance and starts a new one on the same database and namespace: what a crash and a
    /// restart leave.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// Restarts with changed settings, as a rolling deployment of new configuration does.
    pub async fn restart_with(&mut self, change: impl FnOnce(&mut personnel::Config)) {
        change(&mut self.config);
        self.instance.cancel();
        self.instance = CancellationToken::new();
        let app = personnel::build(&self.config, &self.platform, false).await.expect("personnel builds again");
        tokio::spawn(app.run(self.instance.clone()));
        wait_until_answering(&self.client).await;
    }
}

async fn wait_until_answering(client: &PersonnelClient<NatsChannel>) {
    kit::testing::eventually(Duration::from_secs(10), "personnel answers", || {
        let mut client = client.clone();
        async move { client.get_status(proto::common::GetStatusRequest {}).await.is_ok() }
    })
    .await;
}

/// The people the development registry knows in these tests.
pub const POPULATION_CSV: &str = "身份证号码,姓名,是否死亡\n\
230502198001011238,张伟,否\n\
230502199002152344,李娜,否\n\
11010519491231002X,王芳,否\n\
440524188001010014,赵老,是\n";

/// Personnel with a development registry that answers; `registry_url` overrides where personnel looks for it.
pub async fn spawn_personnel_with(registry_url: Option<String>) -> TestPersonnel {
    let shutdown = CancellationToken::new();
    let registry_database = TestDatabase::create().await;
    let registry_pool = kit::db::connect(&registry_database.config(), "unused").await.expect("registry pool");
    personnel::population::DEVELOPMENT_MIGRATOR.run(&registry_pool).await.expect("registry schema");
    let registry = personnel::population::DevelopmentRegistry::new(registry_pool);
    registry.load_csv(POPULATION_CSV).await.expect("registry loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let registry_port = listener.local_addr().expect("address").port();
    let serve_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(registry.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                serve_shutdown.cancelled(),
            )
            .await
    });

    let database = TestDatabase::create().await;
    let platform =
        Platform::connect_with(&isolated_nats(), "personnel-test", Readiness::default()).await.expect("nats");
    platform.wait_connected(Duration::from_secs(10)).await.expect("nats connected");
    kit::testing::sweep_stale_test_streams(&async_nats::jetstream::new(platform.nats.clone())).await;
    let config = personnel::Config {
        service: ServiceConfig {
            database: database.config(),
            grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
            admin_addr: None,
        },
        population_registry_url: registry_url.unwrap_or_else(|| format!("http://127.0.0.1:{registry_port}")),
        ..personnel::Config::default()
    };
    let instance = CancellationToken::new();
    let app = personnel::build(&config, &platform, false).await.expect("personnel builds");
    tokio::spawn(app.run(instance.clone()));
    let pool = kit::db::connect(&database.config(), "unused").await.expect("pool");
    let client = PersonnelClient::new(platform.channel(Service::Personnel));
    wait_until_answering(&client).await;
    TestPersonnel { client, pool, platform, config, instance, shutdown, _databases: vec![registry_database, database] }
}

pub async fn spawn_personnel() -> TestPersonnel {
    spawn_personnel_with(None).await
}

/// Personnel sealing with `data_key` as version `version`.
pub async fn spawn_personnel_sealing(data_key: &str, version: i32) -> TestPersonnel {
    let mut personnel = spawn_personnel_with(None).await;
    personnel
        .restart_with(|config| {
            config.sealing.data_key = Some(data_key.to_owned().into());
            config.sealing.data_key_version = version;
        })
        .await;
    personnel
}

/// The operator of unit `institution_code`.
pub fn operator(institution_code: &str) -> Option<Caller> {
    Some(Caller {
        actor: format!("{institution_code}-01"),
        role: "unit_operator".into(),
        institution_code: institution_code.into(),
        ..Caller::default()
    })
}
