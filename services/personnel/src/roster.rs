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
use proto::personnel::{FieldDiff, FrozenChangeSet, FrozenRoster, Person, RosterChange, RosterSnapshot};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::codes::CodeLists;
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

/// Takes the unit's roster lock exclusively, for the rest of the transaction: no change of a person runs beside.
pub(crate) async fn own_roster(connection: &mut PgConnection, unit: &str) -> Result<(), Status> {
    sqlx::query(sqlx::AssertSqlSafe(format!("select pg_advisory_xact_lock({ROSTER_LOCK_SQL})")))
        .bind(unit)
        .execute(connection)
        .await
        .map(|_| ())
        .map_err(kit::db::status)
}

/// Where a unit's roster stands, read under its shared lock (so a freeze cannot slip between the read and the
/// caller's write).
pub(crate) struct RosterState {
    /// The pending declaration that holds the roster.
    pub locked_by: Option<String>,
    /// The roster was approved: it changes through change declarations only.
    pub enrolled: bool,
}

pub(crate) async fn roster_state(connection: &mut PgConnection, unit: &str) -> Result<RosterState, Status> {
    // Shared with every other change of the unit's people, exclusive with freezing (`People::freeze`): a save
    // that found the roster open commits before a freeze reads it, so no snapshot misses a saved person.
    share_roster(&mut *connection, unit).await?;
    let (locked_by, enrolled): (Option<String>, bool) = sqlx::query_as(
        "select (select declaration_id from roster_locks where institution_code = $1 for share), \
         exists (select 1 from enrolled_units where institution_code = $1)",
    )
    .bind(unit)
    .fetch_one(connection)
    .await
    .map_err(kit::db::status)?;
    Ok(RosterState { locked_by, enrolled })
}

#[derive(sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    declaration_id: uuid::Uuid,
    pub institution_code: String,
    snapshot_sealed: Vec<u8>,
    key_version: i32,
    digest: String,
    staff_count: i32,
    retiree_pre_reform_count: i32,
    retiree_post_reform_count: i32,
    frozen_at: OffsetDateTime,
    pub kind: String,
    add_count: i32,
    remove_count: i32,
    update_count: i32,
}

const SNAPSHOT_COLUMNS: &str = "declaration_id, institution_code, snapshot_sealed, key_version, digest, staff_count, \
    retiree_pre_reform_count, retiree_post_reform_count, frozen_at, kind, add_count, remove_count, update_count";

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

/// A field of a person: its API name, its label, the code list its values come from (if any), and how to read it.
type PersonField = (&'static str, &'static str, Option<&'static str>, fn(&Person) -> &str);

/// The fields compared between two states of a person: a reviewer's changes since the last rejection, and what a
/// 变更 or a retirement alters.
const COMPARED: [PersonField; 22] = [
    ("kind", "人员类别", None, |p| &p.kind_label),
    ("name", "姓名", None, |p| &p.name),
    ("id_type", "证件类型", Some("id_type"), |p| &p.id_type),
    ("id_number", "证件号码", None, |p| &p.id_number_masked),
    ("funding_form", "经费补助形式", Some("funding_form"), |p| &p.funding_form),
    ("ethnicity", "民族", Some("ethnicity"), |p| &p.ethnicity),
    ("work_start", "参加工作时间", None, |p| &p.work_start),
    ("joined_unit", "进入本单位时间", None, |p| &p.joined_unit),
    ("personnel_status", "人员身份", Some("personnel_status"), |p| &p.personnel_status),
    ("establishment", "编制类型", Some("establishment"), |p| &p.establishment),
    ("post_rank", "职务职级", None, |p| &p.post_rank),
    ("wage_base", "缴费工资基数", None, |p| &p.wage_base),
    ("phone", "联系电话", None, |p| &p.phone),
    ("address", "地址", None, |p| &p.address),
    ("retirement_date", "离退休日期", None, |p| &p.retirement_date),
    ("retirement_category", "离退休类别", Some("retirement_category"), |p| &p.retirement_category),
    ("monthly_pension", "基本退休费", None, |p| &p.monthly_pension),
    ("pay_start_month", "发放开始年月", None, |p| &p.pay_start_month),
    ("pay_bank", "开户银行", None, |p| &p.pay_bank),
    ("pay_account", "银行账号", None, |p| &p.pay_account_masked),
    ("sex", "性别", None, |p| &p.sex_label),
    ("birth_date", "出生日期", None, |p| &p.birth_date),
];

/// The fields that differ between two states of a person, coded values by their labels, sensitive ones masked.
pub(crate) fn field_diffs(before: &Person, after: &Person, codes: &CodeLists) -> Vec<FieldDiff> {
    let shown = |list: Option<&str>, value: &str| match list {
        Some(list) => codes.label(list, value).unwrap_or(value).to_owned(),
        None => value.to_owned(),
    };
    let mut diffs: Vec<FieldDiff> = COMPARED
        .iter()
        .filter(|(_, _, _, read)| read(before) != read(after))
        .map(|(field, label, list, read)| FieldDiff {
            field: (*field).to_owned(),
            label: (*label).to_owned(),
            before: shown(*list, read(before)),
            after: shown(*list, read(after)),
        })
        .collect();
    if before.deemed_periods != after.deemed_periods {
        let months = |person: &Person| -> u32 {
            person.deemed_periods.iter().filter_map(|period| period.months.parse::<u32>().ok()).sum()
        };
        diffs.push(FieldDiff {
            field: "deemed_periods".into(),
            label: "视同缴费年限".into(),
            before: format!("{}段，共{}个月", before.deemed_periods.len(), months(before)),
            after: format!("{}段，共{}个月", after.deemed_periods.len(), months(after)),
        });
    }
    diffs
}

/// What changed in the roster from `before` to `after`, person by person.
pub fn changes(before: &[Person], after: &[Person], codes: &CodeLists) -> Vec<RosterChange> {
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
                let fields: Vec<String> = field_diffs(old, person, codes).into_iter().map(|diff| diff.label).collect();
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
pub(crate) fn masked(mut person: Person) -> Person {
    person.id_number = String::new();
    person
}

impl People {
    /// `FreezeRoster`: locks the unit's people for the declaration and stores their snapshot (`kind` "changes":
    /// the unit's open changes instead of every person); a repeated call answers with the stored one.
    pub async fn freeze(
        &self,
        caller: &Caller,
        unit: &str,
        declaration_id: &str,
        kind: &str,
        faults: &kit::faults::Faults,
    ) -> Result<RosterSnapshot, Status> {
        only_the_platform(caller)?;
        let declaration_id = declaration_id_of(declaration_id)?;
        let kind = match kind.trim() {
            "" | "roster" => "roster",
            "changes" => "changes",
            _ => return Err(refuse(Code::InvalidArgument, "invalid_kind", "名单类别只能是 roster 或 changes")),
        };
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        own_roster(&mut transaction, unit).await?;
        if let Some(row) = self.snapshot_row(&mut transaction, declaration_id).await? {
            transaction.commit().await.map_err(kit::db::status)?;
            if row.institution_code != unit {
                return Err(refuse(Code::FailedPrecondition, "declaration_of_another_unit", "该申报属于另一单位"));
            }
            return Ok(summary_of(&row));
        }
        let (holder, enrolled): (Option<String>, bool) = sqlx::query_as(
            "select (select declaration_id from roster_locks where institution_code = $1), \
             exists (select 1 from enrolled_units where institution_code = $1)",
        )
        .bind(unit)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        if let Some(holder) = holder {
            return Err(refuse(
                Code::FailedPrecondition,
                "roster_held",
                format!("人员名单已被另一申报（{holder}）锁定"),
            ));
        }
        let mut counts = [0_i32; 6];
        let encoded = match (kind, enrolled) {
            ("roster", true) => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "already_enrolled",
                    "本单位人员名单已审核通过，人员变动请通过人员变更申报办理",
                ));
            }
            ("roster", false) => {
                let persons = self.read_all_on(&mut transaction, unit, true).await?;
                if persons.is_empty() {
                    return Err(refuse(
                        Code::FailedPrecondition,
                        "no_persons",
                        "尚未登记任何人员，至少登记一名人员后才能申报",
                    ));
                }
                counts[..3].copy_from_slice(&[
                    count(&persons, "staff"),
                    count(&persons, "retiree_pre_reform"),
                    count(&persons, "retiree_post_reform"),
                ]);
                FrozenRoster { persons }.encode_to_vec()
            }
            (_, false) => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "not_enrolled",
                    "本单位的参保登记尚未审核通过，不能办理人员变更申报",
                ));
            }
            (_, true) => {
                let items = self.frozen_changes(&mut transaction, unit).await?;
                if items.is_empty() {
                    return Err(refuse(
                        Code::FailedPrecondition,
                        "no_changes",
                        "尚未填写任何人员变更（增员、减员或变更），至少一项后才能申报",
                    ));
                }
                let of = |action: &str| {
                    i32::try_from(items.iter().filter(|item| item.action == action).count()).unwrap_or(i32::MAX)
                };
                counts[3..].copy_from_slice(&[of("add"), of("remove"), of("update")]);
                FrozenChangeSet { items }.encode_to_vec()
            }
        };
        let digest = hex(&Sha256::digest(&encoded));
        let sealed = self.sealer.seal(&base64::engine::general_purpose::STANDARD.encode(&encoded));
        let actor = Actor::of(caller);
        let row: SnapshotRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into roster_snapshots (declaration_id, institution_code, snapshot_sealed, key_version, digest, \
             staff_count, retiree_pre_reform_count, retiree_post_reform_count, frozen_by, kind, add_count, \
             remove_count, update_count) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             returning {SNAPSHOT_COLUMNS}"
        )))
        .bind(declaration_id)
        .bind(unit)
        .bind(sealed)
        .bind(self.sealer.version())
        .bind(&digest)
        .bind(counts[0])
        .bind(counts[1])
        .bind(counts[2])
        .bind(&actor.name)
        .bind(kind)
        .bind(counts[3])
        .bind(counts[4])
        .bind(counts[5])
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
            detail: serde_json::json!({ "unit": unit, "kind": kind, "counts": counts, "digest": digest }),
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

    pub(crate) async fn snapshot_row(
        &self,
        connection: &mut PgConnection,
        declaration_id: uuid::Uuid,
    ) -> Result<Option<SnapshotRow>, Status> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {SNAPSHOT_COLUMNS} from roster_snapshots where declaration_id = $1"
        )))
        .bind(declaration_id)
        .fetch_optional(connection)
        .await
        .map_err(kit::db::status)
    }

    /// A snapshot's content: the roster's people (kind "roster") or the change declaration's changes.
    fn opened<T: prost::Message + Default>(&self, row: &SnapshotRow) -> Result<T, Status> {
        let broken = |what: &str| {
            tracing::error!(declaration_id = %row.declaration_id, what, "a roster snapshot does not open");
            Status::internal("internal error")
        };
        let text = self.sealer.open(row.key_version, &row.snapshot_sealed).map_err(|_| broken("seal"))?;
        let encoded = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| broken("base64"))?;
        T::decode(encoded.as_slice()).map_err(|_| broken("encoding"))
    }

    fn persons_of(&self, row: &SnapshotRow) -> Result<Vec<Person>, Status> {
        Ok(self.opened::<FrozenRoster>(row)?.persons)
    }

    pub(crate) fn change_items_of(&self, row: &SnapshotRow) -> Result<Vec<proto::personnel::RosterChangeItem>, Status> {
        Ok(self.opened::<FrozenChangeSet>(row)?.items)
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
        if row.kind == "changes" {
            let mut items = self.change_items_of(&row)?;
            if caller.role == "system" {
                self.audit_unmask(caller, declaration_id, items.len()).await?;
            } else {
                for item in &mut items {
                    item.person = item.person.take().map(masked);
                }
            }
            reply.change_items = items;
            return Ok(reply);
        }
        let persons = self.persons_of(&row)?;
        if let Some(previous) = previous.filter(|old| old.kind == "roster") {
            reply.changes = changes(&self.persons_of(&previous)?, &persons, &self.codes);
        }
        reply.persons = if caller.role == "system" {
            self.audit_unmask(caller, declaration_id, persons.len()).await?;
            persons
        } else {
            persons.into_iter().map(masked).collect()
        };
        Ok(reply)
    }

    /// Records that the platform read a snapshot's ID numbers in clear (to print them).
    async fn audit_unmask(&self, caller: &Caller, declaration_id: uuid::Uuid, persons: usize) -> Result<(), Status> {
        let actor = Actor::of(caller);
        let object = format!("declaration:{declaration_id}");
        let record = audit::Record {
            actor: &actor,
            action: "roster.unmask",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "persons": persons }),
        };
        let mut connection = self.pool.acquire().await.map_err(kit::db::status)?;
        audit::append(&mut connection, &record).await.map_err(kit::db::status)?;
        Ok(())
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
        kind: row.kind.clone(),
        change_items: Vec::new(),
        add_count: count(row.add_count),
        remove_count: count(row.remove_count),
        update_count: count(row.update_count),
    }
}
