//! The admin endpoints every process serves: `/healthz` (the process is alive), `/readyz` (every dependency
//! answers, each reported by name) and `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use futures::future::BoxFuture;
use serde::Serialize;

/// What one readiness check answers: `Err` carries the reason, shown in `/readyz`.
pub type CheckResult = Result<(), String>;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, CheckResult> + Send + Sync>;

/// How long one check may take before it counts as failed; a hung dependency must not hang the probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The named checks of a process. Several components may add a check under the same name (in `pension all`
/// every service adds "postgres" for its own database); the name is then ready only when all of them are.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(String, CheckFn)>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("draining", &self.draining).finish_non_exhaustive()
    }
}

/// One dependency's state in `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub draining: bool,
    pub checks: BTreeMap<String, CheckReport>,
}

impl Readiness {
    /// Adds a check under `name`.
    pub fn add<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.lock().push((name.into(), check));
    }

    /// Marks the process as shutting down: readiness turns false at once, so the orchestrator stops sending
    /// traffic before in-flight requests are drained.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check concurrently.
    pub async fn report(&self) -> ReadinessReport {
        let checks: Vec<(String, CheckFn)> = self.lock().clone();
        let results = futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            };
            (name, result, started.elapsed())
        }))
        .await;
        let mut merged: BTreeMap<String, CheckReport> = BTreeMap::new();
        for (name, result, elapsed) in results {
            let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let entry = merged.entry(name).or_insert(CheckReport { ok: true, error: None, latency_ms: 0 });
            entry.latency_ms = entry.latency_ms.max(latency_ms);
            if let Err(error) = result {
                entry.ok = false;
                entry.error = Some(match entry.error.take() {
                    Some(previous) => format!("{previous}; {error}"),
                    None => error,
                });
            }
        }
        let draining = self.draining.load(Ordering::SeqCst);
        let ready = !draining && merged.values().all(|check| check.ok);
        ReadinessReport { ready, draining, checks: merged }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, CheckFn)>> {
        // A panic while holding this lock cannot leave the list half-changed (push is the only mutation).
        self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { crate::telemetry::metrics_handle().render() }))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let report = readiness.report().await;
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes the requests in flight.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let router = router.layer(crate::trace::TraceLayer);
    // Handlers may read the peer address (for the audit log) through `ConnectInfo<SocketAddr>`.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_ready_only_when_every_check_under_it_is() {
        let readiness = Readiness::default();
        readiness.add("postgres", || async { Ok(()) });
        readiness.add("postgres", || async { Err("connection refused".to_owned()) });
        readiness.add("nats", || async { Ok(()) });
        let report = readiness.report().await;
        assert!(!report.ready);
        assert!(report.checks["nats"].ok);
        assert!(!report.checks["postgres"].ok);
        assert_eq!(report.checks["postgres"].error.as_deref(), Some("connection refused"));
    }

    #[tokio::test]
    async fn draining_is_not_ready() {
        let readiness = Readiness::default();
        readiness.add("nats", || async { Ok(()) });
        assert!(readiness.report().await.ready);
        readiness.set_draining();
        assert!(!readiness.report().await.ready);
    }
}
