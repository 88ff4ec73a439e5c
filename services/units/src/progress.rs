//! Enrollment progress: the projection behind the dashboards, kept from identity's, this service's and personnel's
//! events, and the figures read from it.
//!
//! The projection is written only by [`Progress`], one handler behind three durable consumers (one per stream), so
//! [`verify`] can replay the streams from their first message into temporary tables of the same shape, with the same
//! handler, and compare: a projection that drifted from its events is found, not trusted. Every column is written
//! by the events of one stream only, and each stream is applied in order, so the three streams may interleave in any
//! way and give the same rows.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use kit::consumer::{ConsumerSpec, Event, Handler, HandlerError};
use kit::db::Scope;
use kit::status::{Violation, invalid, refuse};
use proto::common::Caller;
use proto::events;
use proto::names::Namespace;
use proto::units::{
    AgencyQueue, EnrollmentProgress, GetEnrollmentProgressRequest, LoadMinute, PeopleCount, ReasonCount, UnitStateCount,
};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tonic::{Code, Status};

/// The streams the projection reads, each by a consumer of its own.
pub const SOURCES: [&str; 3] = ["identity", "units", "personnel"];

/// The projection's tables, in the order [`verify`] compares them.
const TABLES: [(&str, &str); 4] = [
    ("progress_units", "institution_code"),
    ("progress_people", "agency_code, region_code, hour"),
    ("progress_declarations", "declaration_id"),
    ("progress_load", "minute"),
];

/// The durable consumer of every event of one producing service's stream.
pub fn consumer(namespace: &Namespace, service: &str) -> ConsumerSpec {
    ConsumerSpec::new(
        namespace.events_stream(service),
        namespace.events_filter(service),
        namespace.consumer("units", &format!("progress_{service}")),
        namespace.events_filter(service),
    )
}

/// Applies one event to the projection; events it does not need are passed over.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The subject prefix of events, `<namespace>.events.`, stripped to find the event's name.
    prefix: String,
}

impl Progress {
    pub fn new(namespace: &Namespace) -> Self {
        Self { prefix: format!("{}.events.", namespace.as_str()) }
    }
}

fn decode<M: prost::Message + Default>(event: &Event) -> Result<M, HandlerError> {
    M::decode(event.payload.as_ref()).map_err(|error| {
        HandlerError::Poison(format!("{} does not decode as {}: {error}", event.subject, std::any::type_name::<M>()))
    })
}

/// When the event's change was committed; the time it is applied only for an event that does not say.
fn occurred(meta: Option<&events::EventMeta>) -> OffsetDateTime {
    meta.and_then(|meta| meta.occurred_at.as_ref())
        .and_then(|at| OffsetDateTime::from_unix_timestamp(at.seconds).ok())
        .unwrap_or_else(OffsetDateTime::now_utc)
}

/// Sets one journey timestamp of a unit the first time its step is reached.
async fn reached(
    connection: &mut PgConnection,
    column: &str,
    institution_code: &str,
    at: OffsetDateTime,
) -> Result<(), HandlerError> {
    if institution_code.is_empty() {
        return Ok(());
    }
    // `column` is one of this module's constants, never input.
    let statement = format!(
        "insert into progress_units (institution_code, {column}) values ($1, $2) \
         on conflict (institution_code) do update set {column} = coalesce(progress_units.{column}, excluded.{column})"
    );
    sqlx::query(sqlx::AssertSqlSafe(statement)).bind(institution_code).bind(at).execute(connection).await?;
    Ok(())
}

impl Handler for Progress {
    async fn handle(&self, transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        kit::db::set_scope(transaction, &Scope::All).await?;
        apply(&self.prefix, transaction, event).await
    }
}

/// The projection's change for one event, written through `connection`: the live tables from a consumer's
/// transaction, the temporary ones from [`verify`].
async fn apply(prefix: &str, connection: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
    let Some(name) = event.subject.strip_prefix(prefix) else { return Ok(()) };
    match name {
        "identity.registry_entry_changed" => {
            let entry: events::RegistryEntryChanged = decode(event)?;
            sqlx::query(
                "insert into progress_units (institution_code, in_registry, region_code, agency_code) \
                 values ($1, $2, $3, $4) on conflict (institution_code) do update set \
                 in_registry = excluded.in_registry, region_code = excluded.region_code, \
                 agency_code = excluded.agency_code",
            )
            .bind(&entry.institution_code)
            .bind(!entry.retired)
            .bind(&entry.region_code)
            .bind(&entry.agency_code)
            .execute(connection)
            .await?;
        }
        "identity.key_applied" => {
            let applied: events::KeyApplied = decode(event)?;
            reached(connection, "key_applied_at", &applied.institution_code, occurred(applied.meta.as_ref())).await?;
        }
        "identity.key_application_withdrawn" => {
            // A withdrawn application takes the unit back to no key, unless a key was made meanwhile (a unit's
            // second application).
            let withdrawn: events::KeyApplicationWithdrawn = decode(event)?;
            sqlx::query(
                "update progress_units set key_applied_at = null where institution_code = $1 and key_made_at is null",
            )
            .bind(&withdrawn.institution_code)
            .execute(connection)
            .await?;
        }
        "identity.certificate_issued" => {
            let issued: events::CertificateIssued = decode(event)?;
            reached(connection, "key_made_at", &issued.institution_code, occurred(issued.meta.as_ref())).await?;
        }
        "identity.key_activated" => {
            let activated: events::KeyActivated = decode(event)?;
            reached(connection, "activated_at", &activated.institution_code, occurred(activated.meta.as_ref())).await?;
        }
        "identity.unit_first_login" => {
            let login: events::UnitFirstLogin = decode(event)?;
            reached(connection, "activated_at", &login.institution_code, occurred(login.meta.as_ref())).await?;
        }
        "units.unit_record_saved" => {
            let saved: events::UnitRecordSaved = decode(event)?;
            reached(connection, "record_filled_at", &saved.institution_code, occurred(saved.meta.as_ref())).await?;
        }
        "units.declaration.declared"
        | "units.declaration.withdrawn"
        | "units.declaration.claimed"
        | "units.declaration.approved"
        | "units.declaration.rejected" => {
            let changed: events::DeclarationChanged = decode(event)?;
            declaration_changed(connection, &changed).await?;
        }
        "personnel.people_registered" => {
            let registered: events::PeopleRegistered = decode(event)?;
            let at = occurred(registered.meta.as_ref());
            let counts = [registered.staff, registered.retiree_pre_reform, registered.retiree_post_reform];
            people(connection, &registered.agency_code, &registered.region_code, at, counts.map(i64::from), 0).await?;
            let total: i64 = counts.iter().copied().map(i64::from).sum();
            let (saved, imported) = if registered.source == "import" { (0, total) } else { (total, 0) };
            sqlx::query(
                "insert into progress_load (minute, saved, imported) values (date_trunc('minute', $1), $2, $3) \
                 on conflict (minute) do update set saved = progress_load.saved + excluded.saved, \
                 imported = progress_load.imported + excluded.imported",
            )
            .bind(at)
            .bind(saved)
            .bind(imported)
            .execute(connection)
            .await?;
        }
        "personnel.person_deleted" => {
            let deleted: events::PersonDeleted = decode(event)?;
            let at = occurred(deleted.meta.as_ref());
            people(connection, &deleted.agency_code, &deleted.region_code, at, [0, 0, 0], 1).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Adds to the hour's counts of people saved (`counts`: staff, before and after the reform) and deleted.
async fn people(
    connection: &mut PgConnection,
    agency_code: &str,
    region_code: &str,
    at: OffsetDateTime,
    counts: [i64; 3],
    deleted: i64,
) -> Result<(), HandlerError> {
    sqlx::query(
        "insert into progress_people (agency_code, region_code, hour, staff, retiree_pre_reform, \
         retiree_post_reform, deleted) values ($1, $2, date_trunc('hour', $3), $4, $5, $6, $7) \
         on conflict (agency_code, region_code, hour) do update set staff = progress_people.staff + excluded.staff, \
         retiree_pre_reform = progress_people.retiree_pre_reform + excluded.retiree_pre_reform, \
         retiree_post_reform = progress_people.retiree_post_reform + excluded.retiree_post_reform, \
         deleted = progress_people.deleted + excluded.deleted",
    )
    .bind(agency_code)
    .bind(region_code)
    .bind(at)
    .bind(counts[0])
    .bind(counts[1])
    .bind(counts[2])
    .bind(deleted)
    .execute(connection)
    .await?;
    Ok(())
}

async fn declaration_changed(
    connection: &mut PgConnection,
    changed: &events::DeclarationChanged,
) -> Result<(), HandlerError> {
    let at = occurred(changed.meta.as_ref());
    let kind = if changed.kind.is_empty() { "initial" } else { changed.kind.as_str() };
    // Reasons are free text shown on dashboards and to other agencies: a number typed into one is masked.
    let reason = validators::id_number::mask_in_text(&changed.reason.split_whitespace().collect::<Vec<_>>().join(" "));
    let decided = matches!(changed.state.as_str(), "approved" | "rejected" | "withdrawn");
    sqlx::query(
        "insert into progress_declarations (declaration_id, institution_code, agency_code, kind, state, declared_at, \
         decided_at, reason) values ($1, $2, $3, $4, $5, $6, case when $7 then $6 end, $8) \
         on conflict (declaration_id) do update set state = excluded.state, \
         decided_at = coalesce(excluded.decided_at, progress_declarations.decided_at), \
         reason = case when excluded.reason = '' then progress_declarations.reason else excluded.reason end",
    )
    .bind(&changed.declaration_id)
    .bind(&changed.institution_code)
    .bind(&changed.agency_code)
    .bind(kind)
    .bind(&changed.state)
    .bind(at)
    .bind(decided)
    .bind(&reason)
    .execute(&mut *connection)
    .await?;
    if kind != "initial" || changed.institution_code.is_empty() {
        return Ok(());
    }
    // The unit's journey follows its first declaration only: change declarations come after approval.
    let state = if changed.state == "withdrawn" { "" } else { changed.state.as_str() };
    sqlx::query(
        "insert into progress_units (institution_code, declaration_state) values ($1, $2) \
         on conflict (institution_code) do update set declaration_state = excluded.declaration_state",
    )
    .bind(&changed.institution_code)
    .bind(state)
    .execute(connection)
    .await?;
    Ok(())
}

// ---- reading ----

/// Who may read which figures: the province admin and API clients with units:read every unit, an agency reviewer
/// its agency's.
fn scope_of(caller: &Caller) -> Result<Scope, Status> {
    match caller.role.as_str() {
        "province_admin" | "system" => Ok(Scope::All),
        "api_client" if caller.scopes.iter().any(|scope| scope == "units:read") => Ok(Scope::All),
        "agency_reviewer" if !caller.agency_code.is_empty() => Ok(Scope::Agencies(vec![caller.agency_code.clone()])),
        _ => Err(refuse(Code::PermissionDenied, "forbidden", "只有省级管理员和经办机构审核员可以查看参保进度")),
    }
}

/// The figures of the caller's scope, narrowed by the request's agency and region.
pub async fn read(pool: &PgPool, request: GetEnrollmentProgressRequest) -> Result<EnrollmentProgress, Status> {
    let caller = request.caller.unwrap_or_default();
    let scope = scope_of(&caller)?;
    let agency = request.agency_code.trim().to_owned();
    let region = request.region_code.trim().to_owned();
    let mut violations = Vec::new();
    if !region.is_empty() && (![2, 4, 6].contains(&region.len()) || !region.bytes().all(|byte| byte.is_ascii_digit())) {
        violations.push(Violation::new("region_code", "invalid_region_code", "行政区划代码应为 2、4 或 6 位数字"));
    }
    if agency.len() > 32 {
        violations.push(Violation::new("agency_code", "invalid_agency_code", "经办机构编码过长"));
    }
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    let province_wide = matches!(scope, Scope::All) && agency.is_empty() && region.is_empty();
    let mut transaction = kit::db::begin_scoped(pool, &scope).await.map_err(kit::db::status)?;
    let as_of = OffsetDateTime::now_utc();
    let unit_states: Vec<(String, String, String, i64)> = sqlx::query_as(
        "select region_code, agency_code, state, count(*) from progress_units \
         where in_registry and ($1 = '' or agency_code = $1) and region_code like $2 || '%' \
         group by 1, 2, 3 order by 1, 2, 3",
    )
    .bind(&agency)
    .bind(&region)
    .fetch_all(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    let people_sum = "coalesce(sum(staff), 0)::bigint, coalesce(sum(retiree_pre_reform), 0)::bigint, \
         coalesce(sum(retiree_post_reform), 0)::bigint, coalesce(sum(deleted), 0)::bigint";
    let by_day: Vec<(OffsetDateTime, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select (date_trunc('day', hour at time zone 'Asia/Shanghai') at time zone 'Asia/Shanghai'), {people_sum} \
         from progress_people where ($1 = '' or agency_code = $1) and region_code like $2 || '%' \
         group by 1 order by 1"
    )))
    .bind(&agency)
    .bind(&region)
    .fetch_all(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    let by_hour: Vec<(OffsetDateTime, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select hour, {people_sum} from progress_people \
         where hour > date_trunc('hour', $3::timestamptz) - interval '48 hours' \
         and ($1 = '' or agency_code = $1) and region_code like $2 || '%' group by 1 order by 1"
    )))
    .bind(&agency)
    .bind(&region)
    .bind(as_of)
    .fetch_all(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    // The queue goes by the declaration's agency; a region narrows it through the units' registry places, asked
    // once (a hashed subplan), not per declaration.
    let queue: Vec<(String, i64, i64, Option<OffsetDateTime>, i64, i64)> = sqlx::query_as(
        "select d.agency_code, count(*) filter (where d.state = 'declared'), \
         count(*) filter (where d.state = 'claimed'), \
         min(d.declared_at) filter (where d.state in ('declared', 'claimed')), \
         count(*) filter (where d.state = 'approved'), count(*) filter (where d.state = 'rejected') \
         from progress_declarations d \
         where ($1 = '' or d.agency_code = $1) and ($2 = '' or d.institution_code in \
             (select institution_code from progress_units where region_code like $2 || '%')) \
         group by 1 order by 1",
    )
    .bind(&agency)
    .bind(&region)
    .fetch_all(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    let reasons: Vec<(String, i64)> = sqlx::query_as(
        "select d.reason, count(*) from progress_declarations d where d.state = 'rejected' \
         and ($1 = '' or d.agency_code = $1) and ($2 = '' or d.institution_code in \
             (select institution_code from progress_units where region_code like $2 || '%')) \
         group by 1 order by 2 desc, 1 limit 10",
    )
    .bind(&agency)
    .bind(&region)
    .fetch_all(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    let load: Vec<(OffsetDateTime, i64, i64)> = if province_wide {
        sqlx::query_as(
            "select minute, saved, imported from progress_load \
             where minute > date_trunc('minute', $1::timestamptz) - interval '60 minutes' order by 1",
        )
        .bind(as_of)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?
    } else {
        Vec::new()
    };
    transaction.commit().await.map_err(kit::db::status)?;
    let count = |value: i64| u32::try_from(value).unwrap_or(u32::MAX);
    let total = |value: i64| u64::try_from(value).unwrap_or(0);
    let people = |(start, staff, pre, post, deleted): (OffsetDateTime, i64, i64, i64, i64)| PeopleCount {
        start: Some(kit::convert::timestamp(start)),
        staff: total(staff),
        retiree_pre_reform: total(pre),
        retiree_post_reform: total(post),
        deleted: total(deleted),
    };
    Ok(EnrollmentProgress {
        as_of: Some(kit::convert::timestamp(as_of)),
        unit_states: unit_states
            .into_iter()
            .map(|(region_code, agency_code, state, units)| UnitStateCount {
                region_code,
                agency_code,
                state,
                units: count(units),
            })
            .collect(),
        people_by_day: by_day.into_iter().map(people).collect(),
        people_by_hour: by_hour.into_iter().map(people).collect(),
        queue: queue
            .into_iter()
            .map(|(agency_code, declared, under_review, oldest, approved, rejected)| AgencyQueue {
                agency_code,
                declared: count(declared),
                under_review: count(under_review),
                oldest_declared_at: oldest.map(kit::convert::timestamp),
                approved: count(approved),
                rejected: count(rejected),
            })
            .collect(),
        rejection_reasons: reasons
            .into_iter()
            .map(|(reason, declarations)| ReasonCount { reason, declarations: count(declarations) })
            .collect(),
        load: load
            .into_iter()
            .map(|(minute, saved, imported)| LoadMinute {
                minute: Some(kit::convert::timestamp(minute)),
                saved: count(saved),
                imported: count(imported),
            })
            .collect(),
    })
}

// ---- verifying ----

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Events replayed, per stream.
    pub replayed: BTreeMap<String, u64>,
    /// Events the live consumers had not handled yet when the replay started: a difference may be only that.
    pub pending: u64,
    /// Per table, rows that differ: in the live projection and not in the replay, or the other way round.
    pub differences: BTreeMap<String, Vec<String>>,
}

impl Verification {
    pub fn matches(&self) -> bool {
        self.differences.values().all(Vec::is_empty)
    }
}

/// Rebuilds the projection from the three streams into temporary tables (on one connection, invisible to anyone
/// else) with the same handler, and compares them with the live tables row by row.
pub async fn verify(
    pool: &PgPool,
    jetstream: &jetstream::Context,
    namespace: &Namespace,
) -> anyhow::Result<Verification> {
    let mut verification = Verification::default();
    for service in SOURCES {
        let spec = consumer(namespace, service);
        if let Ok(stream) = jetstream.get_stream(&spec.stream).await
            && let Ok(info) = stream.consumer_info(&spec.durable).await
        {
            verification.pending += info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
        }
    }
    // A connection of its own, closed afterwards rather than returned to the pool: its temporary tables shadow the
    // live ones for as long as it lives, and no other query may ever run on it.
    let mut connection = pool.acquire().await?.detach();
    for (table, _) in TABLES {
        // Unqualified names find pg_temp first, so the handler's statements write these copies.
        sqlx::query(sqlx::AssertSqlSafe(format!("create temporary table {table} (like public.{table} including all)")))
            .execute(&mut connection)
            .await?;
    }
    let result = replay_and_compare(&mut connection, jetstream, namespace, &mut verification).await;
    let _ = sqlx::Connection::close(connection).await;
    result?;
    Ok(verification)
}

async fn replay_and_compare(
    connection: &mut PgConnection,
    jetstream: &jetstream::Context,
    namespace: &Namespace,
    verification: &mut Verification,
) -> anyhow::Result<()> {
    let prefix = format!("{}.events.", namespace.as_str());
    for service in SOURCES {
        let replayed = replay(connection, jetstream, namespace, service, &prefix).await?;
        verification.replayed.insert(service.to_owned(), replayed);
    }
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    kit::db::set_scope(&mut transaction, &Scope::All).await?;
    for (table, key) in TABLES {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select difference from (\
                 select 'live: ' || t::text as difference, 1 as side, t.* from \
                     (select * from public.{table} except select * from pg_temp.{table}) t \
                 union all select 'replayed: ' || t::text, 2, t.* from \
                     (select * from pg_temp.{table} except select * from public.{table}) t) d \
             order by {key}, side limit 20"
        )))
        .fetch_all(&mut *transaction)
        .await?;
        verification.differences.insert(table.to_owned(), rows);
    }
    transaction.commit().await?;
    Ok(())
}

/// Applies every message of one stream, from its first to the last one there when the replay starts.
async fn replay(
    connection: &mut PgConnection,
    jetstream: &jetstream::Context,
    namespace: &Namespace,
    service: &str,
    prefix: &str,
) -> anyhow::Result<u64> {
    let name = namespace.events_stream(service);
    let Ok(mut stream) = jetstream.get_stream(&name).await else { return Ok(0) };
    let last = stream.info().await?.state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: namespace.events_filter(service),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut replayed = 0;
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    kit::db::set_scope(&mut transaction, &Scope::All).await?;
    loop {
        let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? else { break };
        let message = message?;
        let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(last);
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .map(|value| value.as_str().to_owned())
            .unwrap_or_else(|| format!("{name}:{sequence}"));
        let event = Event { id, subject: message.subject.to_string(), payload: message.payload.clone(), delivered: 1 };
        match apply(prefix, &mut transaction, &event).await {
            // The live consumer terminates a poison event and goes on; so does the replay.
            Ok(()) | Err(HandlerError::Poison(_)) => {}
            Err(HandlerError::Retry(reason)) => anyhow::bail!("replaying {name} at {sequence}: {reason}"),
        }
        replayed += 1;
        if sequence >= last {
            break;
        }
    }
    transaction.commit().await?;
    Ok(replayed)
}
