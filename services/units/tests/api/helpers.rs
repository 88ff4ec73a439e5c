//! Starting units for a test, with units of its own in the database.

use std::time::Duration;

use kit::admin::Readiness;
use kit::rpc::NatsChannel;
use kit::service::{Platform, ServiceConfig};
use kit::shutdown::CancellationToken;
use kit::testing::{TestDatabase, isolated_nats};
use proto::common::Caller;
use proto::names::Service;
use proto::units::units_client::UnitsClient;
use sqlx::PgPool;

pub struct TestUnits {
    pub client: UnitsClient<NatsChannel>,
    pub pool: PgPool,
    platform: Platform,
    config: units::Config,
    shutdown: CancellationToken,
    _database: TestDatabase,
}

impl Drop for TestUnits {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn wait_until_answering(client: &UnitsClient<NatsChannel>) {
    kit::testing::eventually(Duration::from_secs(10), "units answers", || {
        let mut client = client.clone();
        async move { client.get_status(proto::common::GetStatusRequest {}).await.is_ok() }
    })
    .await;
}

pub async fn spawn_units() -> TestUnits {
    let shutdown = CancellationToken::new();
    let database = TestDatabase::create().await;
    let platform = Platform::connect_with(&isolated_nats(), "units-test", Readiness::default()).await.expect("nats");
    platform.wait_connected(Duration::from_secs(10)).await.expect("nats connected");
    kit::testing::sweep_stale_test_streams(&async_nats::jetstream::new(platform.nats.clone())).await;
    let config = units::Config {
        service: ServiceConfig {
            database: database.config(),
            grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
            admin_addr: None,
        },
        ..units::Config::default()
    };
    let app = units::build(&config, &platform, false).await.expect("units builds");
    tokio::spawn(app.run(shutdown.clone()));
    let pool = kit::db::connect(&database.config(), "unused").await.expect("pool");
    let client = UnitsClient::new(platform.channel(Service::Units));
    wait_until_answering(&client).await;
    TestUnits { client, pool, platform, config, shutdown, _database: database }
}

impl TestUnits {
    /// Stops the service and starts it again with changed settings on the same database.
    pub async fn restart_with(&mut self, change: impl FnOnce(&mut units::Config)) {
        change(&mut self.config);
        self.shutdown.cancel();
        self.shutdown = CancellationToken::new();
        let app = units::build(&self.config, &self.platform, false).await.expect("units builds again");
        tokio::spawn(app.run(self.shutdown.clone()));
        wait_until_answering(&self.client).await;
    }

    /// A unit's draft record, as the first login of its operator leaves it.
    pub async fn draft(&self, institution_code: &str, agency_code: &str) {
        sqlx::query(
            "insert into units (institution_code, unit_name, credit_code, unit_type, region_code, agency_code, \
             created_by_event, unit_type_code) values ($1, $2, '11230500MB0000010M', '机关', '230500', $3, 'test', '10')",
        )
        .bind(institution_code)
        .bind(format!("测试单位{institution_code}"))
        .bind(agency_code)
        .execute(&self.pool)
        .await
        .expect("draft record");
    }
}

/// The operator of unit `institution_code`.
pub fn operator(institution_code: &str) -> Option<Caller> {
    Some(Caller {
        actor: format!("{institution_code}-01"),
        role: "unit_operator".into(),
        institution_code: institution_code.into(),
        certificate_serial: "0A1B2C".into(),
        ..Caller::default()
    })
}

pub fn staff(role: &str, agency_code: &str) -> Option<Caller> {
    Some(Caller {
        actor: format!("test.{role}"),
        role: role.into(),
        agency_code: agency_code.into(),
        ..Caller::default()
    })
}
