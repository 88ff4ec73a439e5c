//! The personnel service: in-service staff (工作人员), retirees who retired before 2014-10-01 and those who retired on
//! or after it, in its own database; later import jobs and declared roster snapshots.
//!
//! Modules in reading order: this file (configuration, start-up, the gRPC face), `check` (every rule of a person, a
//! pure function), `codes` (the code lists), `people` (校验, 保存, 待办业务 and their storage), `population` (the
//! population registry client and the development registry), `roster` (the declared rosters: freezing, releasing,
//! snapshots), `changes` (人员变更 after approval: open changes, applying an approved declaration), `conflicts`
//! (stale registrations and each person's history), `enrollment` (a person's enrollment by ID number, for other
//! agencies), `imports` (spreadsheet templates, imports as jobs on a work
//! queue, exports), `events` (which agency handles each unit, from identity's events; releasing and applying
//! rosters on units' declaration events). ID numbers and accounts are sealed with `kit::sealing`.

mod changes;
pub mod check;
mod codes;
mod conflicts;
mod enrollment;
mod events;
pub mod imports;
mod people;
pub mod population;
mod roster;

use std::sync::Arc;
use std::time::Duration;

use kit::process::Process;
use kit::service::{Platform, Runtime, ServiceApp, ServiceConfig, ServiceDefaults};
use proto::names::Service;
use proto::personnel::personnel_server::{Personnel, PersonnelServer};
use proto::personnel::{
    ApplyDeclarationReply, ApplyDeclarationRequest, DeleteRosterChangeReply, DeleteRosterChangeRequest,
    ListRosterChangesReply, ListRosterChangesRequest, RosterChangeItem, SaveRosterChangeRequest,
};
use proto::personnel::{
    CheckPersonRequest, CheckReply, Code, CodeList, CreatePersonRequest, DeletePersonReply, DeletePersonRequest,
    GetPersonRequest, ListCodesReply, ListCodesRequest, ListPersonsReply, ListPersonsRequest, Person, PersonReply,
    UpdatePersonRequest,
};
use proto::personnel::{
    EndRegistrationRequest, GetPersonHistoryRequest, ListRegistrationConflictsReply, ListRegistrationConflictsRequest,
    PersonHistory, RegistrationConflict,
};
use proto::personnel::{
    FreezeRosterRequest, GetRosterSnapshotRequest, ReleaseRosterReply, ReleaseRosterRequest, RosterSnapshot,
};
use serde::Deserialize;
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

use crate::people::People;

/// The service's schema, applied at start-up after kit's tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/personnel");

/// The name, database and ports used unless configured otherwise (section `personnel`).
pub const DEFAULTS: ServiceDefaults =
    ServiceDefaults { service: Service::Personnel, database: "pension_personnel", grpc_port: 50062, admin_port: 8093 };

/// The `personnel` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub service: ServiceConfig,
    /// The keys of ID numbers and accounts at rest (`data_key`, `data_key_version`, `retired_data_keys`,
    /// `index_key`).
    #[serde(flatten)]
    pub sealing: kit::sealing::SealingConfig,
    /// The population registry (公安库) gRPC address; empty: none, every check warns it could not ask.
    pub population_registry_url: String,
    /// How long a 校验 waits for the registry before warning 公安库暂时无法校验.
    #[serde(with = "kit::config::millis")]
    pub population_timeout: Duration,
    /// How often people the registry did not answer for are asked about again.
    #[serde(with = "kit::config::millis")]
    pub population_recheck: Duration,
    /// Spreadsheet imports: the largest file, the batch size, when a silent worker's job is taken over.
    pub imports: imports::ImportConfig,
    /// Crash points, armed by tests only; configuration cannot reach them.
    #[serde(skip)]
    pub faults: kit::faults::Faults,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceConfig::default(),
            sealing: kit::sealing::SealingConfig::default(),
            population_registry_url: "http://127.0.0.1:50070".into(),
            population_timeout: Duration::from_millis(300),
            population_recheck: Duration::from_secs(60),
            imports: imports::ImportConfig::default(),
            faults: kit::faults::Faults::default(),
        }
    }
}

/// The service, bound and ready to run.
pub type App = ServiceApp<PersonnelServer<PersonnelApi>>;

/// Connects, migrates and binds the service, with the population re-check beside it. `serve_admin` is false when
/// the process serves the admin endpoints itself (`pension all`).
pub async fn build(config: &Config, platform: &Platform, serve_admin: bool) -> anyhow::Result<App> {
    let runtime = Runtime::start(&DEFAULTS, &config.service.database, &MIGRATOR, platform).await?;
    let sealer = kit::sealing::Sealer::from_config(&config.sealing, "personnel")?;
    let codes = codes::CodeLists::load(&runtime.pool).await?;
    let registry = population::Registry::new(&config.population_registry_url, config.population_timeout)?;
    let people = People { pool: runtime.pool.clone(), namespace: platform.namespace.clone(), sealer, codes, registry };
    let api = PersonnelApi {
        runtime: runtime.clone(),
        people: Arc::new(people.clone()),
        faults: config.faults.clone(),
        imports: config.imports.clone(),
    };
    let import_consumer = imports::import_consumer(&platform.namespace);
    let worker = Arc::new(imports::ImportWorker {
        people: people.clone(),
        config: config.imports.clone(),
        name: format!("personnel-{}", uuid::Uuid::new_v4()),
        faults: config.faults.clone(),
    });
    let (pool_3, jetstream_3) = (runtime.pool.clone(), runtime.jetstream.clone());
    let consumer = events::first_login_consumer(&platform.namespace);
    let declaration_consumer = events::declaration_consumer(&platform.namespace);
    let (pool, jetstream) = (runtime.pool.clone(), runtime.jetstream.clone());
    let (pool_2, jetstream_2) = (runtime.pool.clone(), runtime.jetstream.clone());
    let release = Arc::new(events::DeclarationOutcome { people: people.clone() });
    let app = ServiceApp::bind(runtime, PersonnelServer::new(api), (&config.service, &DEFAULTS), platform, serve_admin)
        .await?
        .with_background(move |shutdown| {
            kit::consumer::run(pool, jetstream, consumer, Arc::new(events::UnitAgency), shutdown)
        })
        .with_background(move |shutdown| {
            kit::consumer::run(pool_2, jetstream_2, declaration_consumer, release, shutdown)
        })
        .with_background(move |shutdown| kit::consumer::run(pool_3, jetstream_3, import_consumer, worker, shutdown));
    let interval = config.population_recheck;
    let imports = config.imports.clone();
    Ok(app.with_background(move |shutdown| async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match people.recheck_pending().await {
                Ok(0) => {}
                Ok(settled) => tracing::info!(settled, "population registry answered for people checked earlier"),
                Err(error) => tracing::warn!(%error, "cannot re-check people with the population registry"),
            }
            if let Err(error) = people.prune_idempotency_keys().await {
                tracing::warn!(%error, "cannot prune old idempotency keys");
            }
            match people.prune_import_files(&imports).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "uploaded files of imports ended long ago are deleted"),
                Err(error) => tracing::warn!(%error, "cannot delete the files of old imports"),
            }
        }
    }))
}

/// Runs the service as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: Config = process.settings.section("personnel")?;
    let platform = Platform::connect(&process, "personnel").await?;
    build(&config, &platform, true).await?.run(process.shutdown.clone()).await
}

/// The gRPC face of the service: parses requests, calls the domain, maps errors.
#[derive(Debug, Clone)]
pub struct PersonnelApi {
    runtime: Runtime,
    people: Arc<People>,
    faults: kit::faults::Faults,
    imports: imports::ImportConfig,
}

#[tonic::async_trait]
impl Personnel for PersonnelApi {
    async fn get_status(
        &self,
        _request: Request<proto::common::GetStatusRequest>,
    ) -> Result<Response<proto::common::ServiceStatus>, Status> {
        self.runtime.status().await.map(Response::new)
    }

    async fn check_person(&self, request: Request<CheckPersonRequest>) -> Result<Response<CheckReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let unit = people::unit_of(&caller, "", true)?;
        let (input, _) = people::input_of(request.person.unwrap_or_default());
        let editing = request.person_id.trim().parse().ok();
        let (checked, _) = self.people.check(&unit, &input, editing).await?;
        Ok(Response::new(people::reply_of(&checked)))
    }

    async fn create_person(&self, request: Request<CreatePersonRequest>) -> Result<Response<PersonReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let person = request.person.unwrap_or_default();
        let unit = people::unit_of(&caller, "", true)?;
        let idempotency = kit::idempotency::Idempotency::of(&unit, &request.idempotency_key, &person)?;
        let (input, accepted) = people::input_of(person);
        self.people.save(&caller, None, input, accepted, idempotency.as_ref()).await.map(Response::new)
    }

    async fn update_person(&self, request: Request<UpdatePersonRequest>) -> Result<Response<PersonReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let person_id = request
            .person_id
            .trim()
            .parse()
            .map_err(|_| kit::status::refuse(tonic::Code::NotFound, "person_not_found", "没有找到该人员"))?;
        let (input, accepted) = people::input_of(request.person.unwrap_or_default());
        self.people.save(&caller, Some(person_id), input, accepted, None).await.map(Response::new)
    }

    async fn get_person(&self, request: Request<GetPersonRequest>) -> Result<Response<Person>, Status> {
        let request = request.into_inner();
        self.people.get(&request.caller.unwrap_or_default(), &request.person_id).await.map(Response::new)
    }

    async fn list_persons(&self, request: Request<ListPersonsRequest>) -> Result<Response<ListPersonsReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.people
            .list(&caller, &request.institution_code, &request.kind, &request.name, request.page, request.page_size)
            .await
            .map(Response::new)
    }

    async fn delete_person(
        &self,
        request: Request<DeletePersonRequest>,
    ) -> Result<Response<DeletePersonReply>, Status> {
        let request = request.into_inner();
        self.people.delete(&request.caller.unwrap_or_default(), &request.person_id).await?;
        Ok(Response::new(DeletePersonReply {}))
    }

    async fn freeze_roster(&self, request: Request<FreezeRosterRequest>) -> Result<Response<RosterSnapshot>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.people
            .freeze(&caller, &request.institution_code, &request.declaration_id, &request.kind, &self.faults)
            .await
            .map(Response::new)
    }

    async fn release_roster(
        &self,
        request: Request<ReleaseRosterRequest>,
    ) -> Result<Response<ReleaseRosterReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let released = self.people.release(&caller, &request.institution_code, &request.declaration_id).await?;
        Ok(Response::new(ReleaseRosterReply { released }))
    }

    async fn get_roster_snapshot(
        &self,
        request: Request<GetRosterSnapshotRequest>,
    ) -> Result<Response<RosterSnapshot>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.people
            .snapshot(&caller, &request.declaration_id, &request.compare_to, request.summary_only)
            .await
            .map(Response::new)
    }

    async fn list_registration_conflicts(
        &self,
        request: Request<ListRegistrationConflictsRequest>,
    ) -> Result<Response<ListRegistrationConflictsReply>, Status> {
        let caller = request.into_inner().caller.unwrap_or_default();
        let conflicts = self.people.conflicts(&caller).await?;
        Ok(Response::new(ListRegistrationConflictsReply { conflicts }))
    }

    async fn end_registration(
        &self,
        request: Request<EndRegistrationRequest>,
    ) -> Result<Response<RegistrationConflict>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.people.end_registration(&caller, &request.conflict_id, &request.reason).await.map(Response::new)
    }

    async fn get_person_history(
        &self,
        request: Request<GetPersonHistoryRequest>,
    ) -> Result<Response<PersonHistory>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.people.history(&caller, &request.person_id).await.map(Response::new)
    }

    async fn save_roster_change(
        &self,
        request: Request<SaveRosterChangeRequest>,
    ) -> Result<Response<RosterChangeItem>, Status> {
        let request = request.into_inner();
        let caller = request.caller.clone().unwrap_or_default();
        self.people.save_change(&caller, request).await.map(Response::new)
    }

    async fn list_roster_changes(
        &self,
        request: Request<ListRosterChangesRequest>,
    ) -> Result<Response<ListRosterChangesReply>, Status> {
        let caller = request.into_inner().caller.unwrap_or_default();
        self.people.list_changes(&caller).await.map(Response::new)
    }

    async fn delete_roster_change(
        &self,
        request: Request<DeleteRosterChangeRequest>,
    ) -> Result<Response<DeleteRosterChangeReply>, Status> {
        let request = request.into_inner();
        self.people.delete_change(&request.caller.unwrap_or_default(), &request.change_id).await?;
        Ok(Response::new(DeleteRosterChangeReply {}))
    }

    async fn apply_declaration(
        &self,
        request: Request<ApplyDeclarationRequest>,
    ) -> Result<Response<ApplyDeclarationReply>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let applied = self.people.apply(&caller, &request.institution_code, &request.declaration_id).await?;
        Ok(Response::new(ApplyDeclarationReply { applied }))
    }

    async fn get_import_template(
        &self,
        request: Request<proto::personnel::GetImportTemplateRequest>,
    ) -> Result<Response<proto::personnel::SpreadsheetFile>, Status> {
        let request = request.into_inner();
        people::unit_of(&request.caller.unwrap_or_default(), "", true)?;
        self.people.import_template(&request.kind).map(Response::new)
    }

    async fn create_import_job(
        &self,
        request: Request<proto::personnel::CreateImportJobRequest>,
    ) -> Result<Response<proto::personnel::ImportJob>, Status> {
        let request = request.into_inner();
        let caller = request.caller.clone().unwrap_or_default();
        self.people.create_import(&caller, &self.imports, request).await.map(Response::new)
    }

    async fn put_import_chunk(
        &self,
        request: Request<proto::personnel::PutImportChunkRequest>,
    ) -> Result<Response<proto::personnel::ImportJob>, Status> {
        let request = request.into_inner();
        let caller = request.caller.clone().unwrap_or_default();
        self.people.put_import_chunk(&caller, request).await.map(Response::new)
    }

    async fn submit_import_job(
        &self,
        request: Request<proto::personnel::GetImportJobRequest>,
    ) -> Result<Response<proto::personnel::ImportJob>, Status> {
        let request = request.into_inner();
        let job = self.people.submit_import(&request.caller.unwrap_or_default(), &request.job_id).await?;
        self.runtime.wake_relay();
        Ok(Response::new(job))
    }

    async fn get_import_job(
        &self,
        request: Request<proto::personnel::GetImportJobRequest>,
    ) -> Result<Response<proto::personnel::ImportJob>, Status> {
        let request = request.into_inner();
        self.people.import_job(&request.caller.unwrap_or_default(), &request.job_id).await.map(Response::new)
    }

    async fn get_import_report(
        &self,
        request: Request<proto::personnel::GetImportJobRequest>,
    ) -> Result<Response<proto::personnel::SpreadsheetFile>, Status> {
        let request = request.into_inner();
        self.people.import_report(&request.caller.unwrap_or_default(), &request.job_id).await.map(Response::new)
    }

    async fn export_persons(
        &self,
        request: Request<proto::personnel::ExportPersonsRequest>,
    ) -> Result<Response<proto::personnel::SpreadsheetFile>, Status> {
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        self.people.export(&caller, &request.kind, &request.declaration_id).await.map(Response::new)
    }

    async fn rotate_data_key(
        &self,
        request: Request<proto::common::RotateDataKeyRequest>,
    ) -> Result<Response<proto::common::RotateDataKeyReply>, Status> {
        kit::sealing::rotate_for(
            &self.people.pool,
            &self.people.sealer,
            &[people::PERSONS_SEALED, roster::SNAPSHOTS_SEALED, changes::CHANGES_SEALED],
            request.into_inner(),
        )
        .await
        .map(Response::new)
    }

    async fn list_codes(&self, _request: Request<ListCodesRequest>) -> Result<Response<ListCodesReply>, Status> {
        let lists = self
            .people
            .codes
            .all()
            .iter()
            .map(|(name, codes)| CodeList {
                name: name.clone(),
                codes: codes.iter().map(|(code, label)| Code { code: code.clone(), label: label.clone() }).collect(),
            })
            .collect();
        Ok(Response::new(ListCodesReply { lists }))
    }

    async fn get_enrollment(
        &self,
        request: Request<proto::personnel::GetEnrollmentRequest>,
    ) -> Result<Response<proto::personnel::Enrollment>, Status> {
        self.people.enrollment(request.into_inner()).await.map(Response::new)
    }

    async fn get_import_queue(
        &self,
        request: Request<proto::personnel::GetImportQueueRequest>,
    ) -> Result<Response<proto::personnel::ImportQueue>, Status> {
        let caller = request.into_inner().caller.unwrap_or_default();
        self.people.import_queue(&caller).await.map(Response::new)
    }
}
