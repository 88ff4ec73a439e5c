//! The audit record, one format for the whole platform: who (actor, role, certificate), when, what (action on
//! object), how it ended, and what changed. Written to `kit_audit`, which refuses updates and deletes.
//!
//! A change is audited in the same transaction as the change, so the record exists exactly when the change does;
//! a refusal is audited on its own, since nothing else is written.

use serde_json::Value;
use sqlx::PgConnection;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused for the caller's reasons: bad input, wrong state, no permission.
    Refused,
    /// Failed for ours.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// Who acted, as the gateway established it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The account or API client; "anonymous" on public pages.
    pub name: String,
    pub role: String,
    pub certificate_serial: Option<String>,
    pub remote_address: Option<String>,
}

impl Actor {
    /// Who called, as the gateway or the command line said.
    pub fn of(caller: &proto::common::Caller) -> Self {
        Self {
            name: if caller.actor.is_empty() { "anonymous".into() } else { caller.actor.clone() },
            role: if caller.role.is_empty() { "public".into() } else { caller.role.clone() },
            certificate_serial: Some(caller.certificate_serial.clone()).filter(|serial| !serial.is_empty()),
            remote_address: Some(caller.remote_address.clone()).filter(|address| !address.is_empty()),
        }
    }
}

/// One audit record. `detail` must hold masked values only (never an ID number or secret in clear).
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub actor: &'a Actor,
    /// e.g. `key_application.apply`.
    pub action: &'a str,
    /// e.g. `key_application:SQ20261203000001`.
    pub object: &'a str,
    pub outcome: Outcome,
    pub detail: Value,
}

/// Appends `record`, in the caller's transaction or on its own connection. Returns its sequence number.
pub async fn append(connection: &mut PgConnection, record: &Record<'_>) -> Result<i64, sqlx::Error> {
    let trace_id = crate::trace::TraceContext::current().map(|context| context.trace_id_hex());
    sqlx::query_scalar(
        "insert into kit_audit (actor, role, certificate_serial, remote_address, action, object, outcome, detail, trace_id) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning seq",
    )
    .bind(&record.actor.name)
    .bind(&record.actor.role)
    .bind(&record.actor.certificate_serial)
    .bind(&record.actor.remote_address)
    .bind(record.action)
    .bind(record.object)
    .bind(record.outcome.as_str())
    .bind(&record.detail)
    .bind(trace_id)
    .fetch_one(connection)
    .await
}
