//! The units service: insured units (参保单位), their declarations (申报) with their history, and the agencies'
//! review decisions, in its own database.
//!
//! Modules in reading order: this file (the gRPC face and start-up), `records` (the unit record and who may see
//! it), `declarations` (declaring, withdrawing and the review, with the saga's reconciler), `events` (the consumer
//! that creates a unit's draft record on its operator's first login), `progress` (the enrollment dashboards'
//! projection of identity's, this service's and personnel's events, and its figures).

pub mod declarations;
mod directory;
mod events;
pub mod progress;
mod records;

use std::sync::Arc;

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::units::units_server::{Units, UnitsServer};
use proto::units::{
    Declaration, DeclareRequest, GetDeclarationRequest, ListReviewQueueReply, ListReviewQueueRequest,
    RejectDeclarationRequest, ReviewRequest, WithdrawDeclarationRequest,
};
use proto::units::{
    GetUnitRecordRequest, ListUnitCodesReply, ListUnitCodesRequest, UnitCode, UnitCodeList, UnitRecord,
    UpdateUnitRecordReply, UpdateUnitRecordRequest,
};
use serde::Deserialize;
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/units");

/// The name, database and ports used unless configured otherwise (section `units`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Units, database: "pension_units", grpc_port: 50061, admin_port: 8092 };

/// The `units` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub service: ServiceConfig,
    /// The keys of the legal representative's ID number at rest (`data_key`, `data_key_version`,
    /// `retired_data_keys`, `index_key`).
    #[serde(flatten)]
    pub sealing: kit::sealing::SealingConfig,
    /// The declaration saga's reconciler and its patience with personnel.
    pub declarations: declarations::SagaConfig,
    /// Crash points, armed by tests only; configuration cannot reach them.
    #[serde(skip)]
    pub faults: kit::faults::Faults,
}

/// The service, bound and ready to run.
pub type App = ServiceApp<UnitsServer<UnitsApi>>;

/// Connects, migrates and binds the service, with its consumer of identity's events. `serve_admin` is false when
/// the process serves the admin endpoints itself (`pension all`).
pub async fn build(config: &Config, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let runtime = Runtime::start(&DEFAULTS, &config.service.database, &MIGRATOR, platform).await?;
    let sealer = kit::sealing::Sealer::from_config(&config.sealing, "units")?;
    let codes = records::UnitCodes::load(&runtime.pool).await?;
    let sealed = records::seal_clear_accounts(&runtime.pool, &sealer).await?;
    if sealed > 0 {
        tracing::info!(sealed, "bank accounts stored in clear by an earlier version are sealed now");
    }
    let declarations = declarations::Declarations {
        runtime: runtime.clone(),
        sealer: sealer.clone(),
        namespace: platform.namespace.clone(),
        personnel: PersonnelClient::new(platform.channel(Service::Personnel)),
        saga: config.declarations.clone(),
        faults: config.faults.clone(),
    };
    let api = UnitsApi { runtime: runtime.clone(), codes: Arc::new(codes), sealer, declarations: declarations.clone() };
    let consumer = events::first_login_consumer(&platform.namespace);
    let (pool, jetstream) = (runtime.pool.clone(), runtime.jetstream.clone());
    let mut app =
        ServiceApp::bind(runtime, UnitsServer::new(api), (&config.service, &DEFAULTS), platform, serve_admin).await?;
    let every = config.declarations.settle_every;
    let progress = Arc::new(progress::Progress::new(&platform.namespace));
    for source in progress::SOURCES {
        let (pool, jetstream, progress) = (pool.clone(), jetstream.clone(), progress.clone());
        let spec = progress::consumer(&platform.namespace, source);
        app = app.with_background(move |shutdown| kit::consumer::run(pool, jetstream, spec, progress, shutdown));
    }
    Ok(app
        .with_background(move |shutdown| {
            kit::consumer::run(pool, jetstream, consumer, Arc::new(events::FirstLogin), shutdown)
        })
        .with_background(move |shutdown| async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match declarations.settle_unsettled().await {
                    Ok(0) => {}
                    Ok(settled) => tracing::info!(settled, "declarations left unsettled by a failure are settled"),
                    Err(error) => tracing::warn!(%error, "cannot settle unsettled declarations"),
                }
            }
        }))
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: Config = process.settings.section("units")?;
    let platform = Platform::connect(&process, "units").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}

/// The gRPC face of the service: parses requests, calls the domain, maps errors.
#[derive(Debug, Clone)]
pub struct UnitsApi {
    runtime: Runtime,
    codes: Arc<records::UnitCodes>,
    sealer: kit::sealing::Sealer,
    declarations: declarations::Declarations,
}

#[tonic::async_trait]
impl Units for UnitsApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }

    async fn get_unit_record(&self, request: Request<GetUnitRecordRequest>) -> Result<Response<UnitRecord>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        records::get(&self.runtime.pool, &self.sealer, &caller, &request.institution_code).await.map(Response::new)
    }

    async fn update_unit_record(
        &self,
        request: Request<UpdateUnitRecordRequest>,
    ) -> Result<Response<UpdateUnitRecordReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let (record, warnings) = records::update(
            &self.runtime.pool,
            &self.declarations.namespace,
            &self.codes,
            &self.sealer,
            &caller,
            request.record.unwrap_or_default(),
        )
        .await?;
        Ok(Response::new(UpdateUnitRecordReply { record: Some(record), warnings }))
    }

    async fn rotate_data_key(
        &self,
        request: Request<proto::common::RotateDataKeyRequest>,
    ) -> Result<Response<proto::common::RotateDataKeyReply>, Status> {
        kit::sealing::rotate_for(
            &self.runtime.pool,
            &self.sealer,
            &[records::UNITS_SEALED, declarations::DECLARATIONS_SEALED],
            request.into_inner(),
        )
        .await
        .map(Response::new)
    }

    async fn declare(&self, request: Request<DeclareRequest>) -> Result<Response<Declaration>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.declarations.declare(&caller, &request.kind).await.map(Response::new)
    }

    async fn withdraw_declaration(
        &self,
        request: Request<WithdrawDeclarationRequest>,
    ) -> Result<Response<Declaration>, Status> {
        let caller = request.into_inner().caller.unwrap_or_default();
        self.declarations.withdraw(&caller).await.map(Response::new)
    }

    async fn get_declaration(&self, request: Request<GetDeclarationRequest>) -> Result<Response<Declaration>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.declarations.get(&caller, &request.declaration_id).await.map(Response::new)
    }

    async fn list_review_queue(
        &self,
        request: Request<ListReviewQueueRequest>,
    ) -> Result<Response<ListReviewQueueReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.declarations.queue(&caller, &request.state, request.page, request.page_size).await.map(Response::new)
    }

    async fn claim_declaration(&self, request: Request<ReviewRequest>) -> Result<Response<Declaration>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let step = declarations::Step::Claim;
        self.declarations.review(&caller, &request.declaration_id, step, "").await.map(Response::new)
    }

    async fn approve_declaration(&self, request: Request<ReviewRequest>) -> Result<Response<Declaration>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let step = declarations::Step::Approve;
        self.declarations.review(&caller, &request.declaration_id, step, "").await.map(Response::new)
    }

    async fn reject_declaration(
        &self,
        request: Request<RejectDeclarationRequest>,
    ) -> Result<Response<Declaration>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let step = declarations::Step::Reject;
        self.declarations.review(&caller, &request.declaration_id, step, &request.reason).await.map(Response::new)
    }

    async fn list_unit_codes(
        &self,
        _request: Request<ListUnitCodesRequest>,
    ) -> Result<Response<ListUnitCodesReply>, Status> {
        let lists = self
            .codes
            .lists
            .iter()
            .map(|(name, codes)| UnitCodeList {
                name: name.clone(),
                codes: codes
                    .iter()
                    .map(|(code, label)| UnitCode { code: code.clone(), label: label.clone() })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListUnitCodesReply { lists }))
    }

    async fn list_units(
        &self,
        request: Request<proto::units::ListUnitsRequest>,
    ) -> Result<Response<proto::units::ListUnitsReply>, Status> {
        directory::list(&self.runtime.pool, request.into_inner()).await.map(Response::new)
    }

    async fn get_enrollment_progress(
        &self,
        request: Request<proto::units::GetEnrollmentProgressRequest>,
    ) -> Result<Response<proto::units::EnrollmentProgress>, Status> {
        progress::read(&self.runtime.pool, request.into_inner()).await.map(Response::new)
    }
}
