//! Starting the whole platform in-process for a test, isolated from every other test.

use std::net::SocketAddr;
use std::time::Duration;

use kit::admin::Readiness;
use kit::nats::NatsConfig;
use kit::redis::{Redis, RedisConfig};
use kit::service::{Platform, ServiceConfig};
use kit::testing::TestDatabase;
use tokio_util::sync::CancellationToken;

/// The platform running inside the test process.
pub struct TestPlatform {
    pub http_port: u16,
    pub grpc_port: u16,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _databases: Vec<TestDatabase>,
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Builds every service and the gateway on port 0, each service with a database of its own on the server of
/// `database_admin_url`, in the NATS namespace and Redis prefix of `nats` and `redis`.
pub async fn spawn_platform(database_admin_url: &str, nats: NatsConfig, redis: RedisConfig) -> TestPlatform {
    let platform = Platform::connect_with(&nats, "system-test", Readiness::default()).await.expect("nats");
    let mut databases = Vec::new();
    let service_config = || async {
        let database = TestDatabase::create_on(database_admin_url).await;
        let config =
            ServiceConfig { database: database.config(), grpc_addr: Some(loopback_any_port()), admin_addr: None };
        (database, config)
    };
    let (database, config) = service_config().await;
    let identity = identity::build(&config, &platform, false).await.expect("identity");
    databases.push(database);
    let (database, config) = service_config().await;
    let units = units::build(&config, &platform, false).await.expect("units");
    databases.push(database);
    let (database, config) = service_config().await;
    let personnel = personnel::build(&config, &platform, false).await.expect("personnel");
    databases.push(database);
    let (database, config) = service_config().await;
    let printing = printing::build(&config, &platform, false).await.expect("printing");
    databases.push(database);
    let gateway_config = gateway::Config { http_addr: loopback_any_port(), grpc_addr: loopback_any_port() };
    let gateway = gateway::build(&gateway_config, &platform, Redis::connect(&redis).expect("redis config"))
        .await
        .expect("gateway");
    let (http_port, grpc_port) = (gateway.http_port(), gateway.grpc_port());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let (a, b, c, d, e) = tokio::join!(
            identity.run(token.clone()),
            units.run(token.clone()),
            personnel.run(token.clone()),
            printing.run(token.clone()),
            gateway.run(token.clone()),
        );
        a.and(b).and(c).and(d).and(e)
    });
    TestPlatform { http_port, grpc_port, shutdown, task, _databases: databases }
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
