//! The identity service: identity and CA verification. It owns the establishment registry (编制通), the handling
//! agencies (经办机构), key applications (密钥申请), and — with the CA — certificates, accounts and API clients, in its
//! own database.
//!
//! Modules in reading order: `api` (the gRPC face), `registry` (loading the registry, 校验), `keys` (applications),
//! `api_clients` (other agencies' systems: scopes, certificates, authentication on the agency port),
//! `ca` (the CA's
//! signing and certificate checks), `certificates` (制作, renewal, revocation, CRL, staff accounts), `accounts` (login,
//! activation of legacy keys), `secrets` (password hashing, HMACs).

mod accounts;
mod api;
pub mod api_clients;
pub mod ca;
mod certificates;
mod keys;
mod registry;
mod secrets;

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::identity::identity_server::IdentityServer;
use proto::names::Service;
use secrecy::SecretString;
use serde::Deserialize;
use sqlx::migrate::Migrator;

pub use api::IdentityApi;

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/identity");

/// The name, database and ports used unless configured otherwise (section `identity`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Identity, database: "pension_identity", grpc_port: 50060, admin_port: 8091 };

/// The key of the ID-number HMAC used when none is configured. Fine for development and tests; production sets
/// `identity.id_number_key` (a Kubernetes secret), or every blind index would be computable by anyone.
const DEVELOPMENT_ID_NUMBER_KEY: &str = "development-only-id-number-key";

/// The `identity` section: the common service settings plus identity's own secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub service: ServiceConfig,
    /// The HMAC key of applicants' ID numbers (and of activation tickets).
    pub id_number_key: Option<SecretString>,
    /// The provincial CA's certificate and key.
    pub ca: ca::CaConfig,
    /// The agency CAs whose certificates API clients may present.
    pub api_clients: api_clients::ApiClientsConfig,
}

/// The service, bound and ready to run.
pub type App = ServiceApp<IdentityServer<IdentityApi>>;

/// Connects, migrates and binds the service. `serve_admin` is false when the process serves the admin endpoints
/// itself (`pension all`).
pub async fn build(config: &Config, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let runtime = Runtime::start(&DEFAULTS, &config.service.database, &MIGRATOR, platform).await?;
    let id_number_key = config.id_number_key.clone().unwrap_or_else(|| {
        tracing::warn!("identity.id_number_key is not set: using the development key (never do this in production)");
        SecretString::from(DEVELOPMENT_ID_NUMBER_KEY)
    });
    let ca = ca::CertificateAuthority::load(&config.ca)?;
    if ca.is_none() {
        tracing::warn!("identity.ca is not configured: logins are verified, but no certificate can be made");
    }
    let agency_roots = api_clients::load_agency_roots(&config.api_clients)?;
    let api = IdentityApi::new(runtime.clone(), platform.namespace.clone(), id_number_key, ca, agency_roots);
    ServiceApp::bind(runtime, IdentityServer::new(api), (&config.service, &DEFAULTS), platform, serve_admin).await
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: Config = process.settings.section("identity")?;
    let platform = Platform::connect(&process, "identity").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}
