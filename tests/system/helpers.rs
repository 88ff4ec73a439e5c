//! Starting the whole platform in-process for a test, isolated from every other test.

use std::net::SocketAddr;
use std::time::Duration;

use kit::admin::Readiness;
use kit::nats::NatsConfig;
use kit::redis::RedisConfig;
use kit::service::{Platform, ServiceConfig};
use kit::shutdown::CancellationToken;
use kit::testing::TestDatabase;
use pension::{AllInOne, AllInOneConfig};

/// The province admin's bootstrap token of the test platforms.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The platform running inside the test process.
pub struct TestPlatform {
    pub platform: Platform,
    pub http_port: u16,
    pub grpc_port: u16,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _databases: Vec<TestDatabase>,
}

/// Builds every service and the gateway on port 0, each service with a database of its own on the server of
/// `database_admin_url`, in the NATS namespace and Redis prefix of `nats` and `redis`.
pub async fn spawn_platform(database_admin_url: &str, nats: NatsConfig, redis: RedisConfig) -> TestPlatform {
    spawn_platform_limited(database_admin_url, nats, redis, gateway::Config::default().public_writes_per_minute).await
}

/// As [`spawn_platform`], with `public_writes_per_minute` public state-changing calls allowed per address.
pub async fn spawn_platform_limited(
    database_admin_url: &str,
    nats: NatsConfig,
    redis: RedisConfig,
    public_writes_per_minute: u32,
) -> TestPlatform {
    let platform = Platform::connect_with(&nats, "system-test", Readiness::default()).await.expect("nats");
    platform.wait_connected(Duration::from_secs(10)).await.expect("nats connected");
    kit::testing::sweep_stale_test_streams(&async_nats::jetstream::new(platform.nats.clone())).await;
    let mut databases = Vec::new();
    let mut service_config = async || {
        let database = TestDatabase::create_on(database_admin_url).await;
        let config = ServiceConfig {
            database: database.config(),
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_addr: None,
        };
        databases.push(database);
        config
    };
    let config = AllInOneConfig {
        identity: identity::Config { service: service_config().await, ..identity::Config::default() },
        units: service_config().await,
        personnel: service_config().await,
        printing: service_config().await,
        gateway: gateway::Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: Some(ADMIN_TOKEN.into()),
            public_writes_per_minute,
        },
        redis,
    };
    let all = AllInOne::build(&config, &platform).await.expect("the platform builds");
    let (http_port, grpc_port) = (all.http_port(), all.grpc_port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(all.run(shutdown.clone()));
    TestPlatform { platform, http_port, grpc_port, shutdown, task, _databases: databases }
}

impl TestPlatform {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `/readyz`: the HTTP status and the report.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        get_json(&self.url("/readyz")).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("platform task").expect("platform stops cleanly");
        let jetstream = async_nats::jetstream::new(self.platform.nats.clone());
        kit::testing::remove_streams(&jetstream, self.platform.namespace.as_str()).await;
    }
}

/// GET a JSON document: the HTTP status and the body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// Whether `/readyz` reports the check `name` as ok.
pub fn check_ok(report: &serde_json::Value, name: &str) -> bool {
    report["checks"][name]["ok"].as_bool().unwrap_or(false)
}
