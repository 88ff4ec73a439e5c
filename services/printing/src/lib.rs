//! The printing service: the registration forms rendered as PDF from declared snapshots, stored with their SHA-256,
//! in its own database.
//!
//! This first version serves the readiness probe (`GetStatus`) over NATS RPC and gRPC; the journeys add rendering,
//! storage and verification.

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::names::Service;
use proto::printing::printing_server::{Printing, PrintingServer};
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/printing");

/// The name, database and ports used unless configured otherwise (section `printing`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Printing, database: "pension_printing", grpc_port: 50063, admin_port: 8094 };

/// The service, bound and ready to run.
pub type App = ServiceApp<PrintingServer<PrintingApi>>;

/// Connects, migrates and binds the service. `serve_admin` is false when the process serves the admin endpoints
/// itself (`pension all`).
pub async fn build(config: &ServiceConfig, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let runtime = Runtime::start(&DEFAULTS, &config.database, &MIGRATOR, platform).await?;
    let api = PrintingApi { runtime: runtime.clone() };
    ServiceApp::bind(runtime, PrintingServer::new(api), (config, &DEFAULTS), platform, serve_admin).await
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: ServiceConfig = process.settings.section("printing")?;
    let platform = Platform::connect(&process, "printing").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}

/// The gRPC face of the service: parses requests, calls the domain, maps errors.
#[derive(Debug, Clone)]
pub struct PrintingApi {
    runtime: Runtime,
}

#[tonic::async_trait]
impl Printing for PrintingApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }
}
