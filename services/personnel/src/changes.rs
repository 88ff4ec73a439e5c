//! 人员变更: life after approval. Once a unit's first declaration is approved the unit is enrolled, and its roster
//! changes only through change declarations. The operator keeps a set of open changes — 增员 (a new person), 减员 (an
//! approved person leaves on a date for a reason; a retirement instead moves staff to the retiree kind of the
//! retirement date) and 变更 (an approved person's corrected fields) — each checked with exactly the rules of a
//! person. A change declaration freezes them (`People::freeze` with kind "changes"); its approval applies them here,
//! once, in one transaction, each into the person's history with the declaration.
//!
//! A 增员 is a person row from its first save (marked `pending_add`), as any saved person is, so it holds the one
//! registration of that person province-wide while it waits: an approval never meets a person meanwhile registered
//! elsewhere. 变更 and retirement keep their checked values sealed beside the change until approval.

use kit::audit::{self, Actor, Outcome};
use kit::convert::timestamp;
use kit::db::Scope;
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::common::Caller;
use proto::events::{PersonRegistrationEnded, RosterChangesApplied};
use proto::personnel::{
    CheckReply, DeemedPeriod, FieldDiff, Finding as FindingMessage, ListRosterChangesReply, Person, PersonInput,
    RosterChangeItem, SaveRosterChangeRequest,
};
use sqlx::PgConnection;
use time::{Date, OffsetDateTime};
use tonic::{Code, Status};

use crate::check::{DeemedInput, Finding, Input, REFORM_DATE, Values, kind_label, mask_account};
use crate::people::{
    People, WriteError, accepted_values, deemed_json, deemed_of_json, history, input_of, month_text, not_found,
    sex_label, unit_of,
};
use crate::population::Answer;
use crate::roster::{field_diffs, own_roster, roster_state};

/// The label of a change's action.
pub fn action_label(action: &str) -> &'static str {
    match action {
        "add" => "增员",
        "remove" => "减员",
        "update" => "变更",
        _ => "",
    }
}

/// What a 变更 or a retirement writes on approval, kept sealed until then.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    values: Values,
    population_status: String,
}

/// A change about to be stored.
struct Draft {
    action: &'static str,
    person_id: uuid::Uuid,
    kind: String,
    new_kind: String,
    name: String,
    id_number_masked: String,
    leave_date: Option<Date>,
    leave_reason: Option<String>,
    /// 增员: the person row to write now.
    added: Option<(Values, Answer)>,
    /// 变更 and retirement: what approval writes.
    pending: Option<Pending>,
    fields: Vec<FieldDiff>,
    warnings: Vec<Finding>,
    accepted_warnings: Vec<serde_json::Value>,
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    change_id: uuid::Uuid,
    person_id: uuid::Uuid,
    action: String,
    kind: String,
    new_kind: String,
    name: String,
    id_number_masked: String,
    leave_date: Option<Date>,
    leave_reason: Option<String>,
    values_sealed: Option<Vec<u8>>,
    key_version: Option<i32>,
    fields: serde_json::Value,
    findings: serde_json::Value,
    accepted_warnings: serde_json::Value,
    updated_at: OffsetDateTime,
    updated_by: String,
}

const CHANGE_COLUMNS: &str = "change_id, person_id, action, kind, new_kind, name, id_number_masked, leave_date, \
    leave_reason, values_sealed, key_version, fields, findings, accepted_warnings, updated_at, updated_by";

/// The sealed column of open changes, for `pension keys rotate`.
pub const CHANGES_SEALED: kit::sealing::SealedTable = kit::sealing::SealedTable {
    table: "roster_changes",
    key: "change_id",
    key_type: "uuid",
    version: "key_version",
    sealed: &["values_sealed"],
};

fn violation(field: &str, code: &str, message: impl Into<String>) -> Status {
    invalid(vec![Violation::new(field, code, message)])
}

fn no_change() -> Status {
    refuse(Code::NotFound, "change_not_found", "没有找到该人员变更")
}

/// The input a person's stored fields make, for checking them again with some changed (a retirement).
fn input_from_person(person: &Person) -> Input {
    Input {
        kind: person.kind.clone(),
        name: person.name.clone(),
        id_type: person.id_type.clone(),
        id_number: person.id_number.clone(),
        sex: person.sex.clone(),
        birth_date: person.birth_date.clone(),
        funding_form: person.funding_form.clone(),
        ethnicity: person.ethnicity.clone(),
        work_start: person.work_start.clone(),
        joined_unit: person.joined_unit.clone(),
        personnel_status: person.personnel_status.clone(),
        establishment: person.establishment.clone(),
        post_rank: person.post_rank.clone(),
        wage_base: person.wage_base.clone(),
        phone: person.phone.clone(),
        address: person.address.clone(),
        retirement_date: person.retirement_date.clone(),
        retirement_category: person.retirement_category.clone(),
        monthly_pension: person.monthly_pension.clone(),
        pay_start_month: person.pay_start_month.clone(),
        pay_bank: person.pay_bank.clone(),
        pay_account: String::new(),
        deemed_periods: person
            .deemed_periods
            .iter()
            .map(|period: &DeemedPeriod| DeemedInput {
                unit: period.unit.clone(),
                from: period.from.clone(),
                to: period.to.clone(),
                months: period.months.clone(),
                reason: period.reason.clone(),
            })
            .collect(),
    }
}

/// The person as `values` leave `base`: what a reviewer compares and the printed form shows.
fn person_after(base: &Person, values: &Values, population_status: &str) -> Person {
    let date = |value: Option<Date>| value.map(|date| date.to_string()).unwrap_or_default();
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    Person {
        kind: values.kind.clone(),
        kind_label: kind_label(&values.kind).to_owned(),
        name: values.name.clone(),
        id_type: values.id_type.clone(),
        id_number: values.id_number.clone(),
        id_number_masked: values.id_number_masked.clone(),
        sex: values.sex.clone(),
        sex_label: sex_label(&values.sex).to_owned(),
        birth_date: values.birth_date.to_string(),
        funding_form: values.funding_form.clone(),
        ethnicity: values.ethnicity.clone(),
        work_start: date(values.work_start),
        joined_unit: date(values.joined_unit),
        personnel_status: values.personnel_status.clone(),
        establishment: values.establishment.clone(),
        post_rank: text(&values.post_rank),
        wage_base: text(&values.wage_base),
        phone: text(&values.phone),
        address: text(&values.address),
        retirement_date: date(values.retirement_date),
        retirement_category: text(&values.retirement_category),
        monthly_pension: text(&values.monthly_pension),
        pay_start_month: values.pay_start_month.map(month_text).unwrap_or_default(),
        pay_bank: text(&values.pay_bank),
        pay_account_masked: values.pay_account.as_deref().map(mask_account).unwrap_or_default(),
        population_status: population_status.to_owned(),
        deemed_periods: deemed_of_json(&deemed_json(&values.deemed_periods)),
        ..base.clone()
    }
}

fn population_status_of(values: &Values, answer: Answer) -> String {
    if values.id_type == "01" { answer.as_str() } else { "not_applicable" }.to_owned()
}

fn findings_json(findings: &[Finding]) -> serde_json::Value {
    findings
        .iter()
        .map(|finding| serde_json::json!({ "field": finding.field, "code": finding.code, "message": finding.message }))
        .collect()
}

fn findings_of_json(stored: &serde_json::Value) -> Vec<FindingMessage> {
    let text = |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or_default().to_owned();
    stored
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| FindingMessage {
                    field: text(row, "field"),
                    code: text(row, "code"),
                    message: text(row, "message"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn diffs_json(diffs: &[FieldDiff]) -> serde_json::Value {
    diffs
        .iter()
        .map(|diff| {
            serde_json::json!({ "field": diff.field, "label": diff.label, "before": diff.before, "after": diff.after })
        })
        .collect()
}

fn diffs_of_json(stored: &serde_json::Value) -> Vec<FieldDiff> {
    let text = |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or_default().to_owned();
    stored
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| FieldDiff {
                    field: text(row, "field"),
                    label: text(row, "label"),
                    before: text(row, "before"),
                    after: text(row, "after"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses a change of the roster unless it was approved and no declaration holds it.
async fn changes_open(connection: &mut PgConnection, unit: &str) -> Result<(), Status> {
    let state = roster_state(connection, unit).await?;
    if !state.enrolled {
        return Err(refuse(
            Code::FailedPrecondition,
            "not_enrolled",
            "本单位的参保登记尚未审核通过；审核通过前请直接在人员登记中增加、修改或删除人员",
        ));
    }
    if state.locked_by.is_some() {
        return Err(refuse(Code::FailedPrecondition, "changes_locked", "人员变更已申报，如需修改请先申报撤回"));
    }
    Ok(())
}

impl People {
    /// `SaveRosterChange`: checks one change of the unit's approved roster and keeps it open for the next change
    /// declaration; a refusal is audited.
    pub async fn save_change(
        &self,
        caller: &Caller,
        request: SaveRosterChangeRequest,
    ) -> Result<RosterChangeItem, Status> {
        let unit = unit_of(caller, "", true)?;
        let actor = Actor::of(caller);
        let object = match request.person_id.trim() {
            "" => "person:new".to_owned(),
            person_id => format!("person:{person_id}"),
        };
        let result = self.save_change_once(&unit, &actor, request).await;
        if let Err(status) = &result
            && !matches!(status.code(), Code::Internal | Code::Unavailable)
        {
            self.audit_refusal(&actor, "roster_change.save", &object, status).await;
        }
        result
    }

    async fn save_change_once(
        &self,
        unit: &str,
        actor: &Actor,
        request: SaveRosterChangeRequest,
    ) -> Result<RosterChangeItem, Status> {
        let person_id = match request.person_id.trim() {
            "" => None,
            raw => Some(raw.parse::<uuid::Uuid>().map_err(|_| not_found())?),
        };
        let person = request.person.unwrap_or_default();
        let draft = match request.action.trim() {
            "add" => self.draft_add(unit, person_id, person, actor).await?,
            "update" => {
                let person_id = person_id.ok_or_else(|| violation("person_id", "required", "请选择要变更的人员"))?;
                self.draft_update(unit, person_id, person, actor).await?
            }
            "remove" => {
                let person_id = person_id.ok_or_else(|| violation("person_id", "required", "请选择要减员的人员"))?;
                self.draft_remove(unit, person_id, person, &request.leave_date, &request.leave_reason, actor).await?
            }
            _ => {
                return Err(violation(
                    "action",
                    "unknown_action",
                    "变更类型只能是 add（增员）、remove（减员）或 update（变更）",
                ));
            }
        };
        let change_id = self.store_change(unit, actor, draft).await?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let row = self.change_row(&mut transaction, unit, change_id).await?.ok_or_else(no_change)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(self.item_of(&row, None))
    }

    /// Whether the unit's person is an open 增员 (true) or on the approved roster (false); none when the unit has
    /// no such person (or the registration ended).
    async fn pending_add_on(
        &self,
        connection: &mut PgConnection,
        unit: &str,
        person_id: uuid::Uuid,
    ) -> Result<Option<bool>, Status> {
        sqlx::query_scalar(
            "select pending_add from persons where person_id = $1 and institution_code = $2 and ended_at is null \
             for update",
        )
        .bind(person_id)
        .bind(unit)
        .fetch_optional(connection)
        .await
        .map_err(kit::db::status)
    }

    /// A person on the unit's approved roster (not an open 增员), with the ID number in clear when `unmask`.
    async fn approved_person(&self, unit: &str, person_id: uuid::Uuid, unmask: bool) -> Result<Person, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        if self.pending_add_on(&mut transaction, unit, person_id).await? != Some(false) {
            return Err(not_found());
        }
        let person = self.read_on(&mut transaction, unit, person_id, unmask).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(person)
    }

    async fn draft_add(
        &self,
        unit: &str,
        person_id: Option<uuid::Uuid>,
        person: PersonInput,
        actor: &Actor,
    ) -> Result<Draft, Status> {
        if let Some(person_id) = person_id {
            let mut transaction =
                kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
            let pending = self.pending_add_on(&mut transaction, unit, person_id).await?;
            transaction.commit().await.map_err(kit::db::status)?;
            if pending != Some(true) {
                return Err(not_found());
            }
        }
        let (input, accepted) = input_of(person);
        let (checked, answer) = self.check(unit, &input, person_id).await?;
        let (values, accepted_warnings) = accepted_values(&checked, &accepted, &actor.name)?;
        Ok(Draft {
            action: "add",
            person_id: person_id.unwrap_or_else(uuid::Uuid::now_v7),
            kind: values.kind.clone(),
            new_kind: values.kind.clone(),
            name: values.name.clone(),
            id_number_masked: values.id_number_masked.clone(),
            leave_date: None,
            leave_reason: None,
            added: Some((values, answer)),
            pending: None,
            fields: Vec::new(),
            warnings: checked.warnings,
            accepted_warnings,
        })
    }

    async fn draft_update(
        &self,
        unit: &str,
        person_id: uuid::Uuid,
        person: PersonInput,
        actor: &Actor,
    ) -> Result<Draft, Status> {
        let base = self.approved_person(unit, person_id, true).await?;
        let (mut input, accepted) = input_of(person);
        if input.kind.trim().is_empty() {
            input.kind = base.kind.clone();
        }
        if input.kind.trim() != base.kind {
            return Err(violation("kind", "kind_unchanged", "变更不能改变人员类别；在职人员退休请办理减员（退休）"));
        }
        let (checked, answer) = self.check(unit, &input, Some(person_id)).await?;
        let (values, accepted_warnings) = accepted_values(&checked, &accepted, &actor.name)?;
        if values.id_type != base.id_type || values.id_number != base.id_number {
            return Err(violation(
                "id_number",
                "id_unchanged",
                "证件类型和证件号码不能通过变更更正；登记有误的，请先减员，再以正确的证件号码增员",
            ));
        }
        let population_status = population_status_of(&values, answer);
        let after = person_after(&base, &values, &population_status);
        let fields = field_diffs(&base, &after, &self.codes);
        if fields.is_empty() {
            return Err(violation("person", "nothing_changed", "没有更正任何信息"));
        }
        Ok(Draft {
            action: "update",
            person_id,
            kind: base.kind.clone(),
            new_kind: base.kind.clone(),
            name: values.name.clone(),
            id_number_masked: values.id_number_masked.clone(),
            leave_date: None,
            leave_reason: None,
            added: None,
            pending: Some(Pending { values, population_status }),
            fields,
            warnings: checked.warnings,
            accepted_warnings,
        })
    }

    async fn draft_remove(
        &self,
        unit: &str,
        person_id: uuid::Uuid,
        retiree: PersonInput,
        leave_date: &str,
        leave_reason: &str,
        actor: &Actor,
    ) -> Result<Draft, Status> {
        let base = self.approved_person(unit, person_id, true).await?;
        let mut problems = Vec::new();
        let reason = match leave_reason.trim() {
            "" => {
                problems.push(Violation::new("leave_reason", "required", "请选择减员原因"));
                None
            }
            raw => {
                let reason = self.codes.resolve("leave_reason", raw);
                if reason.is_none() {
                    problems.push(Violation::new(
                        "leave_reason",
                        "unknown_code",
                        format!("减员原因“{raw}”不在代码表中，请从列表中选择"),
                    ));
                }
                reason
            }
        };
        let today = OffsetDateTime::now_utc().date();
        let date = match leave_date.trim() {
            "" => {
                problems.push(Violation::new("leave_date", "required", "请填写减员日期"));
                None
            }
            raw => match validators::fields::parse_date(raw) {
                None => {
                    problems.push(Violation::new("leave_date", "invalid_date", "减员日期应为有效日期，如 2026-11-30"));
                    None
                }
                Some(date) if date > today => {
                    problems.push(Violation::new("leave_date", "in_future", "减员日期不能晚于今天"));
                    None
                }
                Some(date) => {
                    let joined = validators::fields::parse_date(&base.joined_unit);
                    if joined.is_some_and(|joined| date < joined) {
                        problems.push(Violation::new(
                            "leave_date",
                            "before_joining",
                            format!("减员日期不能早于进入本单位时间（{}）", base.joined_unit),
                        ));
                    }
                    Some(date)
                }
            },
        };
        if reason.as_deref() == Some("retirement") && base.kind != "staff" {
            problems.push(Violation::new("leave_reason", "not_staff", "只有在职人员可以因退休减员"));
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let (Some(reason), Some(date)) = (reason, date) else { return Err(invalid(problems)) };
        let mut draft = Draft {
            action: "remove",
            person_id,
            kind: base.kind.clone(),
            new_kind: base.kind.clone(),
            name: base.name.clone(),
            id_number_masked: base.id_number_masked.clone(),
            leave_date: Some(date),
            leave_reason: Some(reason.clone()),
            added: None,
            pending: None,
            fields: Vec::new(),
            warnings: Vec::new(),
            accepted_warnings: Vec::new(),
        };
        if reason != "retirement" {
            return Ok(draft);
        }
        // A retiree is checked whole, as if registered today: the approved person's fields, the retirement date of
        // the 减员, and the retiree's own fields as typed.
        let mut input = input_from_person(&base);
        input.kind = if date < REFORM_DATE { "retiree_pre_reform" } else { "retiree_post_reform" }.to_owned();
        input.retirement_date = date.to_string();
        input.retirement_category = retiree.retirement_category;
        input.monthly_pension = retiree.monthly_pension;
        input.pay_start_month = retiree.pay_start_month;
        input.pay_bank = retiree.pay_bank;
        input.pay_account = retiree.pay_account;
        let (checked, answer) = self.check(unit, &input, Some(person_id)).await?;
        let (values, accepted_warnings) = accepted_values(&checked, &retiree.accepted_warnings, &actor.name)?;
        let population_status = population_status_of(&values, answer);
        let after = person_after(&base, &values, &population_status);
        draft.fields = field_diffs(&base, &after, &self.codes);
        draft.new_kind = values.kind.clone();
        draft.pending = Some(Pending { values, population_status });
        draft.warnings = checked.warnings;
        draft.accepted_warnings = accepted_warnings;
        Ok(draft)
    }

    /// Stores a checked change in one transaction with its 增员's person row, replacing the person's open change;
    /// returns the change's id.
    async fn store_change(&self, unit: &str, actor: &Actor, draft: Draft) -> Result<uuid::Uuid, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        changes_open(&mut transaction, unit).await?;
        // What the drafts read outside the transaction still holds: the person is the kind of person the action
        // needs (an open 增员, or approved and not ended), and is locked until commit.
        let pending = self.pending_add_on(&mut transaction, unit, draft.person_id).await?;
        let expected = match draft.action {
            "add" => pending.is_none() || pending == Some(true),
            _ => pending == Some(false),
        };
        if !expected {
            return Err(not_found());
        }
        if let Some((values, answer)) = &draft.added {
            match self
                .write(&mut transaction, unit, draft.person_id, values, *answer, &draft.accepted_warnings, actor)
                .await
            {
                Ok(()) => {}
                Err(WriteError::Database(status)) => return Err(status),
                Err(WriteError::Taken) => {
                    drop(transaction);
                    return Err(self.registration_taken(values, unit, pending.map(|_| draft.person_id)).await);
                }
            }
            sqlx::query("update persons set pending_add = true where person_id = $1")
                .bind(draft.person_id)
                .execute(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
            if pending.is_none() {
                history(&mut transaction, draft.person_id, "registered", &actor.name, Some("增员"), None).await?;
            }
        }
        let sealed = match &draft.pending {
            Some(pending) => {
                let json = serde_json::to_string(pending).map_err(|error| {
                    tracing::error!(%error, "cannot encode a change's values");
                    Status::internal("internal error")
                })?;
                Some(self.sealer.seal(&json))
            }
            None => None,
        };
        let change_id: uuid::Uuid = sqlx::query_scalar(
            "insert into roster_changes (change_id, institution_code, person_id, action, kind, new_kind, name, \
             id_number_masked, leave_date, leave_reason, values_sealed, key_version, fields, findings, \
             accepted_warnings, created_by, updated_by) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16) \
             on conflict (person_id) where applied_at is null do update set action = excluded.action, \
             kind = excluded.kind, new_kind = excluded.new_kind, name = excluded.name, \
             id_number_masked = excluded.id_number_masked, leave_date = excluded.leave_date, \
             leave_reason = excluded.leave_reason, values_sealed = excluded.values_sealed, \
             key_version = excluded.key_version, fields = excluded.fields, findings = excluded.findings, \
             accepted_warnings = excluded.accepted_warnings, updated_at = now(), updated_by = excluded.updated_by \
             returning change_id",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(unit)
        .bind(draft.person_id)
        .bind(draft.action)
        .bind(&draft.kind)
        .bind(&draft.new_kind)
        .bind(&draft.name)
        .bind(&draft.id_number_masked)
        .bind(draft.leave_date)
        .bind(&draft.leave_reason)
        .bind(sealed)
        .bind(draft.pending.as_ref().map(|_| self.sealer.version()))
        .bind(diffs_json(&draft.fields))
        .bind(findings_json(&draft.warnings))
        .bind(serde_json::Value::Array(draft.accepted_warnings.clone()))
        .bind(&actor.name)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let object = format!("person:{}", draft.person_id);
        let record = audit::Record {
            actor,
            action: "roster_change.save",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "change": change_id, "action": draft.action, "id_number": draft.id_number_masked,
                "leave_reason": draft.leave_reason, "fields": draft.fields.iter().map(|diff| &diff.field).collect::<Vec<_>>() }),
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(change_id)
    }

    async fn change_row(
        &self,
        connection: &mut PgConnection,
        unit: &str,
        change_id: uuid::Uuid,
    ) -> Result<Option<ChangeRow>, Status> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {CHANGE_COLUMNS} from roster_changes where change_id = $1 and institution_code = $2"
        )))
        .bind(change_id)
        .bind(unit)
        .fetch_optional(connection)
        .await
        .map_err(kit::db::status)
    }

    async fn open_rows(&self, connection: &mut PgConnection, unit: &str) -> Result<Vec<ChangeRow>, Status> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {CHANGE_COLUMNS} from roster_changes where institution_code = $1 and applied_at is null \
             order by created_at, change_id"
        )))
        .bind(unit)
        .fetch_all(connection)
        .await
        .map_err(kit::db::status)
    }

    fn item_of(&self, row: &ChangeRow, person: Option<Person>) -> RosterChangeItem {
        let reason = row.leave_reason.clone().unwrap_or_default();
        let warnings = findings_of_json(&row.findings);
        RosterChangeItem {
            change_id: row.change_id.to_string(),
            action: row.action.clone(),
            action_label: action_label(&row.action).to_owned(),
            person_id: row.person_id.to_string(),
            name: row.name.clone(),
            id_number_masked: row.id_number_masked.clone(),
            kind: row.kind.clone(),
            kind_label: kind_label(&row.kind).to_owned(),
            new_kind: row.new_kind.clone(),
            new_kind_label: kind_label(&row.new_kind).to_owned(),
            leave_date: row.leave_date.map(|date| date.to_string()).unwrap_or_default(),
            leave_reason_label: self.codes.label("leave_reason", &reason).unwrap_or_default().to_owned(),
            leave_reason: reason,
            fields: diffs_of_json(&row.fields),
            person,
            check: Some(CheckReply { ok: true, errors: Vec::new(), warnings, normalized: None }),
            updated_at: Some(timestamp(row.updated_at)),
            updated_by: row.updated_by.clone(),
        }
    }

    fn pending_of(&self, row: &ChangeRow) -> Result<Option<Pending>, Status> {
        let (Some(sealed), Some(version)) = (&row.values_sealed, row.key_version) else { return Ok(None) };
        let broken = |what: &str| {
            tracing::error!(change_id = %row.change_id, what, "a change's values do not open");
            Status::internal("internal error")
        };
        let json = self.sealer.open(version, sealed).map_err(|_| broken("seal"))?;
        serde_json::from_str(&json).map(Some).map_err(|_| broken("encoding"))
    }

    /// `ListRosterChanges`: the unit operator's open changes, oldest first.
    pub async fn list_changes(&self, caller: &Caller) -> Result<ListRosterChangesReply, Status> {
        let unit = unit_of(caller, "", true)?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let (locked_by, enrolled): (Option<String>, bool) = sqlx::query_as(
            "select (select declaration_id from roster_locks where institution_code = $1), \
             exists (select 1 from enrolled_units where institution_code = $1)",
        )
        .bind(&unit)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let rows = self.open_rows(&mut transaction, &unit).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(ListRosterChangesReply {
            items: rows.iter().map(|row| self.item_of(row, None)).collect(),
            enrolled,
            locked_by: locked_by.unwrap_or_default(),
        })
    }

    /// `DeleteRosterChange`: drops an open change; a 增员's person goes with it.
    pub async fn delete_change(&self, caller: &Caller, change_id: &str) -> Result<(), Status> {
        let unit = unit_of(caller, "", true)?;
        let actor = Actor::of(caller);
        let change_id: uuid::Uuid = change_id.trim().parse().map_err(|_| no_change())?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        changes_open(&mut transaction, &unit).await?;
        let dropped: Option<(uuid::Uuid, String, String)> = sqlx::query_as(
            "delete from roster_changes where change_id = $1 and institution_code = $2 and applied_at is null \
             returning person_id, action, id_number_masked",
        )
        .bind(change_id)
        .bind(&unit)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let Some((person_id, action, masked)) = dropped else { return Err(no_change()) };
        if action == "add" {
            history(&mut transaction, person_id, "ended", &actor.name, Some("未申报的增员已删除"), None).await?;
            sqlx::query("delete from persons where person_id = $1 and pending_add")
                .bind(person_id)
                .execute(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        }
        let object = format!("person:{person_id}");
        let record = audit::Record {
            actor: &actor,
            action: "roster_change.delete",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "change": change_id, "action": action, "id_number": masked }),
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(())
    }

    /// The unit's open changes as a change declaration freezes them, each with the person as the change leaves
    /// them (ID numbers in clear: the snapshot is sealed). A change whose person's registration ended meanwhile
    /// (a reviewer ended it) is left out.
    pub(crate) async fn frozen_changes(
        &self,
        connection: &mut PgConnection,
        unit: &str,
    ) -> Result<Vec<RosterChangeItem>, Status> {
        let rows = self.open_rows(&mut *connection, unit).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let base = match self.read_on(&mut *connection, unit, row.person_id, true).await {
                Ok(person) => person,
                Err(status) if status.code() == Code::NotFound => continue,
                Err(status) => return Err(status),
            };
            let person = match self.pending_of(&row)? {
                Some(pending) => person_after(&base, &pending.values, &pending.population_status),
                None => base,
            };
            items.push(self.item_of(&row, Some(person)));
        }
        Ok(items)
    }

    /// `ApplyDeclaration`: an approved declaration takes effect, once. A first declaration enrolls the unit; a
    /// change declaration's frozen changes are applied. Returns false when it had taken effect before.
    pub async fn apply(&self, caller: &Caller, unit: &str, declaration_id: &str) -> Result<bool, Status> {
        if caller.role != "system" {
            return Err(refuse(Code::PermissionDenied, "forbidden", "只有平台自身可以使审核通过的申报生效"));
        }
        let declaration_id: uuid::Uuid = declaration_id
            .trim()
            .parse()
            .map_err(|_| refuse(Code::InvalidArgument, "invalid_declaration_id", "申报编号格式不正确"))?;
        let actor = Actor::of(caller);
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        // Exclusive with every change of the unit's people, so nothing is saved between reading and applying.
        own_roster(&mut transaction, unit).await?;
        let applied: bool =
            sqlx::query_scalar("select exists (select 1 from applied_declarations where declaration_id = $1)")
                .bind(declaration_id)
                .fetch_one(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        if applied {
            transaction.commit().await.map_err(kit::db::status)?;
            return Ok(false);
        }
        let Some(snapshot) = self.snapshot_row(&mut transaction, declaration_id).await? else {
            return Err(refuse(Code::NotFound, "declaration_not_found", "没有找到该申报的人员名单"));
        };
        if snapshot.institution_code != unit {
            return Err(refuse(Code::FailedPrecondition, "declaration_of_another_unit", "该申报属于另一单位"));
        }
        let detail = if snapshot.kind == "changes" {
            self.apply_changes(&mut transaction, &actor, unit, declaration_id, &snapshot).await?
        } else {
            self.enroll(&mut transaction, &actor, unit, declaration_id).await?
        };
        sqlx::query("delete from roster_locks where institution_code = $1 and declaration_id = $2")
            .bind(unit)
            .bind(declaration_id.to_string())
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        sqlx::query(
            "insert into applied_declarations (declaration_id, institution_code, applied_by) values ($1, $2, $3)",
        )
        .bind(declaration_id)
        .bind(unit)
        .bind(&actor.name)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let object = format!("declaration:{declaration_id}");
        let record = audit::Record {
            actor: &actor,
            action: "declaration.apply",
            object: &object,
            outcome: Outcome::Success,
            detail,
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(true)
    }

    /// The first declaration's roster is approved: the unit is enrolled and each person's history says by which
    /// declaration.
    async fn enroll(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        unit: &str,
        declaration_id: uuid::Uuid,
    ) -> Result<serde_json::Value, Status> {
        sqlx::query(
            "insert into enrolled_units (institution_code, declaration_id) values ($1, $2) \
             on conflict (institution_code) do nothing",
        )
        .bind(unit)
        .bind(declaration_id)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let approved = sqlx::query(
            "insert into person_history (id_number_hmac, person_id, institution_code, event, actor, declaration_id) \
             select id_number_hmac, person_id, institution_code, 'approved', $2, $3 from persons \
             where institution_code = $1 and ended_at is null and not pending_add",
        )
        .bind(unit)
        .bind(&actor.name)
        .bind(declaration_id)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?
        .rows_affected();
        let persons: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
            "select person_id, id_number_masked, kind from persons \
             where institution_code = $1 and ended_at is null and not pending_add order by person_id",
        )
        .bind(unit)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        self.announce_enrolled(transaction, actor, unit, declaration_id, &persons).await?;
        Ok(serde_json::json!({ "unit": unit, "kind": "initial", "persons": approved }))
    }

    /// One PersonEnrolled event per person who went on the approved roster, in the applying transaction; written
    /// with one statement, since a first roster can hold thousands.
    async fn announce_enrolled(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        unit: &str,
        declaration_id: uuid::Uuid,
        persons: &[(uuid::Uuid, String, String)],
    ) -> Result<(), Status> {
        let subject = self.namespace.event_subject("personnel", "person_enrolled");
        let (mut ids, mut payloads) = (Vec::with_capacity(persons.len()), Vec::with_capacity(persons.len()));
        for (person_id, masked, kind) in persons {
            let event_id = kit::outbox::new_event_id();
            let event = proto::events::PersonEnrolled {
                meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
                person_id: person_id.to_string(),
                institution_code: unit.to_owned(),
                id_number_masked: masked.clone(),
                kind: kind.clone(),
                declaration_id: declaration_id.to_string(),
            };
            ids.push(event_id);
            payloads.push(event.encode_to_vec());
        }
        kit::outbox::enqueue_many(transaction, &subject, &ids, &payloads).await.map_err(kit::db::status)
    }

    /// Applies a change declaration's frozen changes, each into its person's history with the declaration.
    async fn apply_changes(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        unit: &str,
        declaration_id: uuid::Uuid,
        snapshot: &crate::roster::SnapshotRow,
    ) -> Result<serde_json::Value, Status> {
        let items = self.change_items_of(snapshot)?;
        let (mut added, mut removed, mut updated, mut retired) = (0_u32, 0_u32, 0_u32, 0_u32);
        let mut enrolled = Vec::new();
        for item in &items {
            let change_id: uuid::Uuid = item.change_id.parse().map_err(|_| Status::internal("internal error"))?;
            let Some(row) = self.change_row(&mut *transaction, unit, change_id).await? else {
                tracing::warn!(%change_id, "a frozen change is gone: nothing to apply");
                continue;
            };
            // A registration ended meanwhile (by its agency's reviewer) takes no change any more.
            let Some(pending_add) = self.pending_add_on(&mut *transaction, unit, row.person_id).await? else {
                continue;
            };
            let reason = self.codes.label("leave_reason", row.leave_reason.as_deref().unwrap_or_default());
            match (row.action.as_str(), self.pending_of(&row)?) {
                ("add", _) if pending_add => {
                    sqlx::query("update persons set pending_add = false where person_id = $1")
                        .bind(row.person_id)
                        .execute(&mut *transaction)
                        .await
                        .map_err(kit::db::status)?;
                    history(
                        &mut *transaction,
                        row.person_id,
                        "approved",
                        &actor.name,
                        Some("增员"),
                        Some(declaration_id),
                    )
                    .await?;
                    enrolled.push((row.person_id, row.id_number_masked.clone(), row.kind.clone()));
                    added += 1;
                }
                ("update" | "remove", Some(pending)) => {
                    let accepted: Vec<serde_json::Value> =
                        row.accepted_warnings.as_array().cloned().unwrap_or_default();
                    let answer = Answer::parse(&pending.population_status);
                    match self
                        .write(&mut *transaction, unit, row.person_id, &pending.values, answer, &accepted, actor)
                        .await
                    {
                        Ok(()) => {}
                        Err(WriteError::Database(status)) => return Err(status),
                        // The ID number stays the same in a 变更 and a retirement, so the person's own registration
                        // is the only one it can meet.
                        Err(WriteError::Taken) => return Err(Status::internal("internal error")),
                    }
                    let (event, why) =
                        if row.action == "update" { ("changed", "变更") } else { ("retired", "退休") };
                    history(&mut *transaction, row.person_id, event, &actor.name, Some(why), Some(declaration_id))
                        .await?;
                    if row.action == "update" { updated += 1 } else { retired += 1 }
                }
                ("remove", None) => {
                    let why = reason.unwrap_or("减员").to_owned();
                    sqlx::query(
                        "update persons set ended_at = now(), left_on = $2, end_reason = $3 where person_id = $1",
                    )
                    .bind(row.person_id)
                    .bind(row.leave_date)
                    .bind(&why)
                    .execute(&mut *transaction)
                    .await
                    .map_err(kit::db::status)?;
                    history(&mut *transaction, row.person_id, "ended", &actor.name, Some(&why), Some(declaration_id))
                        .await?;
                    let event_id = kit::outbox::new_event_id();
                    let event = PersonRegistrationEnded {
                        meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
                        person_id: row.person_id.to_string(),
                        institution_code: unit.to_owned(),
                        id_number_masked: row.id_number_masked.clone(),
                        reason: why,
                    };
                    let subject = self.namespace.event_subject("personnel", "person_registration_ended");
                    kit::outbox::enqueue(&mut *transaction, event_id, &subject, &event.encode_to_vec())
                        .await
                        .map_err(kit::db::status)?;
                    removed += 1;
                }
                // An 增员 already on the roster, or a change without its values: nothing left to write, and one odd
                // change must not hold the approval back.
                _ => tracing::warn!(%change_id, action = row.action, "a frozen change has nothing to apply"),
            }
            sqlx::query("update roster_changes set applied_at = now(), declaration_id = $2 where change_id = $1")
                .bind(change_id)
                .bind(declaration_id)
                .execute(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        }
        self.announce_enrolled(transaction, actor, unit, declaration_id, &enrolled).await?;
        let event_id = kit::outbox::new_event_id();
        let event = RosterChangesApplied {
            meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
            declaration_id: declaration_id.to_string(),
            institution_code: unit.to_owned(),
            added,
            removed: removed + retired,
            updated,
            retired,
        };
        let subject = self.namespace.event_subject("personnel", "roster_changes_applied");
        kit::outbox::enqueue(&mut *transaction, event_id, &subject, &event.encode_to_vec())
            .await
            .map_err(kit::db::status)?;
        Ok(serde_json::json!({ "unit": unit, "kind": "change", "added": added, "removed": removed,
            "retired": retired, "updated": updated }))
    }
}
