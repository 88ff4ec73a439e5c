//! The transactional outbox: events written in the same transaction as the change they describe, and the relay
//! that moves them to JetStream.
//!
//! The relay claims unpublished rows with `FOR UPDATE SKIP LOCKED` (never by an id cursor: sequence and UUID values
//! commit out of order, so a cursor would skip a row committed late), publishes them all before awaiting any ack,
//! and marks only the acknowledged ones published, in the same transaction that held the claim. A crash anywhere
//! leaves the rows unpublished; the next attempt republishes them with the same `Nats-Msg-Id`, which JetStream
//! drops as a duplicate. So no event is lost, and none is doubled.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Adds an event to the outbox inside the caller's transaction. `id` becomes the message's `Nats-Msg-Id`; use
/// [`new_event_id`] unless the event has a natural id.
pub async fn enqueue(
    transaction: &mut PgConnection,
    id: Uuid,
    subject: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("insert into kit_outbox (id, subject, payload) values ($1, $2, $3)")
        .bind(id)
        .bind(subject)
        .bind(payload)
        .execute(transaction)
        .await?;
    Ok(())
}

/// Adds many events of one subject in one statement, e.g. one per person of an approved roster.
pub async fn enqueue_many(
    transaction: &mut PgConnection,
    subject: &str,
    ids: &[Uuid],
    payloads: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into kit_outbox (id, subject, payload) select id, $2, payload \
         from unnest($1::uuid[], $3::bytea[]) as events (id, payload)",
    )
    .bind(ids)
    .bind(subject)
    .bind(payloads)
    .execute(transaction)
    .await?;
    Ok(())
}

/// The facts every event carries: its id, now, who caused it, and the current request's trace id.
pub fn event_meta(event_id: Uuid, actor: &str) -> proto::events::EventMeta {
    proto::events::EventMeta {
        event_id: event_id.to_string(),
        occurred_at: Some(crate::convert::timestamp(time::OffsetDateTime::now_utc())),
        actor: actor.to_owned(),
        trace_id: crate::trace::TraceContext::current().map(|context| context.trace_id_hex()).unwrap_or_default(),
    }
}

/// A new event id: UUID v7, so ids sort roughly by creation time and the relay publishes oldest first.
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction.
    pub batch_size: i64,
    /// How often an idle relay looks for rows written by other processes (writers in this process wake it).
    pub idle_poll: Duration,
    /// How long published rows are kept, for inspection, before they are pruned.
    pub retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { batch_size: 500, idle_poll: Duration::from_millis(200), retention: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// Publishes outbox rows to JetStream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    config: RelayConfig,
    wake: Arc<Notify>,
    /// The stream the events go to (name, subject filter), ensured before publishing: when NATS was down at
    /// start-up nobody else created it, and JetStream refuses publishes to a subject without a stream.
    stream: Option<(String, String)>,
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayRound {
    /// Events JetStream acknowledged, now marked published.
    pub published: usize,
    /// Events claimed but not acknowledged (NATS down, no stream, a timeout); they stay queued.
    pub unpublished: usize,
}

/// Why one relay round failed; the rows it claimed stay unpublished for the next round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
}

impl Relay {
    pub fn new(pool: PgPool, jetstream: jetstream::Context, config: RelayConfig) -> Self {
        Self { pool, jetstream, config, wake: Arc::new(Notify::new()), stream: None }
    }

    /// Makes the relay create the stream `name` over `subjects` whenever it is not known to exist.
    pub fn with_stream(mut self, name: String, subjects: String) -> Self {
        self.stream = Some((name, subjects));
        self
    }

    async fn ensure_stream(&self) -> bool {
        let Some((name, subjects)) = &self.stream else { return true };
        match crate::nats::ensure_stream(&self.jetstream, name, subjects).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, stream = %name, "cannot ensure the event stream");
                false
            }
        }
    }

    /// A handle writers notify after committing an event, so the relay publishes at once instead of at its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publishes until `shutdown` is cancelled, then flushes what is left (within a few seconds) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut stream_known = false;
        let mut last_prune = tokio::time::Instant::now();
        loop {
            if !stream_known {
                stream_known = self.ensure_stream().await;
            }
            match self.publish_batch().await {
                Ok(round) if round.unpublished > 0 => {
                    failures = failures.saturating_add(1);
                    stream_known = false;
                    tracing::warn!(
                        unpublished = round.unpublished,
                        failures,
                        "outbox events not acknowledged; retrying"
                    );
                }
                Ok(round) if round.published as i64 >= self.config.batch_size => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    stream_known = false;
                    tracing::warn!(%error, failures, "outbox relay round failed; retrying");
                }
            }
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = tokio::time::Instant::now();
                if let Err(error) = self.prune().await {
                    tracing::warn!(%error, "cannot prune the outbox");
                }
            }
            let pause = if failures == 0 {
                self.config.idle_poll
            } else {
                Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)))
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.flush(Duration::from_secs(5)).await;
    }

    /// Publishes until the outbox is empty or `limit` has passed (the shutdown path).
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.publish_batch()).await {
                Ok(Ok(round)) if round.published == 0 && round.unpublished == 0 => return,
                Ok(Ok(round)) if round.published == 0 => {
                    tracing::warn!("outbox flush gets no acknowledgements; the rest is published after restart");
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "outbox flush stopped; the rest is published after restart");
                    return;
                }
                Err(_) => break,
            }
        }
        tracing::warn!("outbox flush ran out of time; the rest is published after restart");
    }

    /// One round: claim a batch, publish it pipelined, mark what JetStream acknowledged.
    pub async fn publish_batch(&self) -> Result<RelayRound, RelayError> {
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
            "select id, subject, payload from kit_outbox where published_at is null \
             order by id limit $1 for update skip locked",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            transaction.commit().await?;
            return Ok(RelayRound::default());
        }
        let claimed = rows.len();
        let mut pending = Vec::with_capacity(rows.len());
        for (id, subject, payload) in rows {
            let publish =
                jetstream::message::PublishMessage::build().payload(payload.into()).message_id(id.to_string());
            match self.jetstream.send_publish(subject, publish).await {
                Ok(ack) => pending.push((id, ack)),
                Err(error) => {
                    tracing::warn!(%error, "cannot publish an outbox event; it stays queued");
                    break;
                }
            }
        }
        let acks = futures::future::join_all(pending.into_iter().map(|(id, ack)| async move { (id, ack.await) })).await;
        let mut published = Vec::with_capacity(acks.len());
        for (id, ack) in acks {
            match ack {
                Ok(_) => published.push(id),
                // Possibly stored although unacknowledged: the retry reuses the id, so JetStream drops the copy.
                Err(error) => {
                    tracing::warn!(%error, event_id = %id, "no acknowledgement for an outbox event")
                }
            }
        }
        sqlx::query("update kit_outbox set published_at = now() where id = any($1)")
            .bind(&published)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        metrics::counter!("outbox_published_total").increment(published.len() as u64);
        Ok(RelayRound { published: published.len(), unpublished: claimed - published.len() })
    }

    async fn prune(&self) -> Result<(), sqlx::Error> {
        let cutoff = time::OffsetDateTime::now_utc() - self.config.retention;
        sqlx::query("delete from kit_outbox where published_at < $1").bind(cutoff).execute(&self.pool).await?;
        Ok(())
    }
}

/// Events written and not yet acknowledged by JetStream.
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from kit_outbox where published_at is null").fetch_one(pool).await
}
