//! A unit's people: 校验 (the rules plus the population registry), 保存 (the same check again on the server,
//! warnings stored only when accepted, with who and when), 待办业务 (the list, numbers masked), editing and deleting
//! while the unit's roster is not locked by a pending declaration. Every change and every unmasking is audited.

use kit::audit::{self, Actor, Outcome};
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::common::Caller;
use proto::personnel::{
    AcceptedWarning, CheckReply, DeemedPeriod, Finding as FindingMessage, ListPersonsReply, Normalized, Person,
    PersonInput, PersonReply, PersonSummary,
};
use sqlx::{PgConnection, PgPool};
use time::{Date, OffsetDateTime};
use tonic::{Code, Status};

use crate::check::{self, Checked, Deemed, DeemedInput, Finding, Input, Values, kind_label};
use crate::codes::CodeLists;
use crate::population::{Answer, Registry};
use kit::convert::timestamp;
use kit::db::Scope;
use kit::idempotency::{Claim, Idempotency, Keys};
use kit::sealing::Sealer;

/// The columns of a [`PersonRow`].
macro_rules! person_columns {
    () => {
        "person_id, institution_code, kind, name, id_type, id_number_sealed, key_version, id_number_masked, sex, \
         birth_date, funding_form, ethnicity, work_start, joined_unit, personnel_status, establishment, post_rank, \
         wage_base::text, phone, address, retirement_date, retirement_category, monthly_pension::text, \
         pay_start_month, pay_bank, pay_account_masked, population_status, accepted_warnings, created_at, \
         updated_at, deemed_periods"
    };
}

/// What the people operations need.
#[derive(Debug, Clone)]
pub struct People {
    pub pool: PgPool,
    /// Where this service's events go.
    pub namespace: proto::names::Namespace,
    pub sealer: Sealer,
    pub codes: CodeLists,
    pub registry: Registry,
}

/// The sealed columns of people, for `pension keys rotate`.
pub const PERSONS_SEALED: kit::sealing::SealedTable = kit::sealing::SealedTable {
    table: "persons",
    key: "person_id",
    key_type: "uuid",
    version: "key_version",
    sealed: &["id_number_sealed", "pay_account_sealed"],
};

/// Warnings nobody needs to accept: the registry's silence is not the operator's doing, and is checked again later.
const SELF_RESOLVING_WARNINGS: [&str; 1] = ["population_unavailable"];

pub fn input_of(person: PersonInput) -> (Input, Vec<String>) {
    let input = Input {
        kind: person.kind,
        name: person.name,
        id_type: person.id_type,
        id_number: person.id_number,
        sex: person.sex,
        birth_date: person.birth_date,
        funding_form: person.funding_form,
        ethnicity: person.ethnicity,
        work_start: person.work_start,
        joined_unit: person.joined_unit,
        personnel_status: person.personnel_status,
        establishment: person.establishment,
        post_rank: person.post_rank,
        wage_base: person.wage_base,
        phone: person.phone,
        address: person.address,
        retirement_date: person.retirement_date,
        retirement_category: person.retirement_category,
        monthly_pension: person.monthly_pension,
        pay_start_month: person.pay_start_month,
        pay_bank: person.pay_bank,
        pay_account: person.pay_account,
        deemed_periods: person
            .deemed_periods
            .into_iter()
            .map(|row| DeemedInput {
                unit: row.unit,
                from: row.from,
                to: row.to,
                months: row.months,
                reason: row.reason,
            })
            .collect(),
    };
    (input, person.accepted_warnings)
}

fn finding_messages(findings: &[Finding]) -> Vec<FindingMessage> {
    findings
        .iter()
        .map(|finding| FindingMessage {
            field: finding.field.clone(),
            code: finding.code.clone(),
            message: finding.message.clone(),
        })
        .collect()
}

pub fn reply_of(checked: &Checked) -> CheckReply {
    CheckReply {
        ok: checked.errors.is_empty(),
        errors: finding_messages(&checked.errors),
        warnings: finding_messages(&checked.warnings),
        normalized: Some(Normalized {
            id_number: checked.normalized.0.clone(),
            sex: checked.normalized.1.clone(),
            birth_date: checked.normalized.2.clone(),
            name: checked.normalized.3.clone(),
        }),
    }
}

/// The unit a unit operator works on; other roles may read a unit they name (the province admin, "system").
pub fn unit_of(caller: &Caller, named: &str, write: bool) -> Result<String, Status> {
    match caller.role.as_str() {
        "unit_operator" if !caller.institution_code.is_empty() => Ok(caller.institution_code.clone()),
        "province_admin" | "system" if !write && !named.is_empty() => Ok(named.to_owned()),
        _ => Err(refuse(Code::PermissionDenied, "forbidden", "只有本单位的经办员可以办理人员登记")),
    }
}

/// The Idempotency-Keys of creates, by unit (`migrations/personnel/0004`).
pub const IDEMPOTENCY_KEYS: Keys = Keys { table: "idempotency_keys", owner_column: "institution_code" };

/// What the population registry's answer adds to a check: a warning, or (a deceased person) an error.
pub(crate) fn add_population_finding(checked: &mut Checked, answer: Answer) {
    let (field, code, message, error) = match answer {
        Answer::Found => return,
        Answer::NotFound => ("id_number", "population_not_found", "公安库不存在该人员，请核实证件号码", false),
        Answer::NameMismatch => ("name", "population_name_mismatch", "姓名与公安库登记的不一致，请核实", false),
        Answer::Deceased => ("id_number", "population_deceased", "公安库显示此人已死亡，不能参保登记", true),
        Answer::Pending => ("id_number", "population_unavailable", "公安库暂时无法校验，稍后将自动重新校验", false),
    };
    let finding = Finding { field: field.into(), code: code.into(), message: message.into() };
    if error { checked.errors.push(finding) } else { checked.warnings.push(finding) }
}

/// The values of a check that found no error, and the warnings it found as stored once accepted (with who and
/// when); refused when there are errors, or warnings not in `accepted`.
pub(crate) fn accepted_values(
    checked: &Checked,
    accepted: &[String],
    actor: &str,
) -> Result<(Values, Vec<serde_json::Value>), Status> {
    let Some(values) = checked.values.clone() else {
        let violations = checked
            .errors
            .iter()
            .map(|finding| Violation::new(&finding.field, &finding.code, &finding.message))
            .collect();
        return Err(invalid(violations));
    };
    let unaccepted: Vec<Violation> = checked
        .warnings
        .iter()
        .filter(|warning| !SELF_RESOLVING_WARNINGS.contains(&warning.code.as_str()))
        .filter(|warning| !accepted.contains(&warning.code))
        .map(|warning| Violation::new(&warning.field, &warning.code, &warning.message))
        .collect();
    if !unaccepted.is_empty() {
        return Err(kit::status::with_violations(
            Code::FailedPrecondition,
            "warnings_not_accepted",
            "有提示尚未确认：请核实后勾选确认，再保存",
            unaccepted,
        ));
    }
    let now = OffsetDateTime::now_utc();
    let accepted_warnings = checked
        .warnings
        .iter()
        .filter(|warning| !SELF_RESOLVING_WARNINGS.contains(&warning.code.as_str()))
        .map(|warning| {
            serde_json::json!({ "code": warning.code, "accepted_by": actor, "accepted_at": now.unix_timestamp() })
        })
        .collect();
    Ok((values, accepted_warnings))
}

/// The unit's agency and region as the unit's first login told them (empty when it has not logged in here yet).
async fn unit_place(connection: &mut PgConnection, unit: &str) -> Result<(String, String), Status> {
    let place: Option<(String, String)> =
        sqlx::query_as("select agency_code, region_code from unit_agencies where institution_code = $1")
            .bind(unit)
            .fetch_optional(connection)
            .await
            .map_err(kit::db::status)?;
    Ok(place.unwrap_or_default())
}

/// Adds an entry to a person's history (`person_history`), the ID number's blind index read from the person's row.
pub(crate) async fn history(
    connection: &mut PgConnection,
    person_id: uuid::Uuid,
    event: &str,
    actor: &str,
    reason: Option<&str>,
    declaration_id: Option<uuid::Uuid>,
) -> Result<(), Status> {
    sqlx::query(
        "insert into person_history (id_number_hmac, person_id, institution_code, event, actor, reason, \
         declaration_id) select id_number_hmac, person_id, institution_code, $2, $3, $4, $5 from persons \
         where person_id = $1",
    )
    .bind(person_id)
    .bind(event)
    .bind(actor)
    .bind(reason)
    .bind(declaration_id)
    .execute(connection)
    .await
    .map(|_| ())
    .map_err(kit::db::status)
}

/// Why a row was not written.
pub(crate) enum WriteError {
    /// The person's one active registration was taken by another save first.
    Taken,
    Database(Status),
}

pub(crate) fn not_found() -> Status {
    refuse(Code::NotFound, "person_not_found", "没有找到该人员")
}

impl People {
    pub(crate) async fn reference_wage(&self) -> Result<Option<String>, Status> {
        sqlx::query_scalar::<_, String>(
            "select monthly_amount::text from reference_wages where valid_from <= current_date \
             order by valid_from desc limit 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(kit::db::status)
    }

    /// 校验 with the population registry; `editing` is the person being edited, so it is no duplicate of itself.
    pub async fn check(
        &self,
        unit: &str,
        input: &Input,
        editing: Option<uuid::Uuid>,
    ) -> Result<(Checked, Answer), Status> {
        let today = OffsetDateTime::now_utc().date();
        let reference = self.reference_wage().await?;
        let mut checked = check::check(input, &self.codes, today, reference.as_deref());
        let mut answer = Answer::Pending;
        if let Some(values) = &checked.values {
            let index = self.sealer.index(&values.id_type, &values.id_number);
            if let Some(conflict) = self.registration_conflict(values, &index, unit, editing).await? {
                checked.errors.push(conflict);
            }
            if values.id_type == "01" {
                answer = self.registry.lookup(&[(values.id_number.clone(), values.name.clone())]).await[0];
                add_population_finding(&mut checked, answer);
            } else {
                answer = Answer::Found;
            }
            if !checked.errors.is_empty() {
                checked.values = None;
            }
        }
        Ok((checked, answer))
    }

    /// The error when the person is registered already: in the caller's unit, or in another unit, named only by the
    /// agency to contact. `active_registration` sees past row-level security and tells nothing more.
    pub(crate) async fn registration_conflict(
        &self,
        values: &Values,
        index: &[u8],
        unit: &str,
        editing: Option<uuid::Uuid>,
    ) -> Result<Option<Finding>, Status> {
        let found: Option<(bool, String, String)> =
            sqlx::query_as("select in_caller_unit, agency_code, agency_name from active_registration($1, $2, $3)")
                .bind(index)
                .bind(unit)
                .bind(editing)
                .fetch_optional(&self.pool)
                .await
                .map_err(kit::db::status)?;
        if found.as_ref().is_some_and(|(in_caller_unit, _, _)| !in_caller_unit) {
            // The holding agency's reviewer sees it and can end a stale registration (`conflicts::end`).
            sqlx::query("select record_registration_conflict($1, $2, $3, $4)")
                .bind(index)
                .bind(unit)
                .bind(&values.id_number_masked)
                .bind(&values.name)
                .execute(&self.pool)
                .await
                .map_err(kit::db::status)?;
        }
        Ok(found.map(|(in_caller_unit, agency_code, agency_name)| {
            if in_caller_unit {
                return Finding {
                    field: "id_number".into(),
                    code: "duplicate_in_unit".into(),
                    message: "本单位已登记此证件号码的人员，请在待办业务中打开修改".into(),
                };
            }
            let agency = match (agency_name.is_empty(), agency_code.is_empty()) {
                (false, _) => format!("{agency_name}（{agency_code}）"),
                (true, false) => format!("经办机构（代码{agency_code}）"),
                (true, true) => "所属经办机构".to_owned(),
            };
            Finding {
                field: "id_number".into(),
                code: "insured_elsewhere".into(),
                message: format!("此人已在本省其他单位参保登记，一人只能在一个单位参保；请联系{agency}核实后办理"),
            }
        }))
    }

    /// The refusal of a save that lost the race for a person to another save.
    pub(crate) async fn registration_taken(&self, values: &Values, unit: &str, editing: Option<uuid::Uuid>) -> Status {
        let index = self.sealer.index(&values.id_type, &values.id_number);
        match self.registration_conflict(values, &index, unit, editing).await {
            Ok(Some(finding)) => invalid(vec![Violation::new(&finding.field, &finding.code, &finding.message)]),
            Ok(None) => refuse(Code::Aborted, "conflict", "同一人员正被同时保存，请重试"),
            Err(status) => status,
        }
    }

    /// Refuses a direct change of the unit's people while a declaration holds them, and once the roster was
    /// approved (changes go through change declarations then).
    pub(crate) async fn roster_locked(&self, connection: &mut PgConnection, unit: &str) -> Result<(), Status> {
        let state = crate::roster::roster_state(connection, unit).await?;
        if state.locked_by.is_some() {
            return Err(refuse(
                Code::FailedPrecondition,
                "roster_locked",
                "本单位已申报，人员信息已锁定；如需修改请先申报撤回",
            ));
        }
        if state.enrolled {
            return Err(refuse(
                Code::FailedPrecondition,
                "roster_enrolled",
                "本单位人员名单已审核通过，人员的增减和信息更正请在“人员变更”中办理并申报",
            ));
        }
        Ok(())
    }

    /// 保存: a new person, or (with `person_id`) an edit. The whole check runs again here; errors refuse the save,
    /// and every warning must be accepted by its code.
    pub async fn save(
        &self,
        caller: &Caller,
        person_id: Option<uuid::Uuid>,
        input: Input,
        accepted: Vec<String>,
        idempotency: Option<&Idempotency>,
    ) -> Result<PersonReply, Status> {
        let unit = unit_of(caller, "", true)?;
        let Some(idempotency) = idempotency else {
            return self.save_once(caller, &unit, person_id, input, accepted, None).await;
        };
        if let Some(first) = self.first_answer(&unit, idempotency).await? {
            return Ok(first);
        }
        match self.save_once(caller, &unit, person_id, input, accepted, Some(idempotency)).await {
            Ok(reply) => Ok(reply),
            // A retry that checked while its first call was committing finds the person saved: the first answer
            // is its answer.
            Err(refused) => self.first_answer(&unit, idempotency).await?.ok_or(refused),
        }
    }

    async fn save_once(
        &self,
        caller: &Caller,
        unit: &str,
        person_id: Option<uuid::Uuid>,
        input: Input,
        accepted: Vec<String>,
        idempotency: Option<&Idempotency>,
    ) -> Result<PersonReply, Status> {
        let unit = unit.to_owned();
        let actor = Actor::of(caller);
        // Someone else's person, or no person, is not found before anything is checked.
        if let Some(person_id) = person_id {
            self.read(&unit, person_id, false).await?;
        }
        let object = format!("person:{}", person_id.map(|id| id.to_string()).unwrap_or_else(|| "new".into()));
        let action = if person_id.is_some() { "person.update" } else { "person.create" };
        // A roster closed to direct changes is said before the check, which would only ask for warnings to accept;
        // the transaction below decides under the lock.
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        if let Err(status) = self.roster_locked(&mut transaction, &unit).await {
            drop(transaction);
            self.audit_refusal(&actor, action, &object, &status).await;
            return Err(status);
        }
        transaction.commit().await.map_err(kit::db::status)?;
        let (checked, answer) = self.check(&unit, &input, person_id).await?;
        let (values, accepted_warnings) = match accepted_values(&checked, &accepted, &actor.name) {
            Ok(accepted) => accepted,
            Err(status) => {
                self.audit_refusal(&actor, action, &object, &status).await;
                return Err(status);
            }
        };
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        if let Some(idempotency) = idempotency {
            // Claimed first, so a retry of a call still in flight waits here for it rather than racing it.
            if IDEMPOTENCY_KEYS.claim(&mut transaction, idempotency).await? == Claim::Taken {
                drop(transaction);
                return self.first_answer(&unit, idempotency).await?.ok_or_else(kit::idempotency::in_flight);
            }
        }
        self.roster_locked(&mut transaction, &unit).await?;
        let editing = person_id.is_some();
        let person_id = person_id.unwrap_or_else(uuid::Uuid::now_v7);
        if editing {
            let exists: bool = sqlx::query_scalar(
                "select exists (select 1 from persons where person_id = $1 and institution_code = $2 for update)",
            )
            .bind(person_id)
            .bind(&unit)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            if !exists {
                return Err(not_found());
            }
        }
        match self.write(&mut transaction, &unit, person_id, &values, answer, &accepted_warnings, &actor).await {
            Ok(()) => {}
            Err(WriteError::Database(status)) => return Err(status),
            Err(WriteError::Taken) => {
                // Another save of the same person committed between this one's check and its write. The
                // transaction goes first: finding whom to name needs a connection, and a burst of such saves must
                // not hold the pool while they wait for one.
                drop(transaction);
                let status = self.registration_taken(&values, &unit, editing.then_some(person_id)).await;
                self.audit_refusal(&actor, action, &object, &status).await;
                return Err(status);
            }
        }
        if !editing {
            history(&mut transaction, person_id, "registered", &actor.name, None, None).await?;
            self.announce_registered(&mut transaction, &unit, &actor, &values.kind, 1, "save").await?;
        }
        let object = format!("person:{person_id}");
        let record = audit::Record {
            actor: &actor,
            action,
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "kind": values.kind, "id_number": values.id_number_masked,
                                        "accepted_warnings": accepted_warnings.len() }),
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        let person = self.read_on(&mut transaction, &unit, person_id, false).await?;
        let reply = PersonReply { person: Some(person), check: Some(reply_of(&checked)) };
        if let Some(idempotency) = idempotency {
            IDEMPOTENCY_KEYS.record(&mut transaction, idempotency, &reply).await?;
        }
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(reply)
    }

    /// The answer a key was first given, when the key was used before; the same key with another request is
    /// refused.
    async fn first_answer(&self, unit: &str, idempotency: &Idempotency) -> Result<Option<PersonReply>, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let first = IDEMPOTENCY_KEYS.first_answer(&mut transaction, idempotency).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(first)
    }

    /// Inserts or updates one row (the caller has made sure an updated row is the unit's).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write(
        &self,
        transaction: &mut PgConnection,
        unit: &str,
        person_id: uuid::Uuid,
        values: &Values,
        answer: Answer,
        accepted_warnings: &[serde_json::Value],
        actor: &Actor,
    ) -> Result<(), WriteError> {
        let population_status = if values.id_type == "01" { answer.as_str() } else { "not_applicable" };
        let sealed = self.sealer.seal(&values.id_number);
        let index = self.sealer.index(&values.id_type, &values.id_number);
        let account_sealed = values.pay_account.as_deref().map(|account| self.sealer.seal(account));
        let account_masked = values.pay_account.as_deref().map(check::mask_account);
        let money = |value: &Option<String>| value.clone();
        let result = sqlx::query(
            "insert into persons (person_id, institution_code, kind, name, id_type, id_number_sealed, id_number_hmac, \
             id_number_masked, key_version, sex, birth_date, funding_form, ethnicity, work_start, joined_unit, \
             personnel_status, establishment, post_rank, wage_base, phone, address, retirement_date, \
             retirement_category, monthly_pension, pay_start_month, pay_bank, pay_account_sealed, pay_account_masked, \
             population_status, accepted_warnings, created_by, updated_by, deemed_periods) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19::numeric, $20, \
             $21, $22, $23, $24::numeric, $25, $26, $27, $28, $29, $30, $31, $31, $32) \
             on conflict (person_id) do update set kind = excluded.kind, name = excluded.name, \
             id_type = excluded.id_type, id_number_sealed = excluded.id_number_sealed, \
             id_number_hmac = excluded.id_number_hmac, id_number_masked = excluded.id_number_masked, \
             key_version = excluded.key_version, sex = excluded.sex, birth_date = excluded.birth_date, \
             funding_form = excluded.funding_form, ethnicity = excluded.ethnicity, work_start = excluded.work_start, \
             joined_unit = excluded.joined_unit, personnel_status = excluded.personnel_status, \
             establishment = excluded.establishment, post_rank = excluded.post_rank, wage_base = excluded.wage_base, \
             phone = excluded.phone, address = excluded.address, retirement_date = excluded.retirement_date, \
             retirement_category = excluded.retirement_category, monthly_pension = excluded.monthly_pension, \
             pay_start_month = excluded.pay_start_month, pay_bank = excluded.pay_bank, \
             pay_account_sealed = excluded.pay_account_sealed, pay_account_masked = excluded.pay_account_masked, \
             population_status = excluded.population_status, accepted_warnings = excluded.accepted_warnings, \
             deemed_periods = excluded.deemed_periods, updated_at = now(), updated_by = excluded.updated_by \
             where persons.institution_code = excluded.institution_code",
        )
        .bind(person_id)
        .bind(unit)
        .bind(&values.kind)
        .bind(&values.name)
        .bind(&values.id_type)
        .bind(sealed)
        .bind(index)
        .bind(&values.id_number_masked)
        .bind(self.sealer.version())
        .bind(&values.sex)
        .bind(values.birth_date)
        .bind(&values.funding_form)
        .bind(&values.ethnicity)
        .bind(values.work_start)
        .bind(values.joined_unit)
        .bind(&values.personnel_status)
        .bind(&values.establishment)
        .bind(&values.post_rank)
        .bind(money(&values.wage_base))
        .bind(&values.phone)
        .bind(&values.address)
        .bind(values.retirement_date)
        .bind(&values.retirement_category)
        .bind(money(&values.monthly_pension))
        .bind(values.pay_start_month)
        .bind(&values.pay_bank)
        .bind(account_sealed)
        .bind(account_masked)
        .bind(population_status)
        .bind(serde_json::Value::Array(accepted_warnings.to_vec()))
        .bind(&actor.name)
        .bind(deemed_json(&values.deemed_periods))
        .execute(&mut *transaction)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if kit::db::violates(&error, "persons_one_active_registration") => Err(WriteError::Taken),
            Err(error) => Err(WriteError::Database(kit::db::status(error))),
        }
    }

    /// One person of the unit; with `unmask`, the full ID number, and the unmasking is audited.
    pub async fn read(&self, unit: &str, person_id: uuid::Uuid, unmask: bool) -> Result<Person, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let person = self.read_on(&mut transaction, unit, person_id, unmask).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(person)
    }

    /// One person of the unit, read on a connection whose transaction is scoped to the unit.
    pub(crate) async fn read_on(
        &self,
        connection: &mut PgConnection,
        unit: &str,
        person_id: uuid::Uuid,
        unmask: bool,
    ) -> Result<Person, Status> {
        let row: Option<PersonRow> = sqlx::query_as(concat!(
            "select ",
            person_columns!(),
            " from persons where person_id = $1 and institution_code = $2 and ended_at is null"
        ))
        .bind(person_id)
        .bind(unit)
        .fetch_optional(connection)
        .await
        .map_err(kit::db::status)?;
        self.person_of(row.ok_or_else(not_found)?, unmask)
    }

    /// Every person registered in the unit (not ended), by kind then name, on a connection scoped to the unit.
    pub async fn read_all_on(
        &self,
        connection: &mut PgConnection,
        unit: &str,
        unmask: bool,
    ) -> Result<Vec<Person>, Status> {
        let rows: Vec<PersonRow> = sqlx::query_as(concat!(
            "select ",
            person_columns!(),
            " from persons where institution_code = $1 and ended_at is null and not pending_add \
             order by kind desc, name, person_id"
        ))
        .bind(unit)
        .fetch_all(connection)
        .await
        .map_err(kit::db::status)?;
        rows.into_iter().map(|row| self.person_of(row, unmask)).collect()
    }

    fn person_of(&self, row: PersonRow, unmask: bool) -> Result<Person, Status> {
        let id_number = if unmask {
            self.sealer.open(row.key_version, &row.id_number_sealed).map_err(|error| {
                tracing::error!(%error, "cannot open a sealed ID number");
                Status::internal("internal error")
            })?
        } else {
            String::new()
        };
        Ok(row.into_person(&self.codes, id_number))
    }

    /// `getPerson`: the person in full for its own unit's operator; the unmasking is audited.
    pub async fn get(&self, caller: &Caller, person_id: &str) -> Result<Person, Status> {
        let unit = unit_of(caller, "", true)?;
        let person_id: uuid::Uuid = person_id.trim().parse().map_err(|_| not_found())?;
        let person = self.read(&unit, person_id, true).await?;
        let actor = Actor::of(caller);
        let object = format!("person:{person_id}");
        let record = audit::Record {
            actor: &actor,
            action: "person.unmask",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "field": "id_number" }),
        };
        let mut connection = self.pool.acquire().await.map_err(kit::db::status)?;
        audit::append(&mut connection, &record).await.map_err(kit::db::status)?;
        Ok(person)
    }

    /// 待办业务: the unit's people, newest change first, numbers masked.
    pub async fn list(
        &self,
        caller: &Caller,
        named_unit: &str,
        kind: &str,
        name: &str,
        page: u32,
        page_size: u32,
    ) -> Result<ListPersonsReply, Status> {
        let unit = unit_of(caller, named_unit, false)?;
        let page = page.max(1);
        let page_size = if page_size == 0 { 20 } else { page_size.min(100) };
        let name_filter = format!("%{}%", name.trim().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let total: i64 = sqlx::query_scalar(
            "select count(*) from persons where institution_code = $1 and ended_at is null and not pending_add \
                 and ($2 = '' or kind = $2) and name like $3",
        )
        .bind(&unit)
        .bind(kind.trim())
        .bind(&name_filter)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let rows: Vec<SummaryRow> = sqlx::query_as(
            "select person_id, kind, name, id_type, id_number_masked, sex, birth_date, population_status, updated_at \
                 from persons where institution_code = $1 and ended_at is null and not pending_add \
                 and ($2 = '' or kind = $2) and name like $3 \
                 order by updated_at desc, person_id limit $4 offset $5",
        )
        .bind(&unit)
        .bind(kind.trim())
        .bind(&name_filter)
        .bind(i64::from(page_size))
        .bind(i64::from((page - 1) * page_size))
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let persons = rows
            .into_iter()
            .map(|row| PersonSummary {
                person_id: row.person_id.to_string(),
                kind_label: kind_label(&row.kind).to_owned(),
                kind: row.kind,
                name: row.name,
                id_type: row.id_type,
                id_number_masked: row.id_number_masked,
                sex_label: sex_label(&row.sex).to_owned(),
                birth_date: row.birth_date.to_string(),
                population_status: row.population_status,
                updated_at: Some(timestamp(row.updated_at)),
            })
            .collect();
        Ok(ListPersonsReply { persons, total: u32::try_from(total).unwrap_or(u32::MAX), page, page_size })
    }

    pub async fn delete(&self, caller: &Caller, person_id: &str) -> Result<(), Status> {
        let unit = unit_of(caller, "", true)?;
        let actor = Actor::of(caller);
        let person_id: uuid::Uuid = person_id.trim().parse().map_err(|_| not_found())?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        self.roster_locked(&mut transaction, &unit).await?;
        let deleted: Option<(String, String)> = sqlx::query_as(
            "delete from persons where person_id = $1 and institution_code = $2 and ended_at is null \
             returning id_number_masked, kind",
        )
        .bind(person_id)
        .bind(&unit)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let Some((masked, kind)) = deleted else { return Err(not_found()) };
        let (agency_code, region_code) = unit_place(&mut transaction, &unit).await?;
        let event_id = kit::outbox::new_event_id();
        let event = proto::events::PersonDeleted {
            meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
            person_id: person_id.to_string(),
            institution_code: unit.clone(),
            agency_code,
            region_code,
            kind,
        };
        let subject = self.namespace.event_subject("personnel", "person_deleted");
        kit::outbox::enqueue(&mut transaction, event_id, &subject, &event.encode_to_vec())
            .await
            .map_err(kit::db::status)?;
        let object = format!("person:{person_id}");
        let record = audit::Record {
            actor: &actor,
            action: "person.delete",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "id_number": masked }),
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(())
    }

    /// Announces `count` people of `kind` saved to the unit's roster in the caller's transaction
    /// (`people_registered`): one event per transaction, whatever the count.
    pub(crate) async fn announce_registered(
        &self,
        transaction: &mut PgConnection,
        unit: &str,
        actor: &Actor,
        kind: &str,
        count: u32,
        source: &str,
    ) -> Result<(), Status> {
        if count == 0 {
            return Ok(());
        }
        let (agency_code, region_code) = unit_place(&mut *transaction, unit).await?;
        let event_id = kit::outbox::new_event_id();
        let mut event = proto::events::PeopleRegistered {
            meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
            institution_code: unit.to_owned(),
            agency_code,
            region_code,
            source: source.to_owned(),
            ..Default::default()
        };
        match kind {
            "retiree_pre_reform" => event.retiree_pre_reform = count,
            "retiree_post_reform" => event.retiree_post_reform = count,
            _ => event.staff = count,
        }
        let subject = self.namespace.event_subject("personnel", "people_registered");
        kit::outbox::enqueue(transaction, event_id, &subject, &event.encode_to_vec()).await.map_err(kit::db::status)
    }

    pub(crate) async fn audit_refusal(&self, actor: &Actor, action: &str, object: &str, status: &Status) {
        let detail = serde_json::json!({ "reason": kit::status::reason(status) });
        let record = audit::Record { actor, action, object, outcome: Outcome::Refused, detail };
        let result = match self.pool.acquire().await {
            Ok(mut connection) => audit::append(&mut connection, &record).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(%error, action, "cannot audit a refusal");
        }
    }

    /// Forgets idempotency keys older than a day; returns how many.
    pub async fn prune_idempotency_keys(&self) -> Result<u64, sqlx::Error> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await?;
        let pruned = IDEMPOTENCY_KEYS.prune(&mut transaction).await?;
        transaction.commit().await?;
        Ok(pruned)
    }

    /// Asks the registry again about people it did not answer for, a batch at a time; returns how many it settled.
    pub async fn recheck_pending(&self) -> Result<usize, sqlx::Error> {
        // The platform's own work, across every unit.
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await?;
        let rows: Vec<(uuid::Uuid, i32, Vec<u8>, String)> = sqlx::query_as(
            "select person_id, key_version, id_number_sealed, name from persons where population_status = 'pending' \
             order by updated_at limit $1",
        )
        .bind(i64::try_from(crate::population::MAX_BATCH).unwrap_or(1000))
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let people: Vec<(uuid::Uuid, String, String)> = rows
            .into_iter()
            .filter_map(|(person_id, version, sealed, name)| {
                Some((person_id, self.sealer.open(version, &sealed).ok()?, name))
            })
            .collect();
        if people.is_empty() {
            return Ok(0);
        }
        let queries: Vec<(String, String)> = people.iter().map(|(_, id, name)| (id.clone(), name.clone())).collect();
        let answers = self.registry.lookup(&queries).await;
        let mut settled = 0;
        for ((person_id, _, _), answer) in people.iter().zip(answers) {
            if answer == Answer::Pending {
                continue;
            }
            let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await?;
            sqlx::query(
                "update persons set population_status = $2 where person_id = $1 and population_status = 'pending'",
            )
            .bind(person_id)
            .bind(answer.as_str())
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            settled += 1;
        }
        Ok(settled)
    }
}

pub fn sex_label(sex: &str) -> &'static str {
    match sex {
        "1" => "男",
        "2" => "女",
        _ => "",
    }
}

/// A row of 待办业务.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    person_id: uuid::Uuid,
    kind: String,
    name: String,
    id_type: String,
    id_number_masked: String,
    sex: String,
    birth_date: Date,
    population_status: String,
    updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct PersonRow {
    person_id: uuid::Uuid,
    institution_code: String,
    kind: String,
    name: String,
    id_type: String,
    id_number_sealed: Vec<u8>,
    key_version: i32,
    id_number_masked: String,
    sex: String,
    birth_date: Date,
    funding_form: String,
    ethnicity: String,
    work_start: Option<Date>,
    joined_unit: Option<Date>,
    personnel_status: String,
    establishment: String,
    post_rank: Option<String>,
    wage_base: Option<String>,
    phone: Option<String>,
    address: Option<String>,
    retirement_date: Option<Date>,
    retirement_category: Option<String>,
    monthly_pension: Option<String>,
    pay_start_month: Option<Date>,
    pay_bank: Option<String>,
    pay_account_masked: Option<String>,
    population_status: String,
    accepted_warnings: serde_json::Value,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    deemed_periods: serde_json::Value,
}

pub(crate) fn month_text(month: Date) -> String {
    format!("{:04}-{:02}", month.year(), u8::from(month.month()))
}

/// 视同缴费年限 as the `deemed_periods` column keeps them.
pub(crate) fn deemed_json(periods: &[Deemed]) -> serde_json::Value {
    periods
        .iter()
        .map(|period| {
            serde_json::json!({ "unit": period.unit, "from": month_text(period.from), "to": month_text(period.to),
                "months": period.months, "reason": period.reason })
        })
        .collect()
}

pub(crate) fn deemed_of_json(stored: &serde_json::Value) -> Vec<DeemedPeriod> {
    let text = |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or_default().to_owned();
    stored
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| DeemedPeriod {
                    unit: text(row, "unit"),
                    from: text(row, "from"),
                    to: text(row, "to"),
                    months: row["months"].as_u64().map(|months| months.to_string()).unwrap_or_default(),
                    reason: text(row, "reason"),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PersonRow {
    fn into_person(self, _codes: &CodeLists, id_number: String) -> Person {
        let date = |value: Option<Date>| value.map(|date| date.to_string()).unwrap_or_default();
        let accepted_warnings = self
            .accepted_warnings
            .as_array()
            .map(|warnings| {
                warnings
                    .iter()
                    .map(|warning| AcceptedWarning {
                        code: warning["code"].as_str().unwrap_or_default().to_owned(),
                        accepted_by: warning["accepted_by"].as_str().unwrap_or_default().to_owned(),
                        accepted_at: warning["accepted_at"]
                            .as_i64()
                            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Person {
            person_id: self.person_id.to_string(),
            institution_code: self.institution_code,
            kind_label: kind_label(&self.kind).to_owned(),
            kind: self.kind,
            name: self.name,
            id_type: self.id_type,
            id_number,
            id_number_masked: self.id_number_masked,
            sex_label: sex_label(&self.sex).to_owned(),
            sex: self.sex,
            birth_date: self.birth_date.to_string(),
            funding_form: self.funding_form,
            ethnicity: self.ethnicity,
            work_start: date(self.work_start),
            joined_unit: date(self.joined_unit),
            personnel_status: self.personnel_status,
            establishment: self.establishment,
            post_rank: self.post_rank.unwrap_or_default(),
            wage_base: self.wage_base.unwrap_or_default(),
            phone: self.phone.unwrap_or_default(),
            address: self.address.unwrap_or_default(),
            retirement_date: date(self.retirement_date),
            retirement_category: self.retirement_category.unwrap_or_default(),
            monthly_pension: self.monthly_pension.unwrap_or_default(),
            pay_start_month: self.pay_start_month.map(month_text).unwrap_or_default(),
            pay_bank: self.pay_bank.unwrap_or_default(),
            pay_account_masked: self.pay_account_masked.unwrap_or_default(),
            population_status: self.population_status,
            accepted_warnings,
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            deemed_periods: deemed_of_json(&self.deemed_periods),
        }
    }
}
