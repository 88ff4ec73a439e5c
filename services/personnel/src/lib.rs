//! The personnel service: in-service staff, retirees before and after 2014-10-01, import jobs and declared roster
//! snapshots, in its own database.
//!
//! This first version serves the readiness probe (`GetStatus`) over NATS RPC and gRPC; the journeys add people,
//! checks, imports and roster snapshots.

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::names::Service;
use proto::personnel::personnel_server::{Personnel, PersonnelServer};
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/personnel");

/// The name, database and ports used unless configured otherwise (section `personnel`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Personnel, database: "pension_personnel", grpc_port: 50062, admin_port: 8093 };

/// The service, bound and ready to run.
pub type App = ServiceApp<PersonnelServer<PersonnelApi>>;

/// Connects, migrates and binds the service. `serve_admin` is false when the process serves the admin endpoints
/// itself (`pension all`).
pub async fn build(config: &ServiceConfig, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let runtime = Runtime::start(&DEFAULTS, &config.database, &MIGRATOR, platform).await?;
    let api = PersonnelApi { runtime: runtime.clone() };
    ServiceApp::bind(runtime, PersonnelServer::new(api), (config, &DEFAULTS), platform, serve_admin).await
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: ServiceConfig = process.settings.section("personnel")?;
    let platform = Platform::connect(&process, "personnel").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}

/// The gRPC face of the service: parses requests, calls the domain, maps errors.
#[derive(Debug, Clone)]
pub struct PersonnelApi {
    runtime: Runtime,
}

#[tonic::async_trait]
impl Personnel for PersonnelApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }
}
