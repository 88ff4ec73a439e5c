//! Starting units for a test, with units of its own in the database.

use std::time::Duration;

use kit::admin::Readiness;
use kit::rpc::NatsChannel;
use kit::service::{Platform, ServiceConfig};
use kit::shutdown::CancellationToken;
use kit::testing::{TestDatabase, isolated_nats};
use proto::common::Caller;
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::units::units_client::UnitsClient;
use sqlx::PgPool;

pub struct TestUnits {
    pub client: UnitsClient<NatsChannel>,
    pub pool: PgPool,
    pub platform: Platform,
    pub config: units::Config,
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
    spawn_units_with(|_| {}).await
}

/// Units with changed settings.
pub async fn spawn_units_with(change: impl FnOnce(&mut units::Config)) -> TestUnits {
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
    let mut config = config;
    change(&mut config);
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

/// Personnel beside a units service, on the same namespace and a database of its own, with no population registry
/// (every check only warns that it could not ask).
pub struct TestPersonnel {
    pub client: PersonnelClient<NatsChannel>,
    pub pool: PgPool,
    pub config: personnel::Config,
    platform: Platform,
    instance: CancellationToken,
    _database: TestDatabase,
}

impl Drop for TestPersonnel {
    fn drop(&mut self) {
        self.instance.cancel();
    }
}

impl TestPersonnel {
    pub async fn start(units: &TestUnits) -> Self {
        let database = TestDatabase::create().await;
        let config = personnel::Config {
            service: ServiceConfig {
                database: database.config(),
                grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
                admin_addr: None,
            },
            population_registry_url: String::new(),
            ..personnel::Config::default()
        };
        let instance = CancellationToken::new();
        let app = personnel::build(&config, &units.platform, false).await.expect("personnel builds");
        tokio::spawn(app.run(instance.clone()));
        let pool = kit::db::connect(&database.config(), "unused").await.expect("pool");
        let client = PersonnelClient::new(units.platform.channel(Service::Personnel));
        let personnel =
            TestPersonnel { client, pool, config, platform: units.platform.clone(), instance, _database: database };
        personnel.wait_until_answering().await;
        personnel
    }

    async fn wait_until_answering(&self) {
        kit::testing::eventually(Duration::from_secs(10), "personnel answers", || {
            let mut client = self.client.clone();
            async move { client.get_status(proto::common::GetStatusRequest {}).await.is_ok() }
        })
        .await;
    }

    /// Kills the instance: nothing answers on its subjects until [`TestPersonnel::resume`].
    pub async fn stop(&mut self) {
        self.instance.cancel();
        kit::testing::eventually(Duration::from_secs(10), "personnel stopped", || {
            let mut client = self.client.clone();
            async move { client.get_status(proto::common::GetStatusRequest {}).await.is_err() }
        })
        .await;
    }

    /// Starts a new instance on the same database, as a restart after a crash.
    pub async fn resume(&mut self) {
        self.instance.cancel();
        self.instance = CancellationToken::new();
        let app = personnel::build(&self.config, &self.platform, false).await.expect("personnel builds again");
        tokio::spawn(app.run(self.instance.clone()));
        self.wait_until_answering().await;
    }
}
