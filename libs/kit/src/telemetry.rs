//! Logging and metrics. Logs are readable lines in development and JSON in production; every line written inside a
//! request carries the request's `request_id` and `trace_id` from the span that the servers open around it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Pretty,
    /// One JSON object a line, for the log collector in production.
    Json,
}

/// The `telemetry` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,kit=debug`; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info".into() }
    }
}

/// Installs the global subscriber and the metrics recorder. Calling it again (as tests do) keeps the first ones.
pub fn init(config: &TelemetryConfig) {
    // Installed now, not on the first scrape: `metrics` drops whatever is recorded while no recorder is installed.
    metrics_handle();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.format {
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_target(false)).try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false))
            .try_init(),
    };
    // A second initialisation in the same process is expected in tests; the first subscriber stays.
    drop(result);
}

/// The process-wide Prometheus recorder, installed on first use. One per process, because `metrics` has one global
/// recorder; `pension all` and tests with several services in one process share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then our handle renders nothing, which tests tolerate.
            drop(metrics::set_global_recorder(recorder));
            handle
        })
        .clone()
}
