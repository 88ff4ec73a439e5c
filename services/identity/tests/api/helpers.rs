//! Starting identity for a test, and the sample registry the tests share.

use std::time::Duration;

use kit::admin::Readiness;
use kit::rpc::NatsChannel;
use kit::service::{Platform, ServiceConfig};
use kit::shutdown::CancellationToken;
use kit::testing::{TestDatabase, isolated_nats};
use proto::common::Caller;
use proto::identity::identity_client::IdentityClient;
use proto::identity::{ImportFileRequest, ImportReport};
use proto::names::Service;
use sqlx::PgPool;

pub struct TestIdentity {
    pub client: IdentityClient<NatsChannel>,
    pub pool: PgPool,
    pub platform: Platform,
    /// The development CA's files (ca.crt, ca.key, …), made for this test.
    pub ca: identity::ca::DevelopmentCaFiles,
    shutdown: CancellationToken,
    _database: TestDatabase,
    _ca_dir: tempfile::TempDir,
}

impl Drop for TestIdentity {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_identity() -> TestIdentity {
    let database = TestDatabase::create().await;
    let platform = Platform::connect_with(&isolated_nats(), "identity-test", Readiness::default()).await.expect("nats");
    platform.wait_connected(Duration::from_secs(10)).await.expect("nats connected");
    kit::testing::sweep_stale_test_streams(&async_nats::jetstream::new(platform.nats.clone())).await;
    let ca_dir = tempfile::tempdir().expect("temporary directory");
    let ca = identity::ca::init_development(ca_dir.path(), &["localhost".to_owned()]).expect("a development CA");
    let config = identity::Config {
        service: ServiceConfig {
            database: database.config(),
            grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
            admin_addr: None,
        },
        id_number_key: None,
        ca: identity::ca::CaConfig {
            certificate_file: Some(ca.certificate.clone()),
            key_file: Some(ca.key.clone()),
            ..identity::ca::CaConfig::default()
        },
        ..identity::Config::default()
    };
    let app = identity::build(&config, &platform, false).await.expect("identity builds");
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));
    let pool = kit::db::connect(&database.config(), "unused").await.expect("pool");
    // The RPC subscription is live once the server has processed it; a status call proves it.
    let client = IdentityClient::new(platform.channel(Service::Identity));
    kit::testing::eventually(Duration::from_secs(10), "identity answers", || {
        let mut client = client.clone();
        async move { client.get_status(proto::common::GetStatusRequest {}).await.is_ok() }
    })
    .await;
    TestIdentity { client, pool, platform, ca, shutdown, _database: database, _ca_dir: ca_dir }
}

pub fn admin() -> Option<Caller> {
    Some(Caller { actor: "admin".into(), role: "province_admin".into(), ..Caller::default() })
}

pub const AGENCIES_CSV: &str = "经办机构编码,经办机构名称,所属行政区划\n\
230500,双鸭山市社会保险事业中心,230500\n\
230502,尖山区社会保险事业中心,230502\n";

/// Three good units of 双鸭山市 (valid credit codes) in a CSV with its columns in an unusual order plus an extra one.
pub const REGISTRY_CSV: &str = "所属经办机构,单位名称,机构编码,统一社会信用代码,单位类型,所属行政区划,备注,行政编制数\n\
230500,双鸭山市财政局,230500001,11230500MB0000001P,机关,230500,,35\n\
双鸭山市社会保险事业中心,双鸭山市教育局,230500002,11230500MB0000002T,机关,230500,,40\n\
230502,尖山区第一中学,230502003,12230502MB0000003P,公益一类事业单位,230502,,\n";

pub async fn load_sample_registry(identity: &TestIdentity) -> ImportReport {
    let mut client = identity.client.clone();
    let agencies = client
        .import_agencies(ImportFileRequest { caller: admin(), file: AGENCIES_CSV.as_bytes().to_vec() })
        .await
        .expect("agencies load")
        .into_inner();
    assert_eq!(agencies.loaded, 2, "{agencies:?}");
    client
        .import_registry(ImportFileRequest { caller: admin(), file: REGISTRY_CSV.as_bytes().to_vec() })
        .await
        .expect("registry loads")
        .into_inner()
}

pub fn caller(role: &str) -> Option<Caller> {
    Some(Caller { actor: format!("test-{role}"), role: role.into(), ..Caller::default() })
}

/// The subjects of the events identity wrote to its outbox, oldest first.
pub async fn outbox_subjects(identity: &TestIdentity) -> Vec<String> {
    sqlx::query_scalar("select subject from kit_outbox order by id").fetch_all(&identity.pool).await.expect("outbox")
}
