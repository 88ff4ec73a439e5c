//! What every binary does before and around its component: read the configuration, install logging, and turn
//! SIGTERM or Ctrl-C into readiness "draining" followed by a cancelled shutdown token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::Settings;
use crate::telemetry::TelemetryConfig;

/// The `process` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    /// How long readiness reports "draining" before the servers stop taking requests, so the orchestrator removes
    /// the instance from its endpoints first. 0 in development; a few seconds on Kubernetes.
    #[serde(with = "crate::config::millis")]
    pub drain_delay: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self { drain_delay: Duration::ZERO }
    }
}

/// The running process: its configuration, readiness and shutdown.
#[derive(Debug, Clone)]
pub struct Process {
    pub settings: Settings,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
}

impl Process {
    /// Loads the configuration (the file, if given, then `PENSION__…` variables), installs logging and the signal
    /// handler. Must run inside the tokio runtime.
    pub fn start(config_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let settings = Settings::load(config_file.as_deref())?;
        let telemetry: TelemetryConfig = settings.section("telemetry")?;
        crate::telemetry::init(&telemetry);
        let process_config: ProcessConfig = settings.section("process")?;
        let readiness = Readiness::default();
        let signal_readiness = readiness.clone();
        let shutdown = crate::shutdown::token_from(async move {
            crate::shutdown::signal().await;
            signal_readiness.set_draining();
            tokio::time::sleep(process_config.drain_delay).await;
        });
        Ok(Self { settings, readiness, shutdown })
    }
}

/// The body of a binary's `main`: starts the runtime and the process, runs `component`, and turns an error into a
/// message on stderr and a failing exit code (no panic, no backtrace for a configuration mistake).
pub fn main<F, Fut>(config_file: Option<PathBuf>, component: F) -> ExitCode
where
    F: FnOnce(Process) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let process = Process::start(config_file)?;
        component(process).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "stopped with an error");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration file named by `PENSION_CONFIG`, for binaries without a `--config` flag.
pub fn config_file_from_env() -> Option<PathBuf> {
    std::env::var_os("PENSION_CONFIG").map(PathBuf::from)
}
