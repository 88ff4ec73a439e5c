//! `pension`: one binary for the whole platform. `pension all` runs every service and the gateway in one process
//! (one machine, development, small deployments); `pension <service>` runs one of them (Kubernetes, one Deployment
//! each). The same code either way, the way Loki and Mimir pick a target.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kit::process::Process;
use kit::redis::{Redis, RedisConfig};
use kit::service::{Platform, ServiceConfig};

#[derive(Debug, Parser)]
#[command(
    name = "pension",
    version,
    about = "机关事业单位养老保险参保登记平台 — the provincial pension enrollment platform"
)]
struct Cli {
    /// A TOML configuration file; `PENSION__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, env = "PENSION_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every service and the gateway in one process.
    All,
    /// The gateway: web UI, JSON API, operator gRPC.
    Gateway,
    /// Identity and CA verification.
    Identity,
    /// Insured units and their declarations.
    Units,
    /// Staff and retirees.
    Personnel,
    /// The printed registration forms.
    Printing,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kit::process::main(cli.config, move |process| async move {
        match cli.command {
            Command::All => run_all(process).await,
            Command::Gateway => gateway::run(process).await,
            Command::Identity => identity::run(process).await,
            Command::Units => units::run(process).await,
            Command::Personnel => personnel::run(process).await,
            Command::Printing => printing::run(process).await,
        }
    })
}

/// Builds every component on one NATS connection and one readiness, then runs them until shutdown. The gateway's
/// HTTP port serves the admin endpoints for the whole process.
async fn run_all(process: Process) -> anyhow::Result<()> {
    // Every section is read before anything connects, so a configuration mistake stops start-up untouched.
    let settings = &process.settings;
    let identity_config = settings.section::<ServiceConfig>("identity")?;
    let units_config = settings.section::<ServiceConfig>("units")?;
    let personnel_config = settings.section::<ServiceConfig>("personnel")?;
    let printing_config = settings.section::<ServiceConfig>("printing")?;
    let gateway_config = settings.section::<gateway::Config>("gateway")?;
    let redis = Redis::connect(&settings.section::<RedisConfig>("redis")?).context("redis configuration")?;
    let platform = Platform::connect(&process, "pension-all").await?;
    let identity = identity::build(&identity_config, &platform, false).await?;
    let units = units::build(&units_config, &platform, false).await?;
    let personnel = personnel::build(&personnel_config, &platform, false).await?;
    let printing = printing::build(&printing_config, &platform, false).await?;
    let gateway = gateway::build(&gateway_config, &platform, redis).await?;
    tracing::info!(
        http = gateway.http_port(),
        grpc = gateway.grpc_port(),
        "pension all: every service is up; open http://127.0.0.1:{}/",
        gateway.http_port()
    );
    let shutdown = process.shutdown.clone();
    let (identity, units, personnel, printing, gateway) = tokio::join!(
        identity.run(shutdown.clone()),
        units.run(shutdown.clone()),
        personnel.run(shutdown.clone()),
        printing.run(shutdown.clone()),
        gateway.run(shutdown.clone()),
    );
    identity.and(units).and(personnel).and(printing).and(gateway)
}
