//! Creates a client may retry. A service keeps a table of `(<owner>, key, request_digest, response, created_at)`
//! with the primary key `(<owner>, key)`; the owner is whose keys they are (a unit, an account, a client address),
//! always derived by the service from the caller, never taken from the request.
//!
//! A create claims its key first in its own transaction, then does its work, then records its answer there: a retry
//! after the commit gets that answer, even from another instance after a crash; a retry while the first is in
//! flight waits on the primary key until it commits (then gets its answer) or rolls back (then does the work
//! itself); the same key with another request is refused.

use prost::Message;
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use tonic::{Code, Status};

use crate::status::{Violation, invalid, refuse};

/// How long a retry waits for a first call with the same key that is still being saved.
const IN_FLIGHT_WAIT: &str = "10s";

/// Keys older than this are forgotten.
pub const KEPT_FOR: &str = "1 day";

/// A create's key and a digest of what it asked.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub owner: String,
    pub key: String,
    pub request_digest: Vec<u8>,
}

impl Idempotency {
    /// `None` without a key (empty after trimming); a key that is not 1–100 visible ASCII characters is refused.
    pub fn of(owner: &str, key: &str, request: &impl Message) -> Result<Option<Self>, Status> {
        let key = key.trim();
        if key.is_empty() {
            return Ok(None);
        }
        if key.len() > 100 || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(invalid(vec![Violation::new(
                "idempotency_key",
                "invalid_idempotency_key",
                "Idempotency-Key 应为1至100个可见ASCII字符",
            )]));
        }
        let request_digest = Sha256::digest(request.encode_to_vec()).to_vec();
        Ok(Some(Self { owner: owner.to_owned(), key: key.to_owned(), request_digest }))
    }
}

/// What claiming a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is this call's: do the work, then [`Keys::record`] the answer before committing.
    Claimed,
    /// A call with the key committed first: roll back and give its [`Keys::first_answer`].
    Taken,
}

/// A retry that waited for the first call and found it still in flight.
pub fn in_flight() -> Status {
    refuse(Code::Aborted, "idempotency_in_flight", "相同 Idempotency-Key 的提交仍在处理中，请稍后重试")
}

/// A service's table of keys.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    pub table: &'static str,
    pub owner_column: &'static str,
}

impl Keys {
    /// The answer the key was first given, if it was used; the same key with another request is refused.
    pub async fn first_answer<M: Message + Default>(
        &self,
        connection: &mut PgConnection,
        idempotency: &Idempotency,
    ) -> Result<Option<M>, Status> {
        // Names are the services' constants, never input.
        let select = format!(
            "select request_digest, response from {} where {} = $1 and key = $2 and octet_length(response) > 0",
            self.table, self.owner_column
        );
        let stored: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(&idempotency.owner)
            .bind(&idempotency.key)
            .fetch_optional(connection)
            .await
            .map_err(crate::db::status)?;
        let Some((digest, response)) = stored else { return Ok(None) };
        if digest != idempotency.request_digest {
            return Err(invalid(vec![Violation::new(
                "idempotency_key",
                "idempotency_key_reused",
                "此 Idempotency-Key 已用于另一次不同内容的提交；新的提交请使用新的键",
            )]));
        }
        M::decode(response.as_slice()).map(Some).map_err(|error| {
            tracing::error!(%error, table = self.table, "a stored idempotent answer does not decode");
            Status::internal("internal error")
        })
    }

    /// Claims the key in the caller's transaction, waiting up to 10 s for a call in flight with the same key.
    pub async fn claim(&self, connection: &mut PgConnection, idempotency: &Idempotency) -> Result<Claim, Status> {
        sqlx::query("select set_config('lock_timeout', $1, true)")
            .bind(IN_FLIGHT_WAIT)
            .execute(&mut *connection)
            .await
            .map_err(crate::db::status)?;
        let insert = format!(
            "insert into {} ({}, key, request_digest, response) values ($1, $2, $3, '')",
            self.table, self.owner_column
        );
        let claimed = sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(&idempotency.owner)
            .bind(&idempotency.key)
            .bind(&idempotency.request_digest)
            .execute(&mut *connection)
            .await;
        let primary_key = format!("{}_pkey", self.table);
        match claimed {
            Ok(_) => {
                sqlx::query("select set_config('lock_timeout', '0', true)")
                    .execute(connection)
                    .await
                    .map_err(crate::db::status)?;
                Ok(Claim::Claimed)
            }
            Err(error) if crate::db::violates(&error, &primary_key) => Ok(Claim::Taken),
            Err(sqlx::Error::Database(database)) if database.code().as_deref() == Some("55P03") => Err(in_flight()),
            Err(error) => Err(crate::db::status(error)),
        }
    }

    /// Records the answer of a claimed key, in the same transaction as the create.
    pub async fn record(
        &self,
        connection: &mut PgConnection,
        idempotency: &Idempotency,
        answer: &impl Message,
    ) -> Result<(), Status> {
        let update = format!("update {} set response = $3 where {} = $1 and key = $2", self.table, self.owner_column);
        sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(&idempotency.owner)
            .bind(&idempotency.key)
            .bind(answer.encode_to_vec())
            .execute(connection)
            .await
            .map(|_| ())
            .map_err(crate::db::status)
    }

    /// Forgets keys older than [`KEPT_FOR`]; returns how many.
    pub async fn prune(&self, connection: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let delete = format!("delete from {} where created_at < now() - interval '{KEPT_FOR}'", self.table);
        Ok(sqlx::query(sqlx::AssertSqlSafe(delete)).execute(connection).await?.rows_affected())
    }
}
