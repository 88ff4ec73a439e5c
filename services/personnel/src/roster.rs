//! Declared rosters: personnel's step of the declaration saga. Freezing locks a unit's people and stores, in the
//! same transaction, an unchangeable snapshot of every person under the declaration id with its digest; releasing
//! unlocks them when the declaration is withdrawn or rejected. Freezing and every change of a person exclude each
//! other through a per-unit advisory lock, so a snapshot never misses a save that found the roster open.

use base64::Engine as _;
use kit::audit::{self, Actor, Outcome};
use kit::convert::{hex, timestamp};
use kit::db::Scope;
use kit::status::refuse;
use prost::Message as _;
use proto::common::Caller;
use proto::personnel::{FrozenRoster, Person, RosterChange, RosterSnapshot};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::people::People;

/// The sealed column of snapshots, for `pension keys rotate`.
pub const SNAPSHOTS_SEALED: kit::sealing::SealedTable = kit::sealing::SealedTable {
    table: "roster_snapshots",
    key: "declaration_id",
    key_type: "uuid",
    version: "key_version",
    sealed: &["snapshot_sealed"],
};

/// The per-unit advisory lock key; the namespace keeps it apart from any other advisory lock of the database.
const ROSTER_LOCK_SQL: &str = "hashtextextended('roster:' || $1, 0)";

/// Takes the unit's roster lock shared, for the rest of the transaction: changes of people run side by side.
pub async fn share_roster(connection: &mut PgConnection, unit: &str) -> Result<(), Status> {
    sqlx::query(sqlx::AssertSqlSafe(format!("select pg_advisory_xact_lock_shared({ROSTER_LOCK_SQL})")))
        .bind(unit)
        .execute(connection)
        .await
        .map(|_| ())
        .map_err(kit::db::status)
}

async fn own_roster(connection: &mut PgConnection, unit: &str) -> Result<(), Status> {
    sqlx::query(sqlx::AssertSqlSafe(format!("select pg_advisory_xact_lock({ROSTER_LOCK_SQL})")))
        .bind(unit)
        .execute(connection)
        .await
        .map(|_| ())
        .map_err(kit::db::status)
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    declaration_id: uuid::Uuid,
    institution_code: String,
    snapshot_sealed: Vec<u8>,
    key_version: i32,
    digest: String,
    staff_count: i32,
    retiree_pre_reform_count: i32,
    retiree_post_reform_count: i32,
    frozen_at: OffsetDateTime,
}

fn declaration_id_of(raw: &str) -> Result<uuid::Uuid, Status> {
    raw.trim().parse().map_err(|_| refuse(Code::InvalidArgument, "invalid_declaration_id", "申报编号格式不正确"))
}

fn only_the_platform(caller: &Caller) -> Result<(), Status> {
    if caller.role == "system" {
        return Ok(());
    }
    Err(refuse(Code::PermissionDenied, "forbidden", "只有平台自身可以锁定或解锁人员名单"))
}

fn count(persons: &[Person], kind: &str) -> i32 {
    i32::try_from(persons.iter().filter(|person| person.kind == kind).count()).unwrap_or(i32::MAX)
}

/// A field of a person: its label and how to read it.
type PersonField = (&'static str, fn(&Person) -> &str);

/// The fields a reviewer compares between two declarations.
const COMPARED: [PersonField; 18] = [
    ("姓名", |p| &p.name),
    ("证件类型", |p| &p.id_type),
    ("证件号码", |p| &p.id_number),
    ("经费补助形式", |p| &p.funding_form),
    ("民族", |p| &p.ethnicity),
    ("参加工作时间", |p| &p.work_start),
    ("进入本单位时间", |p| &p.joined_unit),
    ("人员身份", |p| &p.personnel_status),
    ("编制类型", |p| &p.establishment),
    ("职务职级", |p| &p.post_rank),
    ("缴费工资基数", |p| &p.wage_base),
    ("联系电话", |p| &p.phone),
    ("地址", |p| &p.address),
    ("离退休日期", |p| &p.retirement_date),
    ("离退休类别", |p| &p.retirement_category),
    ("基本退休费", |p| &p.monthly_pension),
    ("发放开始年月", |p| &p.pay_start_month),
    ("开户银行", |p| &p.pay_bank),
];

/// What changed in the roster from `before` to `after`, person by person.
pub fn changes(before: &[Person], after: &[Person]) -> Vec<RosterChange> {
    let change = |person: &Person, change: &str, fields: Vec<String>| RosterChange {
        person_id: person.person_id.clone(),
        name: person.name.clone(),
        kind_label: person.kind_label.clone(),
        change: change.to_owned(),
        fields,
    };
    let mut changes = Vec::new();
    for person in after {
        match before.iter().find(|old| old.person_id == person.person_id) {
            None => changes.push(change(person, "added", Vec::new())),
            Some(old) => {
                let mut fields: Vec<String> = COMPARED
                    .iter()
                    .filter(|(_, field)| field(old) != field(person))
                    .map(|(label, _)| (*label).to_owned())
                    .collect();
                if old.pay_account_masked != person.pay_account_masked {
                    fields.push("银行账号".into());
                }
                if old.deemed_periods != person.deemed_periods {
                    fields.push("视同缴费年限".into());
                }
                if !fields.is_empty() {
                    changes.push(change(person, "changed", fields));
                }
            }
        }
    }
    for old in before {
        if !after.iter().any(|person| person.person_id == old.person_id) {
            changes.push(change(old, "removed", Vec::new()));
        }
    }
    changes
}

/// A person as a reviewer or the unit sees a declared roster: the ID number masked.
fn masked(mut person: Person) -> Person {
    person.id_number = String::new();
    person
}

impl People {
    /// `FreezeRoster`: locks the unit's people for the declaration and stores their snapshot; a repeated call
    /// answers with the stored one.
    pub async fn freeze(
        &self,
        caller: &Caller,
        unit: &str,
        declaration_id: &str,
        faults: &kit::faults::Faults,
    ) -> Result<RosterSnapshot, Status> {
        only_the_platform(caller)?;
        let declaration_id = declaration_id_of(declaration_id)?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        own_roster(&mut transaction, unit).await?;
        if let Some(row) = self.snapshot_row(&mut transaction, declaration_id).await? {
            transaction.commit().await.map_err(kit::db::status)?;
            if row.institution_code != unit {
                return Err(refuse(Code::FailedPrecondition, "declaration_of_another_unit", "该申报属于另一单位"));
            }
            return Ok(summary_of(&row));
        }
        let holder: Option<uuid::Uuid> =
            sqlx::query_scalar("select declaration_id::uuid from roster_locks where institution_code = $1")
                .bind(unit)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(kit::db::status)?;
        if let Some(holder) = holder {
            return Err(refuse(
                Code::FailedPrecondition,
                "roster_held",
                format!("人员名单已被另一申报（{holder}）锁定"),
            ));
        }
        let persons = self.read_all_on(&mut transaction, unit, true).await?;
        if persons.is_empty() {
            return Err(refuse(Code::FailedPrecondition, "no_persons", "尚未登记任何人员，至少登记一名人员后才能申报"));
        }
        let encoded = FrozenRoster { persons: persons.clone() }.encode_to_vec();
        let digest = hex(&Sha256::digest(&encoded));
        let sealed = self.sealer.seal(&base64::engine::general_purpose::STANDARD.encode(&encoded));
        let actor = Actor::of(caller);
        let row: SnapshotRow = sqlx::query_as(
            "insert into roster_snapshots (declaration_id, institution_code, snapshot_sealed, key_version, digest, \
             staff_count, retiree_pre_reform_count, retiree_post_reform_count, frozen_by) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning declaration_id, institution_code, snapshot_sealed, \
             key_version, digest, staff_count, retiree_pre_reform_count, retiree_post_reform_count, frozen_at",
        )
        .bind(declaration_id)
        .bind(unit)
        .bind(sealed)
        .bind(self.sealer.version())
        .bind(&digest)
        .bind(count(&persons, "staff"))
        .bind(count(&persons, "retiree_pre_reform"))
        .bind(count(&persons, "retiree_post_reform"))
        .bind(&actor.name)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        sqlx::query("insert into roster_locks (institution_code, declaration_id) values ($1, $2)")
            .bind(unit)
            .bind(declaration_id.to_string())
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let object = format!("declaration:{declaration_id}");
        let record = audit::Record {
            actor: &actor,
            action: "roster.freeze",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "unit": unit, "persons": persons.len(), "digest": digest }),
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        faults.hit("freeze.before_commit")?;
        transaction.commit().await.map_err(kit::db::status)?;
        faults.hit("freeze.after_commit")?;
        Ok(summary_of(&row))
    }

    /// `ReleaseRoster`: unlocks the unit's people if this declaration holds them.
    pub async fn release(&self, caller: &Caller, unit: &str, declaration_id: &str) -> Result<bool, Status> {
        only_the_platform(caller)?;
        let declaration_id = declaration_id_of(declaration_id)?;
        self.release_on(&Actor::of(caller), unit, declaration_id).await
    }

    /// Unlocks the roster the declaration holds; false when it holds none.
    pub async fn release_on(&self, actor: &Actor, unit: &str, declaration_id: uuid::Uuid) -> Result<bool, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let released = sqlx::query("delete from roster_locks where institution_code = $1 and declaration_id = $2")
            .bind(unit)
            .bind(declaration_id.to_string())
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?
            .rows_affected()
            > 0;
        if released {
            let object = format!("declaration:{declaration_id}");
            let record = audit::Record {
                actor,
                action: "roster.release",
                object: &object,
                outcome: Outcome::Success,
                detail: serde_json::json!({ "unit": unit }),
            };
            audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        }
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(released)
    }

    async fn snapshot_row(
        &self,
        connection: &mut PgConnection,
        declaration_id: uuid::Uuid,
    ) -> Result<Option<SnapshotRow>, Status> {
        sqlx::query_as(
            "select declaration_id, institution_code, snapshot_sealed, key_version, digest, staff_count, \
             retiree_pre_reform_count, retiree_post_reform_count, frozen_at from roster_snapshots \
             where declaration_id = $1",
        )
        .bind(declaration_id)
        .fetch_optional(connection)
        .await
        .map_err(kit::db::status)
    }

    fn persons_of(&self, row: &SnapshotRow) -> Result<Vec<Person>, Status> {
        let broken = |what: &str| {
            tracing::error!(declaration_id = %row.declaration_id, what, "a roster snapshot does not open");
            Status::internal("internal error")
        };
        let text = self.sealer.open(row.key_version, &row.snapshot_sealed).map_err(|_| broken("seal"))?;
        let encoded = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| broken("base64"))?;
        Ok(FrozenRoster::decode(encoded.as_slice()).map_err(|_| broken("encoding"))?.persons)
    }

    /// `GetRosterSnapshot`: the unit's operator, a reviewer of its agency, the province admin or the platform.
    /// Refused alike whether the declaration is someone else's or does not exist.
    pub async fn snapshot(
        &self,
        caller: &Caller,
        declaration_id: &str,
        compare_to: &str,
        summary_only: bool,
    ) -> Result<RosterSnapshot, Status> {
        let scope = match caller.role.as_str() {
            "unit_operator" if !caller.institution_code.is_empty() => Scope::unit(&caller.institution_code),
            "agency_reviewer" if !caller.agency_code.is_empty() => Scope::Agencies(vec![caller.agency_code.clone()]),
            "province_admin" | "system" => Scope::All,
            _ => return Err(refuse(Code::PermissionDenied, "forbidden", "无权查看申报的人员名单")),
        };
        let not_found = || refuse(Code::NotFound, "declaration_not_found", "没有找到该申报的人员名单");
        let declaration_id = declaration_id_of(declaration_id).map_err(|_| not_found())?;
        let compare_to = match compare_to.trim() {
            "" => None,
            other => Some(declaration_id_of(other)?),
        };
        let mut transaction = kit::db::begin_scoped(&self.pool, &scope).await.map_err(kit::db::status)?;
        let row = self.snapshot_row(&mut transaction, declaration_id).await?.ok_or_else(not_found)?;
        let previous = match compare_to {
            Some(id) => self
                .snapshot_row(&mut transaction, id)
                .await?
                .filter(|old| old.institution_code == row.institution_code),
            None => None,
        };
        transaction.commit().await.map_err(kit::db::status)?;
        let mut reply = summary_of(&row);
        if summary_only {
            return Ok(reply);
        }
        let persons = self.persons_of(&row)?;
        if let Some(previous) = previous {
            reply.changes = changes(&self.persons_of(&previous)?, &persons);
        }
        reply.persons = if caller.role == "system" {
            let actor = Actor::of(caller);
            let object = format!("declaration:{declaration_id}");
            let record = audit::Record {
                actor: &actor,
                action: "roster.unmask",
                object: &object,
                outcome: Outcome::Success,
                detail: serde_json::json!({ "persons": persons.len() }),
            };
            let mut connection = self.pool.acquire().await.map_err(kit::db::status)?;
            audit::append(&mut connection, &record).await.map_err(kit::db::status)?;
            persons
        } else {
            persons.into_iter().map(masked).collect()
        };
        Ok(reply)
    }
}

fn summary_of(row: &SnapshotRow) -> RosterSnapshot {
    let count = |value: i32| u32::try_from(value).unwrap_or(0);
    RosterSnapshot {
        declaration_id: row.declaration_id.to_string(),
        institution_code: row.institution_code.clone(),
        digest: row.digest.clone(),
        frozen_at: Some(timestamp(row.frozen_at)),
        staff_count: count(row.staff_count),
        retiree_pre_reform_count: count(row.retiree_pre_reform_count),
        retiree_post_reform_count: count(row.retiree_post_reform_count),
        persons: Vec::new(),
        changes: Vec::new(),
    }
}
