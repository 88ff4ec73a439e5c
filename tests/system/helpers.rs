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

/// Installs ring as the process's TLS crypto provider, which reqwest's clients use (the platform uses ring too).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The platform running inside the test process.
pub struct TestPlatform {
    pub platform: Platform,
    pub http_port: u16,
    pub grpc_port: u16,
    pub https_port: u16,
    /// The agencies' gRPC port (mutual TLS).
    pub agency_port: u16,
    /// The development CA made for this platform (ca.crt, ca.key, the gateway's server.crt).
    pub ca: identity::ca::DevelopmentCaFiles,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The services' databases: identity, units, personnel, printing, then the population registry's.
    pub databases: Vec<TestDatabase>,
    _ca_dir: tempfile::TempDir,
}

/// Builds every service and the gateway on port 0, each service with a database of its own on the server of
/// `database_admin_url`, in the NATS namespace and Redis prefix of `nats` and `redis`.
pub async fn spawn_platform(database_admin_url: &str, nats: NatsConfig, redis: RedisConfig) -> TestPlatform {
    spawn_platform_with(database_admin_url, nats, redis, |_| {}).await
}

/// The platform in a NATS namespace and Redis prefix of its own, on the shared servers, with the gateway's
/// configuration adjusted by `tune`.
pub async fn spawn_isolated_with(tune: impl FnOnce(&mut gateway::Config)) -> TestPlatform {
    spawn_isolated_tuned(tune, |_| {}).await
}

/// As [`spawn_isolated_with`], with identity's configuration adjusted too (agency CAs, say).
pub async fn spawn_isolated_tuned(
    tune: impl FnOnce(&mut gateway::Config),
    tune_identity: impl FnOnce(&mut identity::Config),
) -> TestPlatform {
    let nats = kit::testing::isolated_nats();
    let redis = RedisConfig {
        url: secrecy::SecretString::from(kit::testing::shared_redis_url()),
        key_prefix: format!("{}:", nats.namespace),
        ..RedisConfig::default()
    };
    spawn_platform_tuned(&kit::testing::shared_database_url(), nats, redis, tune, tune_identity).await
}

/// As [`spawn_platform`], with the gateway's configuration adjusted by `tune` (lockout times, refresh, mode).
pub async fn spawn_platform_with(
    database_admin_url: &str,
    nats: NatsConfig,
    redis: RedisConfig,
    tune: impl FnOnce(&mut gateway::Config),
) -> TestPlatform {
    spawn_platform_tuned(database_admin_url, nats, redis, tune, |_| {}).await
}

/// As [`spawn_platform_with`], with identity's configuration adjusted by `tune_identity`.
pub async fn spawn_platform_tuned(
    database_admin_url: &str,
    nats: NatsConfig,
    redis: RedisConfig,
    tune: impl FnOnce(&mut gateway::Config),
    tune_identity: impl FnOnce(&mut identity::Config),
) -> TestPlatform {
    install_crypto_provider();
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
    // The development population registry, on a port and database of this platform's own.
    let population_port = kit::testing::free_port();
    let population_database = TestDatabase::create_on(database_admin_url).await;
    let population = personnel::population::DevelopmentConfig {
        enabled: true,
        addr: SocketAddr::from(([127, 0, 0, 1], population_port)),
        file: Some(std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/population.csv"))),
        database: population_database.config(),
    };
    let ca_dir = tempfile::tempdir().expect("temporary directory");
    let ca = identity::ca::init_development(ca_dir.path(), &["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("a development CA");
    let mut gateway = gateway::Config {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        https_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        agency_grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: Some(ADMIN_TOKEN.into()),
        tls_certificate_file: Some(ca.server_certificate.clone()),
        tls_key_file: Some(ca.server_key.clone()),
        trust_refresh: Duration::from_secs(1),
        ..gateway::Config::default()
    };
    tune(&mut gateway);
    let mut identity = identity::Config {
        service: service_config().await,
        ca: identity::ca::CaConfig {
            certificate_file: Some(ca.certificate.clone()),
            key_file: Some(ca.key.clone()),
            ..identity::ca::CaConfig::default()
        },
        ..identity::Config::default()
    };
    tune_identity(&mut identity);
    let config = AllInOneConfig {
        identity,
        units: units::Config { service: service_config().await, ..units::Config::default() },
        personnel: personnel::Config {
            service: service_config().await,
            population_registry_url: format!("http://127.0.0.1:{population_port}"),
            ..personnel::Config::default()
        },
        printing: printing::Config { service: service_config().await, ..printing::Config::default() },
        gateway,
        redis,
        population,
    };
    databases.push(population_database);
    let all = AllInOne::build(&config, &platform).await.expect("the platform builds");
    let (http_port, grpc_port, https_port) = (all.http_port(), all.grpc_port(), all.https_port());
    let agency_port = all.agency_port().expect("the agency port is open");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(all.run(shutdown.clone()));
    TestPlatform {
        platform,
        http_port,
        grpc_port,
        https_port,
        agency_port,
        ca,
        shutdown,
        task,
        databases,
        _ca_dir: ca_dir,
    }
}

impl TestPlatform {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// An address on the logged-in port.
    pub fn secure_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    pub fn identity(&self) -> proto::identity::identity_client::IdentityClient<kit::rpc::NatsChannel> {
        proto::identity::identity_client::IdentityClient::new(self.platform.channel(proto::names::Service::Identity))
    }

    /// Loads the demo agencies and registry, as `make run` does.
    pub async fn load_demo_registry(&self) {
        use proto::identity::ImportFileRequest;
        let caller = || {
            Some(proto::common::Caller { actor: "test".into(), role: "province_admin".into(), ..Default::default() })
        };
        let root = env!("CARGO_MANIFEST_DIR");
        let mut identity = self.identity();
        kit::testing::eventually(Duration::from_secs(30), "identity answers", || {
            let mut identity = identity.clone();
            async move { identity.get_status(proto::common::GetStatusRequest {}).await.is_ok() }
        })
        .await;
        for (file, agencies) in [("demo/agencies.csv", true), ("demo/registry.csv", false)] {
            let file = std::fs::read(format!("{root}/{file}")).expect("demo file");
            let request = ImportFileRequest { caller: caller(), file };
            let report = if agencies {
                identity.import_agencies(request).await
            } else {
                identity.import_registry(request).await
            }
            .expect("the demo data loads")
            .into_inner();
            assert!(report.errors.is_empty(), "{report:?}");
        }
    }

    /// A unit (双鸭山市财政局) whose key the CA made as a software key: its username, password and certificate.
    pub async fn unit_with_key(&self) -> Credentials {
        self.unit_with_key_named("双鸭山市财政局").await
    }

    /// A unit of the demo registry (of type 机关) whose key the CA made as a software key.
    pub async fn unit_with_key_named(&self, unit_name: &str) -> Credentials {
        use proto::identity::{ApplyForKeyRequest, IssueCertificateRequest};
        let mut identity = self.identity();
        let application = identity
            .apply_for_key(ApplyForKeyRequest {
                category: "机关事业养老保险密钥注册".into(),
                unit_type: "机关".into(),
                unit_name: unit_name.into(),
                applicant_name: "张伟".into(),
                applicant_id_number: "230502198001011238".into(),
                phone: "13804691234".into(),
                password: UNIT_PASSWORD.into(),
                ..Default::default()
            })
            .await
            .expect("applied")
            .into_inner();
        let issued = identity
            .issue_certificate(IssueCertificateRequest {
                caller: system(),
                application_id: application.application_id,
                csr_pem: String::new(),
            })
            .await
            .expect("made")
            .into_inner();
        Credentials::from_issued(application.username, UNIT_PASSWORD, issued)
    }

    /// A staff account with its certificate.
    pub async fn staff(&self, role: &str, username: &str, agency_code: &str) -> Credentials {
        let created = self
            .identity()
            .create_account(proto::identity::CreateAccountRequest {
                caller: system(),
                username: username.into(),
                display_name: format!("测试{username}"),
                role: role.into(),
                agency_code: agency_code.into(),
                password: STAFF_PASSWORD.into(),
            })
            .await
            .expect("created")
            .into_inner();
        Credentials::from_issued(username.into(), STAFF_PASSWORD, created.certificate.expect("certificate"))
    }

    /// A client of the logged-in port trusting the platform's CA, presenting `credentials`' certificate if given.
    /// Redirects are not followed, so tests see them.
    pub fn https_client(&self, credentials: Option<&Credentials>) -> reqwest::Client {
        use rustls_pki_types::pem::PemObject as _;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls_pki_types::CertificateDer::from_pem_file(&self.ca.certificate).expect("ca");
        roots.add(ca).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match credentials {
            Some(credentials) => builder
                .with_client_auth_cert(
                    vec![rustls_pki_types::CertificateDer::from(credentials.certificate_der.clone())],
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes()).expect("key"),
                )
                .expect("client auth"),
            None => builder.with_no_client_auth(),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client")
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
    install_crypto_provider();
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

pub const UNIT_PASSWORD: &str = "Unit2026pass";
pub const STAFF_PASSWORD: &str = "Staff2026pass";

fn system() -> Option<proto::common::Caller> {
    Some(proto::common::Caller { actor: "test".into(), role: "system".into(), ..Default::default() })
}

/// An account's login: username, password, and its certificate and key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub serial: String,
    pub certificate_pem: String,
    pub certificate_der: Vec<u8>,
    pub key_pem: String,
}

impl Credentials {
    pub fn from_issued(username: String, password: &str, issued: proto::identity::IssuedCertificate) -> Self {
        use rustls_pki_types::pem::PemObject as _;
        let certificate = issued.certificate.expect("certificate");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(certificate.certificate_pem.as_bytes())
            .expect("pem")
            .to_vec();
        Self {
            username,
            password: password.into(),
            serial: certificate.serial,
            certificate_pem: certificate.certificate_pem,
            certificate_der: der,
            key_pem: issued.private_key_pem,
        }
    }
}
