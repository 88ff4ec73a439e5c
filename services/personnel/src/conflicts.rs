//! Stale registrations. When a unit checks or saves a person still registered in another unit, the refusal names
//! the agency to contact and a conflict is recorded (`record_registration_conflict`, in the database). That agency's
//! reviewer lists its open conflicts and ends the stale registration with a reason; the other unit's save then goes
//! through. Every registration and its end go into the person's history.

use kit::audit::{self, Actor, Outcome};
use kit::convert::timestamp;
use kit::db::Scope;
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::common::Caller;
use proto::events::PersonRegistrationEnded;
use proto::personnel::{PersonHistory, PersonHistoryEntry, RegistrationConflict};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::people::People;

#[derive(sqlx::FromRow)]
struct ConflictRow {
    conflict_id: uuid::Uuid,
    name: String,
    id_number_masked: String,
    requesting_unit: String,
    holding_unit: String,
    holding_person: uuid::Uuid,
    created_at: OffsetDateTime,
    resolved_at: Option<OffsetDateTime>,
    resolved_by: Option<String>,
    resolution: Option<String>,
}

impl ConflictRow {
    fn into_message(self) -> RegistrationConflict {
        RegistrationConflict {
            conflict_id: self.conflict_id.to_string(),
            name: self.name,
            id_number_masked: self.id_number_masked,
            requesting_unit: self.requesting_unit,
            holding_unit: self.holding_unit,
            holding_person_id: self.holding_person.to_string(),
            created_at: Some(timestamp(self.created_at)),
            resolved_at: self.resolved_at.map(timestamp),
            resolved_by: self.resolved_by.unwrap_or_default(),
            resolution: self.resolution.unwrap_or_default(),
        }
    }
}

const CONFLICT_COLUMNS: &str = "conflict_id, name, id_number_masked, requesting_unit, holding_unit, holding_person, \
    created_at, resolved_at, resolved_by, resolution";

fn reviewer_scope(caller: &Caller) -> Result<Scope, Status> {
    match caller.role.as_str() {
        "agency_reviewer" if !caller.agency_code.is_empty() => Ok(Scope::Agencies(vec![caller.agency_code.clone()])),
        _ => Err(refuse(Code::PermissionDenied, "forbidden", "只有经办机构审核员可以处理重复参保")),
    }
}

impl People {
    /// `ListRegistrationConflicts`: the open conflicts of the reviewer's agency, oldest first.
    pub async fn conflicts(&self, caller: &Caller) -> Result<Vec<RegistrationConflict>, Status> {
        let scope = reviewer_scope(caller)?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &scope).await.map_err(kit::db::status)?;
        let rows: Vec<ConflictRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {CONFLICT_COLUMNS} from registration_conflicts where resolved_at is null \
             and holding_agency = $1 order by created_at"
        )))
        .bind(&caller.agency_code)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(rows.into_iter().map(ConflictRow::into_message).collect())
    }

    /// `EndRegistration`: ends the registration that stands in the way, resolves the conflict (and any other open
    /// one for the same person), records it in the history, and says so through the outbox.
    pub async fn end_registration(
        &self,
        caller: &Caller,
        conflict_id: &str,
        reason: &str,
    ) -> Result<RegistrationConflict, Status> {
        let scope = reviewer_scope(caller)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 200 {
            return Err(invalid(vec![Violation::new("reason", "reason_required", "请填写终止原因（不超过200个字）")]));
        }
        let not_found = || refuse(Code::NotFound, "conflict_not_found", "没有找到该重复参保记录");
        let conflict_id: uuid::Uuid = conflict_id.trim().parse().map_err(|_| not_found())?;
        let actor = Actor::of(caller);
        let mut transaction = kit::db::begin_scoped(&self.pool, &scope).await.map_err(kit::db::status)?;
        let row: Option<ConflictRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {CONFLICT_COLUMNS} from registration_conflicts where conflict_id = $1 and holding_agency = $2 \
             for update"
        )))
        .bind(conflict_id)
        .bind(&caller.agency_code)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let row = row.ok_or_else(not_found)?;
        if row.resolved_at.is_some() {
            return Err(refuse(Code::FailedPrecondition, "conflict_resolved", "该重复参保已处理"));
        }
        // The holding unit is the agency's own: ending its person's registration is the platform's work on the
        // reviewer's authority, so the write runs with every unit in scope.
        kit::db::set_scope(&mut transaction, &Scope::All).await.map_err(kit::db::status)?;
        let ended: Option<String> = sqlx::query_scalar(
            "update persons set ended_at = now(), end_reason = $2 where person_id = $1 and ended_at is null \
             returning id_number_masked",
        )
        .bind(row.holding_person)
        .bind(reason)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let resolution = if ended.is_some() { "ended" } else { "already_ended" };
        sqlx::query(
            "update registration_conflicts set resolved_at = now(), resolved_by = $2, resolution = $3 \
             where resolved_at is null and id_number_hmac = (select id_number_hmac from registration_conflicts \
             where conflict_id = $1)",
        )
        .bind(conflict_id)
        .bind(&actor.name)
        .bind(resolution)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        if let Some(masked) = &ended {
            self.record_end(&mut transaction, &actor, &row, masked, reason).await?;
        }
        transaction.commit().await.map_err(kit::db::status)?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        let resolved: ConflictRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {CONFLICT_COLUMNS} from registration_conflicts where conflict_id = $1"
        )))
        .bind(conflict_id)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(resolved.into_message())
    }

    async fn record_end(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        row: &ConflictRow,
        masked: &str,
        reason: &str,
    ) -> Result<(), Status> {
        crate::people::history(&mut *transaction, row.holding_person, "ended", &actor.name, Some(reason), None).await?;
        let event_id = kit::outbox::new_event_id();
        let event = PersonRegistrationEnded {
            meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
            person_id: row.holding_person.to_string(),
            institution_code: row.holding_unit.clone(),
            id_number_masked: masked.to_owned(),
            reason: reason.to_owned(),
        };
        let subject = self.namespace.event_subject("personnel", "person_registration_ended");
        kit::outbox::enqueue(&mut *transaction, event_id, &subject, &event.encode_to_vec())
            .await
            .map_err(kit::db::status)?;
        let object = format!("person:{}", row.holding_person);
        let record = audit::Record {
            actor,
            action: "person.end_registration",
            object: &object,
            outcome: Outcome::Success,
            detail: serde_json::json!({ "unit": row.holding_unit, "id_number": masked, "reason": reason,
                "requested_by": row.requesting_unit }),
        };
        audit::append(transaction, &record).await.map_err(kit::db::status)?;
        Ok(())
    }

    /// `GetPersonHistory`: every registration of the same person (by the blind index), oldest first.
    pub async fn history(&self, caller: &Caller, person_id: &str) -> Result<PersonHistory, Status> {
        if !matches!(caller.role.as_str(), "agency_reviewer" | "province_admin") {
            return Err(refuse(Code::PermissionDenied, "forbidden", "只有经办机构审核员可以查看人员参保历史"));
        }
        let not_found = || refuse(Code::NotFound, "person_not_found", "没有找到该人员");
        let person_id: uuid::Uuid = person_id.trim().parse().map_err(|_| not_found())?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        type Entry = (uuid::Uuid, String, String, String, Option<String>, OffsetDateTime, Option<uuid::Uuid>);
        let rows: Vec<Entry> = sqlx::query_as(
            "select h.person_id, h.institution_code, h.event, h.actor, h.reason, h.at, h.declaration_id \
             from person_history h \
             where h.id_number_hmac = (select id_number_hmac from person_history where person_id = $1 limit 1) \
             order by h.seq",
        )
        .bind(person_id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        if rows.is_empty() {
            return Err(not_found());
        }
        Ok(PersonHistory {
            entries: rows
                .into_iter()
                .map(|(person_id, institution_code, event, actor, reason, at, declaration_id)| PersonHistoryEntry {
                    person_id: person_id.to_string(),
                    institution_code,
                    event,
                    actor,
                    reason: reason.unwrap_or_default(),
                    at: Some(timestamp(at)),
                    declaration_id: declaration_id.map(|id| id.to_string()).unwrap_or_default(),
                })
                .collect(),
        })
    }
}
