//! The printing service: the registration forms of each declaration rendered as PDF from the declared snapshots
//! (never the live roster), stored sealed with their SHA-256 in its own database, read back by who may see them,
//! and verified against what was declared.
//!
//! Modules in reading order: this file (configuration, start-up, the gRPC face), `render` (the forms as PDF with
//! typst, a pure function of the snapshots), `documents` (rendering on units' declared event, storage, reading,
//! verification).

pub mod documents;
pub mod render;

use std::path::PathBuf;
use std::sync::Arc;

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::printing::printing_server::{Printing, PrintingServer};
use proto::printing::{
    DocumentChunk, ListDocumentsReply, ListDocumentsRequest, ReadDocumentRequest, Verification, VerifyDocumentRequest,
};
use proto::units::units_client::UnitsClient;
use serde::Deserialize;
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/printing");

/// The name, database and ports used unless configured otherwise (section `printing`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Printing, database: "pension_printing", grpc_port: 50063, admin_port: 8094 };

/// The `printing` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub service: ServiceConfig,
    /// The keys of the stored documents at rest (`data_key`, `data_key_version`, `retired_data_keys`).
    #[serde(flatten)]
    pub sealing: kit::sealing::SealingConfig,
    /// Where the CJK font files are (Debian's fonts-noto-cjk by default).
    pub font_dir: PathBuf,
    /// The font files to load from `font_dir`: a regular and a bold face.
    pub font_files: Vec<String>,
    /// The font family the forms are set in.
    pub font_family: String,
    /// The public verification page the QR codes point to; the declaration id and digest are appended.
    pub verify_url: String,
    /// Crash points, armed by tests only; configuration cannot reach them.
    #[serde(skip)]
    pub faults: kit::faults::Faults,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceConfig::default(),
            sealing: kit::sealing::SealingConfig::default(),
            font_dir: PathBuf::from("/usr/share/fonts/opentype/noto"),
            font_files: vec!["NotoSansCJK-Regular.ttc".into(), "NotoSansCJK-Bold.ttc".into()],
            font_family: "Noto Sans CJK SC".into(),
            verify_url: "http://127.0.0.1:8080/verify".into(),
            faults: kit::faults::Faults::default(),
        }
    }
}

/// The service, bound and ready to run.
pub type App = ServiceApp<PrintingServer<PrintingApi>>;

/// Connects, migrates and binds the service, with its consumer of units' declaration events. `serve_admin` is
/// false when the process serves the admin endpoints itself (`pension all`).
pub async fn build(config: &Config, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let renderer = render::Renderer::new(&config.font_dir, &config.font_files, &config.font_family)?;
    let runtime = Runtime::start(&DEFAULTS, &config.service.database, &MIGRATOR, platform).await?;
    let sealer = kit::sealing::Sealer::from_config(&config.sealing, "printing")?;
    let documents = documents::Documents {
        pool: runtime.pool.clone(),
        sealer,
        renderer: Arc::new(renderer),
        units: UnitsClient::new(platform.channel(Service::Units)),
        personnel: PersonnelClient::new(platform.channel(Service::Personnel)),
        verify_url: config.verify_url.clone(),
        faults: config.faults.clone(),
    };
    let api = PrintingApi { runtime: runtime.clone(), documents: documents.clone() };
    let consumer = documents::declaration_consumer(&platform.namespace);
    let (pool, jetstream) = (runtime.pool.clone(), runtime.jetstream.clone());
    let app = ServiceApp::bind(runtime, PrintingServer::new(api), (&config.service, &DEFAULTS), platform, serve_admin)
        .await?;
    Ok(app
        .with_background(move |shutdown| kit::consumer::run(pool, jetstream, consumer, Arc::new(documents), shutdown)))
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: Config = process.settings.section("printing")?;
    let platform = Platform::connect(&process, "printing").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}

/// The gRPC face of the service: parses requests, calls the domain, maps errors.
#[derive(Debug, Clone)]
pub struct PrintingApi {
    runtime: Runtime,
    documents: documents::Documents,
}

#[tonic::async_trait]
impl Printing for PrintingApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }

    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.documents.list(&caller, &request.declaration_id).await.map(Response::new)
    }

    async fn read_document(&self, request: Request<ReadDocumentRequest>) -> Result<Response<DocumentChunk>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.documents.read(&caller, &request.document_id, request.offset).await.map(Response::new)
    }

    async fn rotate_data_key(
        &self,
        request: Request<proto::common::RotateDataKeyRequest>,
    ) -> Result<Response<proto::common::RotateDataKeyReply>, Status> {
        let documents = &self.documents;
        kit::sealing::rotate_for(
            &documents.pool,
            &documents.sealer,
            &[documents::DOCUMENTS_SEALED],
            request.into_inner(),
        )
        .await
        .map(Response::new)
    }

    async fn verify_document(&self, request: Request<VerifyDocumentRequest>) -> Result<Response<Verification>, Status> {
        let request = request.into_inner();
        self.documents.verify(&request.declaration_id, &request.digest).await.map(Response::new)
    }
}
