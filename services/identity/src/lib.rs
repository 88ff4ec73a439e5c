//! The identity service: identity and CA verification. It owns the establishment registry (编制通), key
//! applications, certificates and their revocations, accounts and API clients, in its own database.
//!
//! This first version serves the readiness probe (`GetStatus`) over NATS RPC and gRPC; the journeys add the
//! registry, key applications, the CA and login.

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::identity::identity_server::{Identity, IdentityServer};
use proto::names::Service;
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/identity");

/// The name, database and ports used unless configured otherwise (section `identity`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Identity, database: "pension_identity", grpc_port: 50060, admin_port: 8091 };

/// The service, bound and ready to run.
pub type App = ServiceApp<IdentityServer<IdentityApi>>;

/// Connects, migrates and binds the service. `serve_admin` is false when the process serves the admin endpoints
/// itself (`pension all`).
pub async fn build(config: &ServiceConfig, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let runtime = Runtime::start(&DEFAULTS, &config.database, &MIGRATOR, platform).await?;
    let api = IdentityApi { runtime: runtime.clone() };
    ServiceApp::bind(runtime, IdentityServer::new(api), (config, &DEFAULTS), platform, serve_admin).await
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: ServiceConfig = process.settings.section("identity")?;
    let platform = Platform::connect(&process, "identity").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}

/// The gRPC face of the service: parses requests, calls the domain, maps errors.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    runtime: Runtime,
}

#[tonic::async_trait]
impl Identity for IdentityApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }
}
