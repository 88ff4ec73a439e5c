//! Key applications (密钥申请): apply, look up, withdraw (申请撤回, only while new and not made), change the login
//! password. Every change writes its event to the outbox and its audit record in the same transaction.

use kit::audit::{self, Actor, Outcome};
use kit::status::{Violation, invalid, refuse};
use prost::Message as _;
use proto::events::{EventMeta, KeyApplicationWithdrawn, KeyApplied, KeyPasswordChanged};
use proto::identity::{KeyApplication, KeySummary};
use proto::names::Namespace;
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tonic::{Code, Status};
use validators::IdNumber;

use crate::secrets::{IdNumberHasher, PasswordHasher};

/// The only application category of this platform.
pub const CATEGORY: &str = "机关事业养老保险密钥注册";
const MIN_PASSWORD_CHARS: usize = 8;

/// What the key operations need.
#[derive(Debug, Clone)]
pub struct Keys {
    pub pool: PgPool,
    pub namespace: Namespace,
    pub passwords: PasswordHasher,
    pub id_numbers: IdNumberHasher,
}

/// A validated application, ready to store.
pub struct NewApplication {
    pub institution_code: String,
    pub applicant_name: String,
    pub applicant_id: IdNumber,
    pub phone: String,
    pub password: SecretString,
}

/// The checks of a new login password.
pub fn check_password(field: &str, password: &str, violations: &mut Vec<Violation>) {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        violations.push(Violation::new(field, "password_too_short", "登录密码至少8位"));
    } else if password.chars().all(|c| c.is_ascii_digit()) || password.chars().all(char::is_alphabetic) {
        violations.push(Violation::new(field, "password_too_simple", "登录密码不能全为数字或全为字母，请混合使用"));
    }
}

/// Parses an applicant ID number as a field.
pub fn check_id_number(field: &str, raw: &str, violations: &mut Vec<Violation>) -> Option<IdNumber> {
    if raw.trim().is_empty() {
        violations.push(Violation::new(field, "required", "请填写申请人身份证号码"));
        return None;
    }
    match IdNumber::parse(raw, OffsetDateTime::now_utc().date()) {
        Ok(id) => Some(id),
        Err(error) => {
            violations.push(Violation::new(field, error.code(), error.to_string()));
            None
        }
    }
}

#[derive(sqlx::FromRow)]
struct ApplicationRow {
    application_id: String,
    username: String,
    category: String,
    institution_code: String,
    unit_name: String,
    applicant_name: String,
    applicant_id_number_masked: String,
    applicant_id_hmac: Vec<u8>,
    state: String,
    applied_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl ApplicationRow {
    fn into_reply(self) -> KeyApplication {
        KeyApplication {
            application_id: self.application_id,
            username: self.username,
            category: self.category,
            institution_code: self.institution_code,
            unit_name: self.unit_name,
            applicant_name: self.applicant_name,
            applicant_id_number_masked: self.applicant_id_number_masked,
            state_label: state_label(&self.state).to_owned(),
            state: self.state,
            applied_at: Some(timestamp(self.applied_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

pub use kit::convert::timestamp;

/// The application as pages show it, by id; a macro so `concat!` can add a locking clause at compile time.
macro_rules! select_application {
    () => {
        "select a.application_id, a.username, a.category, a.institution_code, r.unit_name, \
     a.applicant_name, a.applicant_id_number_masked, a.applicant_id_hmac, a.state, a.applied_at, a.updated_at \
     from key_applications a join registry_entries r using (institution_code) where a.application_id = $1"
    };
}

fn not_found(application_id: &str) -> Status {
    refuse(Code::NotFound, "application_not_found", format!("没有找到申请编号为 {application_id} 的密钥申请"))
}

pub fn meta(event_id: uuid::Uuid, actor: &Actor) -> Option<EventMeta> {
    Some(kit::outbox::event_meta(event_id, &actor.name))
}

impl Keys {
    /// The unit's keys, newest first.
    pub async fn list_for_unit(&self, institution_code: &str) -> Result<Vec<KeySummary>, sqlx::Error> {
        let rows: Vec<(String, String, OffsetDateTime, Option<OffsetDateTime>)> = sqlx::query_as(
            "select application_id, state, applied_at, made_at from key_applications \
             where institution_code = $1 order by applied_at desc",
        )
        .bind(institution_code)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(application_id, state, applied_at, made_at)| KeySummary {
                application_id,
                state_label: state_label(&state).to_owned(),
                state,
                applied_at: Some(timestamp(applied_at)),
                made_at: made_at.map(timestamp),
            })
            .collect())
    }

    /// Applications in `state` (all when empty), newest first, for the CA operator.
    pub async fn list(&self, state: &str, limit: u32) -> Result<Vec<KeyApplication>, Status> {
        let rows: Vec<ApplicationRow> = sqlx::query_as(
            "select a.application_id, a.username, a.category, a.institution_code, r.unit_name, a.applicant_name, \
             a.applicant_id_number_masked, a.applicant_id_hmac, a.state, a.applied_at, a.updated_at \
             from key_applications a join registry_entries r using (institution_code) \
             where ($1 = '' or a.state = $1) order by a.applied_at desc limit $2",
        )
        .bind(state.trim())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(kit::db::status)?;
        Ok(rows.into_iter().map(ApplicationRow::into_reply).collect())
    }

    /// Stores a new application with its assigned id and username, its event and its audit record.
    pub async fn apply(&self, actor: &Actor, application: NewApplication) -> Result<KeyApplication, Status> {
        let password_hash = self.hash_password(application.password).await?;
        let id_hmac = self.id_numbers.digest(&application.applicant_id);
        let mut transaction = self.pool.begin().await.map_err(kit::db::status)?;
        let number: i64 = sqlx::query_scalar("select nextval('key_application_number')")
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let today = OffsetDateTime::now_utc().date();
        let application_id =
            format!("SQ{:04}{:02}{:02}{number:06}", today.year(), u8::from(today.month()), today.day());
        let previous: i64 = sqlx::query_scalar("select count(*) from key_applications where institution_code = $1")
            .bind(&application.institution_code)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        // The unit's code and its key number: what an operator can say over the phone.
        let username = format!("{}-{:02}", application.institution_code, previous + 1);
        let inserted = sqlx::query(
            "insert into key_applications (application_id, username, category, institution_code, applicant_name, \
             applicant_id_hmac, applicant_id_number_masked, phone, password_hash, state) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'applied')",
        )
        .bind(&application_id)
        .bind(&username)
        .bind(CATEGORY)
        .bind(&application.institution_code)
        .bind(&application.applicant_name)
        .bind(&id_hmac)
        .bind(application.applicant_id.masked())
        .bind(&application.phone)
        .bind(&password_hash)
        .execute(&mut *transaction)
        .await;
        match inserted {
            Ok(_) => {}
            // Two applications of one unit raced for the same key number; the caller may simply retry.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23505") => {
                return Err(refuse(Code::Aborted, "concurrent_application", "同一单位的另一个申请正在提交，请重试"));
            }
            Err(error) => return Err(kit::db::status(error)),
        }
        let event = |meta| {
            KeyApplied {
                meta,
                application_id: application_id.clone(),
                institution_code: application.institution_code.clone(),
                username: username.clone(),
            }
            .encode_to_vec()
        };
        let object = format!("key_application:{application_id}");
        self.finish(&mut transaction, actor, "key_application.apply", &object, "key_applied", event).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.get(&application_id).await
    }

    /// An application by its id, as anyone may see it: ids are easy to guess, so the applicant's name is masked.
    pub async fn get_public(&self, application_id: &str) -> Result<KeyApplication, Status> {
        let application = self.get(application_id).await?;
        Ok(KeyApplication { applicant_name: validators::text::mask_name(&application.applicant_name), ..application })
    }

    /// An application by its id, in full: for answers to callers who proved the applicant's ID number.
    async fn get(&self, application_id: &str) -> Result<KeyApplication, Status> {
        let row: Option<ApplicationRow> = sqlx::query_as(select_application!())
            .bind(application_id.trim())
            .fetch_optional(&self.pool)
            .await
            .map_err(kit::db::status)?;
        row.map(ApplicationRow::into_reply).ok_or_else(|| not_found(application_id))
    }

    /// 申请撤回: only while the application is new (its key not made), and only with the applicant's ID number.
    pub async fn withdraw(
        &self,
        actor: &Actor,
        application_id: &str,
        applicant_id: &IdNumber,
    ) -> Result<KeyApplication, Status> {
        let mut transaction = self.pool.begin().await.map_err(kit::db::status)?;
        let row = self
            .lock_for_change(&mut transaction, actor, "key_application.withdraw", application_id, applicant_id)
            .await?;
        if row.state != "applied" {
            let status = refuse(
                Code::FailedPrecondition,
                "application_not_withdrawable",
                format!("只有新申请且尚未制作密钥的申请可以撤回，此申请的状态为“{}”", state_label(&row.state)),
            );
            drop(transaction);
            return Err(self.refused(actor, "key_application.withdraw", application_id, status).await);
        }
        sqlx::query("update key_applications set state = 'withdrawn', updated_at = now() where application_id = $1")
            .bind(&row.application_id)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let event = |meta| {
            KeyApplicationWithdrawn {
                meta,
                application_id: row.application_id.clone(),
                institution_code: row.institution_code.clone(),
            }
            .encode_to_vec()
        };
        let (action, object) = ("key_application.withdraw", format!("key_application:{}", row.application_id));
        self.finish(&mut transaction, actor, action, &object, "key_application_withdrawn", event).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.get(&row.application_id).await
    }

    /// Changes the login password, in any state but revoked (and not after withdrawal: that key will never exist).
    pub async fn change_password(
        &self,
        actor: &Actor,
        application_id: &str,
        applicant_id: &IdNumber,
        new_password: SecretString,
    ) -> Result<KeyApplication, Status> {
        let password_hash = self.hash_password(new_password).await?;
        let mut transaction = self.pool.begin().await.map_err(kit::db::status)?;
        let row = self
            .lock_for_change(&mut transaction, actor, "key_application.change_password", application_id, applicant_id)
            .await?;
        if row.state == "revoked" || row.state == "withdrawn" {
            let status = refuse(
                Code::FailedPrecondition,
                "password_not_changeable",
                format!("此申请的状态为“{}”，不能修改登录密码", state_label(&row.state)),
            );
            drop(transaction);
            return Err(self.refused(actor, "key_application.change_password", application_id, status).await);
        }
        sqlx::query("update key_applications set password_hash = $2, updated_at = now() where application_id = $1")
            .bind(&row.application_id)
            .bind(&password_hash)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let event = |meta| {
            KeyPasswordChanged {
                meta,
                application_id: row.application_id.clone(),
                institution_code: row.institution_code.clone(),
            }
            .encode_to_vec()
        };
        // The account made from this application logs in with the same password.
        sqlx::query("update accounts set password_hash = $2 where username = $1 and role = 'unit_operator'")
            .bind(&row.username)
            .bind(&password_hash)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let (action, object) = ("key_application.change_password", format!("key_application:{}", row.application_id));
        self.finish(&mut transaction, actor, action, &object, "key_password_changed", event).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.get(&row.application_id).await
    }

    /// Locks the application for a change and checks the applicant's ID number; a mismatch is refused (and audited)
    /// with the same answer as an unknown id, so the two cannot be told apart by guessing.
    async fn lock_for_change(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        action: &str,
        application_id: &str,
        applicant_id: &IdNumber,
    ) -> Result<ApplicationRow, Status> {
        let row: Option<ApplicationRow> = sqlx::query_as(concat!(select_application!(), " for update of a"))
            .bind(application_id.trim())
            .fetch_optional(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        match row {
            Some(row) if row.applicant_id_hmac == self.id_numbers.digest(applicant_id) => Ok(row),
            _ => {
                let status =
                    refuse(Code::NotFound, "application_not_found", "申请编号与申请人身份证号码不匹配，请核对后重试");
                Err(self.refused(actor, action, application_id, status).await)
            }
        }
    }

    /// Writes the event (built by `event` from its metadata) to the outbox and the audit record of `object`, in the
    /// change's transaction.
    pub async fn finish(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        action: &str,
        object: &str,
        event_name: &str,
        event: impl FnOnce(Option<EventMeta>) -> Vec<u8>,
    ) -> Result<(), Status> {
        let event_id = kit::outbox::new_event_id();
        let payload = event(meta(event_id, actor));
        let subject = self.namespace.event_subject("identity", event_name);
        kit::outbox::enqueue(&mut *transaction, event_id, &subject, &payload).await.map_err(kit::db::status)?;
        let record = audit::Record { actor, action, object, outcome: Outcome::Success, detail: serde_json::json!({}) };
        audit::append(transaction, &record).await.map_err(kit::db::status)?;
        Ok(())
    }

    /// Hashes a new login password; a failure there is ours, not the caller's.
    pub async fn hash_password(&self, password: SecretString) -> Result<String, Status> {
        self.passwords.hash(password).await.map_err(|error| {
            tracing::error!(%error, "cannot hash a password");
            Status::internal("internal error")
        })
    }

    /// Audits a refusal and hands back the status to return.
    async fn refused(&self, actor: &Actor, action: &str, application_id: &str, status: Status) -> Status {
        self.audit_refusal(actor, action, application_id, &status).await;
        status
    }

    /// Records a refusal of an application operation on its own (nothing else is written for it).
    pub async fn audit_refusal(&self, actor: &Actor, action: &str, application_id: &str, status: &Status) {
        let object = format!("key_application:{}", application_id.trim());
        self.audit_refusal_of(actor, action, &object, status).await;
    }

    /// Records a refusal of an operation on `object`; the status's reason code goes into the record.
    pub async fn audit_refusal_of(&self, actor: &Actor, action: &str, object: &str, status: &Status) {
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
}

/// The Chinese name of a state, as the manual uses it.
pub fn state_label(state: &str) -> &'static str {
    match state {
        "applied" => "新申请",
        "made" => "已制作",
        "withdrawn" => "已撤回",
        "revoked" => "已吊销",
        _ => "未知",
    }
}

/// `INVALID_ARGUMENT` when any violation was found.
pub fn reject_if_any(violations: Vec<Violation>) -> Result<(), Status> {
    if violations.is_empty() { Ok(()) } else { Err(invalid(violations)) }
}
