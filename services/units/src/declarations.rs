//! Declarations (申报) and the agency's review. The life of a declaration is the table of [`next`]; declaring is a
//! saga across two databases: a declaration is stored `declaring` with the unit record's snapshot, personnel freezes
//! the roster under its id, then it is `declared`. When personnel cannot answer, the reconciler ([`Declarations::
//! settle_unsettled`]) asks again later and settles forward (the freeze is idempotent) or back (personnel refused).
//! Every transition is stored with who, when, why and the digests of the snapshots it refers to, and goes out as an
//! event through the outbox.

use std::time::Duration;

use base64::Engine as _;
use kit::audit::{self, Actor, Outcome};
use kit::db::Scope;
use kit::faults::Faults;
use kit::rpc::NatsChannel;
use kit::service::Runtime;
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::common::Caller;
use proto::events::DeclarationChanged;
use proto::names::Namespace;
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{ApplyDeclarationRequest, FreezeRosterRequest, ReleaseRosterRequest, RosterSnapshot};
use proto::units::{AcceptedUnitWarning, Declaration, FieldChange, ListReviewQueueReply, Transition, UnitRecord};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use kit::convert::{hex, timestamp};

use crate::records;

/// What a unit or a reviewer does to a declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Personnel froze the roster.
    Frozen,
    /// Personnel refused to freeze it.
    Refused,
    Withdraw,
    Claim,
    Approve,
    Reject,
}

/// The state a step leads to from `state`, if the step is allowed there (domain section 6).
pub fn next(state: &str, step: Step) -> Option<&'static str> {
    match (state, step) {
        ("declaring", Step::Frozen) => Some("declared"),
        ("declaring", Step::Refused) => Some("abandoned"),
        ("declared", Step::Withdraw) => Some("withdrawn"),
        ("declared", Step::Claim) => Some("claimed"),
        ("claimed", Step::Approve) => Some("approved"),
        ("claimed", Step::Reject) => Some("rejected"),
        _ => None,
    }
}

/// Whether a declaration in `state` holds the unit (one active declaration per unit).
pub fn is_active(state: &str) -> bool {
    matches!(state, "declaring" | "declared" | "claimed")
}

/// The unit's state while its latest declaration is in `state`: a record is editable only in draft.
pub fn unit_state(state: &str) -> &'static str {
    match state {
        "declaring" => "declaring",
        "declared" => "declared",
        "claimed" => "under_review",
        "approved" => "approved",
        _ => "draft",
    }
}

/// The label of a declaration's kind: a unit's first (the whole roster) or a change declaration (only what changed
/// since approval).
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "change" => "人员变更申报",
        _ => "参保登记申报",
    }
}

pub fn state_label(state: &str) -> &'static str {
    match state {
        "declaring" => "申报处理中",
        "declared" => "已申报",
        "withdrawn" => "已撤回",
        "claimed" => "审核中",
        "approved" => "审核通过",
        "rejected" => "退回",
        "abandoned" => "未能申报",
        _ => "未知",
    }
}

/// The longest rejection reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// A rejection reason trimmed, or the violation that refuses it.
pub fn reason_of(raw: &str) -> Result<String, Violation> {
    let reason = raw.trim();
    if reason.is_empty() {
        return Err(Violation::new("reason", "reason_required", "请填写退回原因"));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(Violation::new(
            "reason",
            "reason_too_long",
            format!("退回原因不能超过{MAX_REASON_CHARS}个字（现为{}个字）", reason.chars().count()),
        ));
    }
    Ok(reason.to_owned())
}

/// How the reconciler runs (section `units.declarations`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct SagaConfig {
    /// A declaration left `declaring` this long is settled by the reconciler.
    #[serde(with = "kit::config::millis")]
    pub settle_after: Duration,
    /// How often the reconciler looks.
    #[serde(with = "kit::config::millis")]
    pub settle_every: Duration,
    /// How long declaring waits for personnel before leaving the declaration to the reconciler.
    #[serde(with = "kit::config::millis")]
    pub freeze_timeout: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            settle_after: Duration::from_secs(30),
            settle_every: Duration::from_secs(5),
            freeze_timeout: Duration::from_secs(10),
        }
    }
}

/// The declaration operations.
#[derive(Debug, Clone)]
pub struct Declarations {
    pub runtime: Runtime,
    pub sealer: kit::sealing::Sealer,
    pub namespace: Namespace,
    pub personnel: PersonnelClient<NatsChannel>,
    pub saga: SagaConfig,
    pub faults: Faults,
}

/// The sealed column of declarations, for `pension keys rotate`.
pub const DECLARATIONS_SEALED: kit::sealing::SealedTable = kit::sealing::SealedTable {
    table: "declarations",
    key: "declaration_id",
    key_type: "uuid",
    version: "key_version",
    sealed: &["unit_snapshot"],
};

#[derive(sqlx::FromRow)]
struct DeclarationRow {
    declaration_id: uuid::Uuid,
    institution_code: String,
    agency_code: String,
    state: String,
    created_at: OffsetDateTime,
    created_by: String,
    declared_at: Option<OffsetDateTime>,
    claimed_by: Option<String>,
    reason: Option<String>,
    unit_number: Option<String>,
    unit_snapshot: Option<Vec<u8>>,
    key_version: Option<i32>,
    unit_digest: Option<String>,
    roster_digest: Option<String>,
    accepted_warnings: serde_json::Value,
    staff_count: i32,
    retiree_pre_reform_count: i32,
    retiree_post_reform_count: i32,
    kind: String,
    add_count: i32,
    remove_count: i32,
    update_count: i32,
    unit_name: String,
}

const DECLARATION_COLUMNS: &str = "d.declaration_id, d.institution_code, d.agency_code, d.state, d.created_at, \
    d.created_by, d.declared_at, d.claimed_by, d.reason, d.unit_number, d.unit_snapshot, d.key_version, \
    d.unit_digest, d.roster_digest, d.accepted_warnings, d.staff_count, d.retiree_pre_reform_count, \
    d.retiree_post_reform_count, d.kind, d.add_count, d.remove_count, d.update_count, u.unit_name";

fn select_declarations(condition: &str) -> String {
    format!("select {DECLARATION_COLUMNS} from declarations d join units u using (institution_code) where {condition}")
}

#[derive(sqlx::FromRow)]
struct TransitionRow {
    from_state: Option<String>,
    to_state: String,
    actor: String,
    role: String,
    reason: Option<String>,
    unit_digest: Option<String>,
    roster_digest: Option<String>,
    at: OffsetDateTime,
}

/// The unit of a unit operator; anyone else is refused with `refusal`.
fn operator_unit(caller: &Caller, refusal: &str) -> Result<String, Status> {
    if caller.role != "unit_operator" || caller.institution_code.is_empty() {
        return Err(refuse(Code::PermissionDenied, "forbidden", refusal));
    }
    Ok(caller.institution_code.clone())
}

fn no_declaration() -> Status {
    refuse(Code::NotFound, "declaration_not_found", "没有找到该申报")
}

/// Whether personnel's refusal settles the saga back (the roster cannot be frozen), rather than a passing failure
/// to ask again about.
fn is_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::NotFound
            | Code::AlreadyExists
    )
}

/// A field of the unit record: its API name, its label, and how to read it as text.
type UnitField = (&'static str, &'static str, fn(&UnitRecord) -> String);

/// The unit record's fields a reviewer compares between two declarations.
const UNIT_FIELDS: [UnitField; 22] = [
    ("unit_type", "单位类型", |r| r.unit_type_code.clone()),
    ("credit_code", "统一社会信用代码", |r| r.credit_code.clone()),
    ("org_code", "组织机构代码", |r| r.org_code.clone()),
    ("region_code", "所属行政区划", |r| r.region_code.clone()),
    ("subordination", "隶属关系", |r| r.subordination.clone()),
    ("funding_source", "经费来源", |r| r.funding_source.clone()),
    ("legal_representative", "法定代表人（负责人）", |r| r.legal_representative.clone()),
    ("legal_representative_id_number", "法定代表人证件号码", |r| {
        r.legal_representative_id_number_masked.clone()
    }),
    ("address", "地址", |r| r.address.clone()),
    ("post_code", "邮政编码", |r| r.post_code.clone()),
    ("contact_name", "联系人", |r| r.contact_name.clone()),
    ("contact_phone", "联系电话", |r| r.contact_phone.clone()),
    ("email", "电子邮箱", |r| r.email.clone()),
    ("clerk_name", "社保专管员", |r| r.clerk_name.clone()),
    ("clerk_phone", "社保专管员电话", |r| r.clerk_phone.clone()),
    ("bank_name", "开户银行", |r| r.bank_name.clone()),
    ("bank_account_name", "户名", |r| r.bank_account_name.clone()),
    ("bank_account", "账号", |r| r.bank_account.clone()),
    ("administrative_posts", "行政编制数", |r| r.administrative_posts.map(|n| n.to_string()).unwrap_or_default()),
    ("institutional_posts", "事业编制数", |r| r.institutional_posts.map(|n| n.to_string()).unwrap_or_default()),
    ("logistics_posts", "工勤编制数", |r| r.logistics_posts.map(|n| n.to_string()).unwrap_or_default()),
    ("accepted_warnings", "已确认的提示", |r| r.accepted_warnings.join(",")),
];

/// The record's fields that differ between two snapshots.
pub fn unit_changes(before: &UnitRecord, after: &UnitRecord) -> Vec<FieldChange> {
    UNIT_FIELDS
        .iter()
        .filter_map(|(field, label, value)| {
            let (old, new) = (value(before), value(after));
            (old != new).then(|| FieldChange {
                field: (*field).to_owned(),
                label: (*label).to_owned(),
                before: old,
                after: new,
            })
        })
        .collect()
}

impl Declarations {
    fn system_caller(actor: &str) -> Caller {
        Caller { actor: actor.to_owned(), role: "system".into(), ..Caller::default() }
    }

    fn seal_record(&self, record: &UnitRecord) -> (Vec<u8>, String) {
        let encoded = record.encode_to_vec();
        let digest = hex(&Sha256::digest(&encoded));
        (self.sealer.seal(&base64::engine::general_purpose::STANDARD.encode(&encoded)), digest)
    }

    fn open_record(&self, row: &DeclarationRow) -> Result<Option<UnitRecord>, Status> {
        let (Some(sealed), Some(version)) = (&row.unit_snapshot, row.key_version) else { return Ok(None) };
        let broken = |what: &str| {
            tracing::error!(declaration_id = %row.declaration_id, what, "a declared unit record does not open");
            Status::internal("internal error")
        };
        let text = self.sealer.open(version, sealed).map_err(|_| broken("seal"))?;
        let encoded = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| broken("base64"))?;
        UnitRecord::decode(encoded.as_slice()).map(Some).map_err(|_| broken("encoding"))
    }

    /// Stores a transition, the unit's state that follows from it, its event and its audit record, in `transaction`.
    #[allow(clippy::too_many_arguments)]
    async fn record_transition(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        row: &DeclarationRow,
        from: Option<&str>,
        to: &str,
        reason: Option<&str>,
        unit_number: Option<&str>,
    ) -> Result<(), Status> {
        sqlx::query(
            "insert into declaration_transitions (declaration_id, institution_code, agency_code, from_state, to_state, \
             actor, role, reason, unit_digest, roster_digest) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(row.declaration_id)
        .bind(&row.institution_code)
        .bind(&row.agency_code)
        .bind(from)
        .bind(to)
        .bind(&actor.name)
        .bind(&actor.role)
        .bind(reason)
        .bind(&row.unit_digest)
        .bind(&row.roster_digest)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        // A change declaration leaves the unit approved throughout: only its roster changes, and only on approval.
        if row.kind == "initial" {
            sqlx::query(
                "update units set state = $2, unit_number = coalesce($3, unit_number) where institution_code = $1",
            )
            .bind(&row.institution_code)
            .bind(unit_state(to))
            .bind(unit_number)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        }
        if matches!(to, "declared" | "withdrawn" | "claimed" | "approved" | "rejected") {
            let event_id = kit::outbox::new_event_id();
            let event = DeclarationChanged {
                meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
                declaration_id: row.declaration_id.to_string(),
                institution_code: row.institution_code.clone(),
                unit_name: row.unit_name.clone(),
                agency_code: row.agency_code.clone(),
                state: to.to_owned(),
                reason: reason.unwrap_or_default().to_owned(),
                unit_number: unit_number.unwrap_or_default().to_owned(),
                unit_digest: row.unit_digest.clone().unwrap_or_default(),
                roster_digest: row.roster_digest.clone().unwrap_or_default(),
                kind: row.kind.clone(),
            };
            let subject = self.namespace.event_subject("units", &format!("declaration.{to}"));
            kit::outbox::enqueue(&mut *transaction, event_id, &subject, &event.encode_to_vec())
                .await
                .map_err(kit::db::status)?;
        }
        let object = format!("declaration:{}", row.declaration_id);
        let action = format!("declaration.{to}");
        let detail =
            serde_json::json!({ "unit": row.institution_code, "kind": row.kind, "from": from, "reason": reason });
        let record = audit::Record { actor, action: &action, object: &object, outcome: Outcome::Success, detail };
        audit::append(transaction, &record).await.map_err(kit::db::status)?;
        Ok(())
    }

    async fn audit_refusal(&self, actor: &Actor, action: &str, object: &str, status: &Status) {
        let detail = serde_json::json!({ "reason": kit::status::reason(status) });
        let record = audit::Record { actor, action, object, outcome: Outcome::Refused, detail };
        let result = match self.runtime.pool.acquire().await {
            Ok(mut connection) => audit::append(&mut connection, &record).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(%error, action, "cannot audit a refusal");
        }
    }

    /// Runs `operation`, auditing a refusal under `action`.
    async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        object: &str,
        operation: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let result = operation.await;
        if let Err(status) = &result
            && status.code() != Code::Internal
            && status.code() != Code::Unavailable
        {
            self.audit_refusal(&Actor::of(caller), action, object, status).await;
        }
        result
    }

    async fn locked_row(
        &self,
        transaction: &mut PgConnection,
        condition: &str,
        key: &str,
    ) -> Result<Option<DeclarationRow>, Status> {
        let query = format!("{} for update of d", select_declarations(condition));
        sqlx::query_as(sqlx::AssertSqlSafe(query)).bind(key).fetch_optional(transaction).await.map_err(kit::db::status)
    }

    /// 确认申报: the unit's first declaration (`kind` "" or "initial") or, once it was approved, a change
    /// declaration ("change").
    pub async fn declare(&self, caller: &Caller, kind: &str) -> Result<Declaration, Status> {
        let object = format!("unit:{}", caller.institution_code);
        self.audited(caller, "declaration.declare", &object, self.declare_once(caller, kind)).await
    }

    async fn declare_once(&self, caller: &Caller, kind: &str) -> Result<Declaration, Status> {
        let unit = operator_unit(caller, "只有本单位的经办员可以申报")?;
        let kind = match kind.trim() {
            "" | "initial" => "initial",
            "change" => "change",
            _ => {
                return Err(invalid(vec![Violation::new(
                    "kind",
                    "invalid_kind",
                    "申报类别只能是 initial（参保登记申报）或 change（人员变更申报）",
                )]));
            }
        };
        let actor = Actor::of(caller);
        let pool = &self.runtime.pool;
        let mut transaction = kit::db::begin_scoped(pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let state: Option<String> =
            sqlx::query_scalar("select state from units where institution_code = $1 for update")
                .bind(&unit)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        let Some(state) = state else {
            return Err(refuse(Code::NotFound, "unit_not_found", "单位的参保信息尚未建立，请重新登录后再试"));
        };
        match (kind, state.as_str()) {
            ("initial", "draft") | ("change", "approved") => {}
            ("initial", "approved") => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "already_approved",
                    "本单位已参保，无需再次申报；人员的增减和信息更正请办理人员变更申报",
                ));
            }
            ("change", "draft") => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "not_approved",
                    "本单位的参保登记尚未审核通过，审核通过后才能办理人员变更申报",
                ));
            }
            _ => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "already_declared",
                    format!("本单位已申报（{}），请勿重复申报", records::state_label(&state)),
                ));
            }
        }
        // The row is locked: the record read now is the one declared.
        let record = records::get(pool, &self.sealer, caller, "").await?;
        if !record.complete {
            return Err(refuse(
                Code::FailedPrecondition,
                "record_incomplete",
                "参保单位信息尚未填写完整，请先在“单位管理”中补全并保存",
            ));
        }
        let accepted: serde_json::Value =
            sqlx::query_scalar("select accepted_warnings from units where institution_code = $1")
                .bind(&unit)
                .fetch_one(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        let (sealed, unit_digest) = self.seal_record(&record);
        let declaration_id = kit::outbox::new_event_id();
        let inserted = sqlx::query(
            "insert into declarations (declaration_id, institution_code, agency_code, state, created_by, \
             unit_snapshot, key_version, unit_digest, accepted_warnings, kind) \
             values ($1, $2, $3, 'declaring', $4, $5, $6, $7, $8, $9)",
        )
        .bind(declaration_id)
        .bind(&unit)
        .bind(&record.agency_code)
        .bind(&actor.name)
        .bind(sealed)
        .bind(self.sealer.version())
        .bind(&unit_digest)
        .bind(accepted)
        .bind(kind)
        .execute(&mut *transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if kit::db::violates(&error, "declarations_one_active") => {
                return Err(refuse(Code::FailedPrecondition, "already_declared", "本单位已有进行中的申报"));
            }
            Err(error) => return Err(kit::db::status(error)),
        }
        let row = self.row_on(&mut transaction, declaration_id).await?.ok_or_else(no_declaration)?;
        self.record_transition(&mut transaction, &actor, &row, None, "declaring", None, None).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.faults.hit("declare.after_declaring")?;

        let frozen = self.freeze(&actor.name, &unit, declaration_id, kind).await;
        self.faults.hit("declare.after_freeze")?;
        self.settle(declaration_id, &unit, frozen, caller).await
    }

    /// Personnel's step: the whole roster for a first declaration, the open changes for a change declaration.
    async fn freeze(
        &self,
        actor: &str,
        unit: &str,
        declaration_id: uuid::Uuid,
        kind: &str,
    ) -> Result<RosterSnapshot, Status> {
        let mut request = tonic::Request::new(FreezeRosterRequest {
            caller: Some(Self::system_caller(actor)),
            institution_code: unit.to_owned(),
            declaration_id: declaration_id.to_string(),
            kind: if kind == "change" { "changes" } else { "roster" }.to_owned(),
        });
        request.set_timeout(self.saga.freeze_timeout);
        self.personnel.clone().freeze_roster(request).await.map(tonic::Response::into_inner)
    }

    /// Ends the saga with personnel's answer: declared with the roster's digest, abandoned when personnel refused
    /// (its refusal is returned), or left `declaring` for the reconciler when personnel did not answer.
    async fn settle(
        &self,
        declaration_id: uuid::Uuid,
        unit: &str,
        frozen: Result<RosterSnapshot, Status>,
        caller: &Caller,
    ) -> Result<Declaration, Status> {
        // The operator who declared, or the platform when the reconciler settles.
        let actor = if caller.actor.is_empty() {
            Actor { name: "system".into(), role: "system".into(), ..Actor::default() }
        } else {
            Actor::of(caller)
        };
        let (step, snapshot, refusal) = match frozen {
            Ok(snapshot) => (Step::Frozen, Some(snapshot), None),
            Err(status) if is_refusal(&status) => (Step::Refused, None, Some(status)),
            Err(status) => {
                tracing::warn!(%declaration_id, code = ?status.code(), "personnel did not freeze the roster: the reconciler settles it");
                return self.read(&Scope::unit(unit), declaration_id, caller).await;
            }
        };
        let mut transaction =
            kit::db::begin_scoped(&self.runtime.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let Some(mut row) =
            self.locked_row(&mut transaction, "d.declaration_id = $1::uuid", &declaration_id.to_string()).await?
        else {
            return Err(no_declaration());
        };
        if row.state == "declaring" {
            let to = next("declaring", step).unwrap_or("abandoned");
            let reason = refusal.as_ref().map(|status| status.message().to_owned());
            if let Some(snapshot) = &snapshot {
                row.roster_digest = Some(snapshot.digest.clone());
            }
            let count = |read: fn(&RosterSnapshot) -> u32| {
                snapshot.as_ref().map_or(0, |snapshot| i32::try_from(read(snapshot)).unwrap_or(i32::MAX))
            };
            sqlx::query(
                "update declarations set state = $2, declared_at = case when $2 = 'declared' then now() end, \
                 roster_digest = $3, reason = $4, staff_count = $5, retiree_pre_reform_count = $6, \
                 retiree_post_reform_count = $7, add_count = $8, remove_count = $9, update_count = $10 \
                 where declaration_id = $1",
            )
            .bind(declaration_id)
            .bind(to)
            .bind(&row.roster_digest)
            .bind(&reason)
            .bind(count(|s| s.staff_count))
            .bind(count(|s| s.retiree_pre_reform_count))
            .bind(count(|s| s.retiree_post_reform_count))
            .bind(count(|s| s.add_count))
            .bind(count(|s| s.remove_count))
            .bind(count(|s| s.update_count))
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            self.record_transition(&mut transaction, &actor, &row, Some("declaring"), to, reason.as_deref(), None)
                .await?;
            transaction.commit().await.map_err(kit::db::status)?;
            self.runtime.wake_relay();
        } else {
            transaction.commit().await.map_err(kit::db::status)?;
        }
        if let Some(status) = refusal {
            return Err(status);
        }
        self.read(&Scope::unit(unit), declaration_id, caller).await
    }

    /// The reconciler's pass: every declaration left `declaring` longer than `settle_after` is settled; returns how
    /// many were.
    pub async fn settle_unsettled(&self) -> Result<usize, Status> {
        let mut transaction = kit::db::begin_scoped(&self.runtime.pool, &Scope::All).await.map_err(kit::db::status)?;
        let unsettled: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
            "select declaration_id, institution_code, kind from declarations where state = 'declaring' \
             and created_at < now() - $1::interval order by created_at limit 100",
        )
        .bind(format!("{} milliseconds", self.saga.settle_after.as_millis()))
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let mut settled = 0;
        for (declaration_id, unit, kind) in unsettled {
            let frozen = self.freeze("system", &unit, declaration_id, &kind).await;
            if matches!(&frozen, Err(status) if !is_refusal(status)) {
                continue;
            }
            // A refusal settles the saga back: it is the outcome here, not a failure of the pass.
            match self.settle(declaration_id, &unit, frozen, &Caller::default()).await {
                Ok(_) => settled += 1,
                Err(status) if is_refusal(&status) => settled += 1,
                Err(status) => tracing::warn!(%declaration_id, %status, "cannot settle a declaration"),
            }
        }
        Ok(settled)
    }

    /// 申报撤回.
    pub async fn withdraw(&self, caller: &Caller) -> Result<Declaration, Status> {
        let object = format!("unit:{}", caller.institution_code);
        self.audited(caller, "declaration.withdraw", &object, self.withdraw_once(caller)).await
    }

    async fn withdraw_once(&self, caller: &Caller) -> Result<Declaration, Status> {
        let unit = operator_unit(caller, "只有本单位的经办员可以撤回申报")?;
        let actor = Actor::of(caller);
        let mut transaction =
            kit::db::begin_scoped(&self.runtime.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let condition = "d.institution_code = $1 and d.state in ('declaring', 'declared', 'claimed')";
        let Some(row) = self.locked_row(&mut transaction, condition, &unit).await? else {
            return Err(refuse(Code::FailedPrecondition, "nothing_to_withdraw", "本单位没有可撤回的申报"));
        };
        match row.state.as_str() {
            "declared" => {}
            "claimed" => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "already_claimed",
                    "经办机构已开始审核该申报，不能再撤回；如需修改请联系经办机构退回",
                ));
            }
            _ => {
                return Err(refuse(Code::FailedPrecondition, "still_declaring", "申报仍在处理中，请稍后再撤回"));
            }
        }
        self.move_to(&mut transaction, &actor, &row, Step::Withdraw, None, None).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.runtime.wake_relay();
        self.faults.hit("withdraw.after_commit")?;
        self.release(&actor.name, &unit, row.declaration_id).await;
        self.read(&Scope::unit(&unit), row.declaration_id, caller).await
    }

    /// Asks personnel to unlock the roster now; when this is lost, personnel's consumer of the event does it.
    async fn release(&self, actor: &str, unit: &str, declaration_id: uuid::Uuid) {
        let request = ReleaseRosterRequest {
            caller: Some(Self::system_caller(actor)),
            institution_code: unit.to_owned(),
            declaration_id: declaration_id.to_string(),
        };
        if let Err(status) = self.personnel.clone().release_roster(request).await {
            tracing::warn!(%declaration_id, code = ?status.code(), "roster not released at once: the event will");
        }
    }

    /// Asks personnel to make the approved declaration take effect now (the first enrolls the roster, a change
    /// declaration's changes are applied); when this is lost, personnel's consumer of the event does it.
    async fn apply(&self, actor: &str, unit: &str, declaration_id: uuid::Uuid) {
        let request = ApplyDeclarationRequest {
            caller: Some(Self::system_caller(actor)),
            institution_code: unit.to_owned(),
            declaration_id: declaration_id.to_string(),
        };
        if let Err(status) = self.personnel.clone().apply_declaration(request).await {
            tracing::warn!(%declaration_id, code = ?status.code(), "approval not applied at once: the event will");
        }
    }

    /// Moves a locked declaration one step and records it.
    async fn move_to(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        row: &DeclarationRow,
        step: Step,
        reason: Option<&str>,
        unit_number: Option<&str>,
    ) -> Result<(), Status> {
        let to = next(&row.state, step).ok_or_else(|| {
            refuse(
                Code::FailedPrecondition,
                "wrong_state",
                format!("该申报当前为“{}”，不能办理此操作", state_label(&row.state)),
            )
        })?;
        sqlx::query(
            "update declarations set state = $2, claimed_by = case when $2 = 'claimed' then $3 else claimed_by end, \
             reason = coalesce($4, reason), unit_number = coalesce($5, unit_number) where declaration_id = $1",
        )
        .bind(row.declaration_id)
        .bind(to)
        .bind(&actor.name)
        .bind(reason)
        .bind(unit_number)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        self.record_transition(transaction, actor, row, Some(&row.state), to, reason, unit_number).await
    }

    fn reviewer_scope(caller: &Caller) -> Result<Scope, Status> {
        match caller.role.as_str() {
            "agency_reviewer" if !caller.agency_code.is_empty() => {
                Ok(Scope::Agencies(vec![caller.agency_code.clone()]))
            }
            _ => Err(refuse(Code::PermissionDenied, "forbidden", "只有经办机构审核员可以审核申报")),
        }
    }

    /// A reviewer's step on a declaration of its agency: claim, approve or reject.
    pub async fn review(
        &self,
        caller: &Caller,
        declaration_id: &str,
        step: Step,
        reason: &str,
    ) -> Result<Declaration, Status> {
        let object = format!("declaration:{}", declaration_id.trim());
        let action = match step {
            Step::Claim => "declaration.claim",
            Step::Approve => "declaration.approve",
            _ => "declaration.reject",
        };
        self.audited(caller, action, &object, self.review_once(caller, declaration_id, step, reason)).await
    }

    async fn review_once(
        &self,
        caller: &Caller,
        declaration_id: &str,
        step: Step,
        reason: &str,
    ) -> Result<Declaration, Status> {
        let scope = Self::reviewer_scope(caller)?;
        let reason = match step {
            Step::Reject => Some(reason_of(reason).map_err(|violation| invalid(vec![violation]))?),
            _ => None,
        };
        let declaration_id: uuid::Uuid = declaration_id.trim().parse().map_err(|_| no_declaration())?;
        let actor = Actor::of(caller);
        let mut transaction = kit::db::begin_scoped(&self.runtime.pool, &scope).await.map_err(kit::db::status)?;
        let condition = "d.declaration_id = $1::uuid and d.agency_code = $2";
        let query = format!("{} for update of d", select_declarations(condition));
        let row: Option<DeclarationRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(declaration_id.to_string())
            .bind(&caller.agency_code)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let row = row.ok_or_else(no_declaration)?;
        if step != Step::Claim && row.state == "claimed" && row.claimed_by.as_deref() != Some(caller.actor.as_str()) {
            return Err(refuse(
                Code::FailedPrecondition,
                "claimed_by_another",
                format!("该申报由{}审核中", row.claimed_by.clone().unwrap_or_default()),
            ));
        }
        let unit_number = if step == Step::Approve && row.state == "claimed" {
            let number: String = sqlx::query_scalar(
                "select coalesce(unit_number, region_code || lpad(nextval('unit_numbers')::text, 6, '0')) \
                 from units where institution_code = $1",
            )
            .bind(&row.institution_code)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            Some(number)
        } else {
            None
        };
        self.move_to(&mut transaction, &actor, &row, step, reason.as_deref(), unit_number.as_deref()).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.runtime.wake_relay();
        match step {
            Step::Reject => self.release(&actor.name, &row.institution_code, declaration_id).await,
            Step::Approve => self.apply(&actor.name, &row.institution_code, declaration_id).await,
            _ => {}
        }
        self.read(&scope, declaration_id, caller).await
    }

    async fn row_on(
        &self,
        connection: &mut PgConnection,
        declaration_id: uuid::Uuid,
    ) -> Result<Option<DeclarationRow>, Status> {
        sqlx::query_as(sqlx::AssertSqlSafe(select_declarations("d.declaration_id = $1")))
            .bind(declaration_id)
            .fetch_optional(connection)
            .await
            .map_err(kit::db::status)
    }

    /// `GetDeclaration`: the unit operator its own unit's (the latest without an id), a reviewer its agency's, the
    /// province admin any; refused alike whether it is someone else's or does not exist.
    pub async fn get(&self, caller: &Caller, declaration_id: &str) -> Result<Declaration, Status> {
        let scope = match caller.role.as_str() {
            "unit_operator" if !caller.institution_code.is_empty() => Scope::unit(&caller.institution_code),
            "agency_reviewer" => Self::reviewer_scope(caller)?,
            // Printing reads the declared record to render the forms.
            "province_admin" | "system" => Scope::All,
            _ => return Err(refuse(Code::PermissionDenied, "forbidden", "无权查看申报")),
        };
        let declaration_id = match declaration_id.trim() {
            "" if caller.role == "unit_operator" => {
                let mut transaction =
                    kit::db::begin_scoped(&self.runtime.pool, &scope).await.map_err(kit::db::status)?;
                let latest: Option<uuid::Uuid> = sqlx::query_scalar(
                    "select declaration_id from declarations where institution_code = $1 \
                     order by created_at desc limit 1",
                )
                .bind(&caller.institution_code)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
                transaction.commit().await.map_err(kit::db::status)?;
                latest.ok_or_else(|| refuse(Code::NotFound, "not_declared", "本单位尚未申报"))?
            }
            raw => raw.parse().map_err(|_| no_declaration())?,
        };
        self.read(&scope, declaration_id, caller).await
    }

    /// A declaration in full, read within `scope`.
    async fn read(&self, scope: &Scope, declaration_id: uuid::Uuid, caller: &Caller) -> Result<Declaration, Status> {
        let mut transaction = kit::db::begin_scoped(&self.runtime.pool, scope).await.map_err(kit::db::status)?;
        let row = self.row_on(&mut transaction, declaration_id).await?.ok_or_else(no_declaration)?;
        let transitions: Vec<TransitionRow> = sqlx::query_as(
            "select from_state, to_state, actor, role, reason, unit_digest, roster_digest, at \
             from declaration_transitions where declaration_id = $1 order by seq",
        )
        .bind(declaration_id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let previous: Option<DeclarationRow> = sqlx::query_as(sqlx::AssertSqlSafe(select_declarations(
            "d.institution_code = $1 and d.state = 'rejected' and d.created_at < $2 and d.kind = $3 \
             order by d.created_at desc limit 1",
        )))
        .bind(&row.institution_code)
        .bind(row.created_at)
        .bind(&row.kind)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let mut declaration = self.summary(&row, caller);
        let record = self.open_record(&row)?;
        if let (Some(previous), Some(record)) = (&previous, &record) {
            declaration.previous_rejected_id = previous.declaration_id.to_string();
            if let Some(before) = self.open_record(previous)? {
                declaration.unit_changes = unit_changes(&before, record);
            }
        }
        declaration.unit_snapshot = record;
        declaration.history = transitions
            .into_iter()
            .map(|transition| Transition {
                from_state: transition.from_state.unwrap_or_default(),
                to_label: state_label(&transition.to_state).to_owned(),
                to_state: transition.to_state,
                actor: transition.actor,
                role: transition.role,
                reason: transition.reason.unwrap_or_default(),
                unit_digest: transition.unit_digest.unwrap_or_default(),
                roster_digest: transition.roster_digest.unwrap_or_default(),
                at: Some(timestamp(transition.at)),
            })
            .collect();
        Ok(declaration)
    }

    /// A declaration without its snapshot and history, with what `caller` may do to it.
    fn summary(&self, row: &DeclarationRow, caller: &Caller) -> Declaration {
        let count = |value: i32| u32::try_from(value).unwrap_or(0);
        let reviewer = caller.role == "agency_reviewer" && caller.agency_code == row.agency_code;
        let accepted_warnings = row
            .accepted_warnings
            .as_array()
            .map(|warnings| {
                warnings
                    .iter()
                    .map(|warning| AcceptedUnitWarning {
                        code: warning["code"].as_str().unwrap_or_default().to_owned(),
                        accepted_by: warning["accepted_by"].as_str().unwrap_or_default().to_owned(),
                        accepted_at: warning["accepted_at"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Declaration {
            declaration_id: row.declaration_id.to_string(),
            institution_code: row.institution_code.clone(),
            unit_name: row.unit_name.clone(),
            agency_code: row.agency_code.clone(),
            state: row.state.clone(),
            state_label: state_label(&row.state).to_owned(),
            created_at: Some(timestamp(row.created_at)),
            declared_at: row.declared_at.map(timestamp),
            declared_by: row.created_by.clone(),
            claimed_by: row.claimed_by.clone().unwrap_or_default(),
            reason: row.reason.clone().unwrap_or_default(),
            unit_number: row.unit_number.clone().unwrap_or_default(),
            unit_digest: row.unit_digest.clone().unwrap_or_default(),
            roster_digest: row.roster_digest.clone().unwrap_or_default(),
            staff_count: count(row.staff_count),
            retiree_pre_reform_count: count(row.retiree_pre_reform_count),
            retiree_post_reform_count: count(row.retiree_post_reform_count),
            history: Vec::new(),
            unit_snapshot: None,
            accepted_warnings,
            previous_rejected_id: String::new(),
            unit_changes: Vec::new(),
            can_withdraw: caller.role == "unit_operator" && row.state == "declared",
            can_claim: reviewer && row.state == "declared",
            can_decide: reviewer && row.state == "claimed" && row.claimed_by.as_deref() == Some(caller.actor.as_str()),
            kind: row.kind.clone(),
            kind_label: kind_label(&row.kind).to_owned(),
            add_count: count(row.add_count),
            remove_count: count(row.remove_count),
            update_count: count(row.update_count),
        }
    }

    /// `ListReviewQueue`: a reviewer's agency's declared and claimed declarations (the province admin's: every
    /// agency's), oldest first.
    pub async fn queue(
        &self,
        caller: &Caller,
        state: &str,
        page: u32,
        page_size: u32,
    ) -> Result<ListReviewQueueReply, Status> {
        let (scope, agency) = match caller.role.as_str() {
            "province_admin" => (Scope::All, String::new()),
            _ => (Self::reviewer_scope(caller)?, caller.agency_code.clone()),
        };
        let state = match state.trim() {
            "" => "",
            "declared" => "declared",
            "claimed" => "claimed",
            _ => {
                return Err(invalid(vec![Violation::new("state", "invalid_state", "状态只能是 declared 或 claimed")]));
            }
        };
        let page = page.max(1);
        let page_size = if page_size == 0 { 20 } else { page_size.min(100) };
        let condition = "d.state in ('declared', 'claimed') and ($1 = '' or d.state = $1) \
                         and ($2 = '' or d.agency_code = $2)";
        let mut transaction = kit::db::begin_scoped(&self.runtime.pool, &scope).await.map_err(kit::db::status)?;
        let total: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from declarations d where {condition}")))
                .bind(state)
                .bind(&agency)
                .fetch_one(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        let rows: Vec<DeclarationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{} order by d.declared_at, d.declaration_id limit $3 offset $4",
            select_declarations(condition)
        )))
        .bind(state)
        .bind(&agency)
        .bind(i64::from(page_size))
        .bind(i64::from((page - 1) * page_size))
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(ListReviewQueueReply {
            declarations: rows.iter().map(|row| self.summary(row, caller)).collect(),
            total: u32::try_from(total).unwrap_or(u32::MAX),
            page,
            page_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [&str; 7] = ["declaring", "declared", "withdrawn", "claimed", "approved", "rejected", "abandoned"];
    const STEPS: [Step; 6] = [Step::Frozen, Step::Refused, Step::Withdraw, Step::Claim, Step::Approve, Step::Reject];

    #[test]
    fn only_the_transitions_of_the_domain_are_allowed() {
        let allowed: Vec<(&str, Step, &str)> = STATES
            .iter()
            .flat_map(|state| STEPS.iter().filter_map(move |step| next(state, *step).map(|to| (*state, *step, to))))
            .collect();
        assert_eq!(
            allowed,
            vec![
                ("declaring", Step::Frozen, "declared"),
                ("declaring", Step::Refused, "abandoned"),
                ("declared", Step::Withdraw, "withdrawn"),
                ("declared", Step::Claim, "claimed"),
                ("claimed", Step::Approve, "approved"),
                ("claimed", Step::Reject, "rejected"),
            ]
        );
    }

    #[test]
    fn a_unit_is_editable_exactly_when_it_has_no_active_declaration_and_is_not_approved() {
        for state in STATES {
            assert_eq!(unit_state(state) == "draft", !is_active(state) && state != "approved", "{state}");
        }
    }

    #[test]
    fn a_reason_has_one_to_two_hundred_characters_after_trimming() {
        assert_eq!(reason_of("  ").expect_err("empty").code, "reason_required");
        assert_eq!(reason_of(" 缺少人员 ").expect("fits"), "缺少人员");
        assert!(reason_of(&"退".repeat(200)).is_ok());
        assert_eq!(reason_of(&"退".repeat(201)).expect_err("too long").code, "reason_too_long");
    }
}
