//! The NATS connection and JetStream streams.

use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;

use crate::admin::CheckResult;

/// The `nats` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    pub url: String,
    /// The prefix of every subject, stream and consumer name (see `proto::names`); tests use their own.
    pub namespace: String,
    /// How long an RPC waits for its reply when the caller sets no deadline.
    #[serde(with = "crate::config::millis")]
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            namespace: "pension".into(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Connects, and keeps reconnecting for ever: a NATS restart must not need a service restart. The first connection
/// is also retried in the background, so a service starts (and reports "nats" not ready) while NATS is down.
pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(config.request_timeout))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::debug!(event = %other, "nats event"),
            }
        })
        .connect(&config.url)
        .await
}

/// Readiness: connected, and a round trip to the server answers.
pub async fn check(client: &async_nats::Client) -> CheckResult {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err("not connected".into());
    }
    match tokio::time::timeout(Duration::from_secs(1), client.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 1 s".into()),
    }
}

/// Creates a producing service's event stream, or finds it: every producer and consumer calls this at start-up,
/// so the order in which services start does not matter.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    name: &str,
    subjects_filter: &str,
) -> Result<jetstream::stream::Stream, jetstream::context::CreateStreamError> {
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects_filter.to_owned()],
            storage: jetstream::stream::StorageType::File,
            retention: jetstream::stream::RetentionPolicy::Limits,
            // The window in which a republished outbox row (same Nats-Msg-Id) is recognised and dropped. The relay
            // republishes within seconds of a crash; ten minutes leaves room for a NATS outage in between.
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
}
