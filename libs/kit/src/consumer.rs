//! Idempotent JetStream consumers: a durable pull consumer, created idempotently at start-up, whose handler runs in
//! a database transaction together with an inbox row for the event. A redelivered event finds its inbox row and is
//! acknowledged without being applied twice.
//!
//! Every message ends in exactly one of: ack (applied, or applied before), nak with a delay (a passing failure, or
//! a panic in the handler), or term (a poison message that can never be applied, logged with its reason). Never
//! silence, which would leave it to the ack timeout.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// What a handler receives.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's id (its `Nats-Msg-Id`, the producer's outbox id); the inbox key.
    pub id: String,
    pub subject: String,
    pub payload: Bytes,
    /// How many times JetStream has delivered it, this time included.
    pub delivered: i64,
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A passing failure (a dependency down, a conflict): the event is delivered again after a delay.
    #[error("retry later: {0}")]
    Retry(String),
    /// The event can never be applied (it does not decode, it refers to nothing): it is terminated and logged.
    #[error("poison: {0}")]
    Poison(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::Retry(error.to_string())
    }
}

/// Applies events. The effect must be written through `transaction`, which also records the event in the inbox:
/// both commit together or neither does.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        event: &'a Event,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Where a consumer reads from and how patient it is.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The producing service's stream (`proto::names::Namespace::events_stream`).
    pub stream: String,
    /// The subject filter of that stream (`proto::names::Namespace::events_filter`).
    pub stream_subjects: String,
    /// The durable consumer name (`proto::names::Namespace::consumer`), also the inbox's consumer key.
    pub durable: String,
    /// The subjects this consumer wants, within the stream.
    pub filter_subject: String,
    /// How long JetStream waits for an ack before delivering again.
    pub ack_wait: Duration,
    /// After this many deliveries a still-failing event is terminated as poison.
    pub max_deliver: i64,
}

impl ConsumerSpec {
    pub fn new(stream: String, stream_subjects: String, durable: String, filter_subject: String) -> Self {
        Self { stream, stream_subjects, durable, filter_subject, ack_wait: Duration::from_secs(30), max_deliver: 50 }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Retried,
    Terminated,
}

/// Consumes until `shutdown` is cancelled, recreating the consumer after errors (a NATS restart, a deleted
/// consumer, missed heartbeats).
pub async fn run<H: Handler>(
    pool: PgPool,
    jetstream: jetstream::Context,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        match consume(&pool, &jetstream, &spec, handler.as_ref(), &shutdown).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(consumer = %spec.durable, %error, "consumer stopped; starting it again");
            }
        }
        let pause = Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn consume<H: Handler>(
    pool: &PgPool,
    jetstream: &jetstream::Context,
    spec: &ConsumerSpec,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let stream = crate::nats::ensure_stream(jetstream, &spec.stream, &spec.stream_subjects).await?;
    let consumer = stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_deliver: spec.max_deliver,
                ..Default::default()
            },
        )
        .await?;
    let mut messages =
        consumer.stream().heartbeat(Duration::from_secs(5)).expires(Duration::from_secs(30)).messages().await?;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let Some(message) = message else {
            return Err("the message stream ended".into());
        };
        let message = message?;
        process(pool, spec, handler, &message).await;
    }
}

/// Handles one message and ends it with ack, nak or term.
pub async fn process<H: Handler>(
    pool: &PgPool,
    spec: &ConsumerSpec,
    handler: &H,
    message: &jetstream::Message,
) -> Outcome {
    let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
    let id = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Msg-Id"))
        .map(|value| value.as_str().to_owned())
        .or_else(|| message.info().ok().map(|info| format!("{}:{}", info.stream, info.stream_sequence)));
    let Some(id) = id else {
        tracing::error!(consumer = %spec.durable, subject = %message.subject, "message without an id terminated");
        ack(message, AckKind::Term).await;
        return Outcome::Terminated;
    };
    let event = Event { id, subject: message.subject.to_string(), payload: message.payload.clone(), delivered };
    let result = AssertUnwindSafe(apply(pool, &spec.durable, handler, &event)).catch_unwind().await;
    let outcome = match result {
        Ok(Ok(true)) => {
            ack(message, AckKind::Ack).await;
            Outcome::Applied
        }
        Ok(Ok(false)) => {
            ack(message, AckKind::Ack).await;
            Outcome::Duplicate
        }
        Ok(Err(HandlerError::Poison(reason))) => {
            tracing::error!(consumer = %spec.durable, event_id = %event.id, %reason, "poison event terminated");
            ack(message, AckKind::Term).await;
            Outcome::Terminated
        }
        Ok(Err(HandlerError::Retry(reason))) if delivered >= spec.max_deliver => {
            tracing::error!(consumer = %spec.durable, event_id = %event.id, %reason, delivered, "event still failing after the last delivery; terminated");
            ack(message, AckKind::Term).await;
            Outcome::Terminated
        }
        Ok(Err(HandlerError::Retry(reason))) => {
            tracing::warn!(consumer = %spec.durable, event_id = %event.id, %reason, delivered, "event failed; delivered again later");
            ack(message, AckKind::Nak(Some(redelivery_delay(delivered)))).await;
            Outcome::Retried
        }
        Err(_) => {
            tracing::error!(consumer = %spec.durable, event_id = %event.id, delivered, "handler panicked; delivered again later");
            ack(message, AckKind::Nak(Some(redelivery_delay(delivered)))).await;
            Outcome::Retried
        }
    };
    let label = match outcome {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Retried => "retried",
        Outcome::Terminated => "terminated",
    };
    metrics::counter!("consumer_messages_total", "consumer" => spec.durable.clone(), "outcome" => label).increment(1);
    outcome
}

/// Applies the event once: `Ok(false)` when the inbox shows it was applied before.
async fn apply<H: Handler>(pool: &PgPool, consumer: &str, handler: &H, event: &Event) -> Result<bool, HandlerError> {
    let mut transaction = pool.begin().await?;
    let first_time = sqlx::query("insert into kit_inbox (consumer, message_id) values ($1, $2) on conflict do nothing")
        .bind(consumer)
        .bind(&event.id)
        .execute(&mut *transaction)
        .await?
        .rows_affected()
        == 1;
    if !first_time {
        transaction.rollback().await?;
        return Ok(false);
    }
    handler.handle(&mut transaction, event).await?;
    transaction.commit().await?;
    Ok(true)
}

/// Backs off with the delivery count: 1 s, 2 s, 4 s … up to a minute.
fn redelivery_delay(delivered: i64) -> Duration {
    Duration::from_secs(1u64 << delivered.clamp(1, 7).saturating_sub(1)).min(Duration::from_secs(60))
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        // Not fatal: without the ack JetStream delivers again, and the inbox makes that harmless.
        tracing::warn!(%error, subject = %message.subject, "cannot acknowledge a message");
    }
}

/// How many events a consumer has handled (from the inbox).
pub async fn handled_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from kit_inbox").fetch_one(pool).await
}
