//! `pension`: one binary for the whole platform. `pension all` runs every service and the gateway in one process
//! (one machine, development, small deployments); `pension <service>` runs one of them (Kubernetes, one Deployment
//! each). The same code either way, the way Loki and Mimir pick a target.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kit::process::Process;
use kit::service::Platform;
use pension::{AllInOne, AllInOneConfig};

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

/// `pension all`: every component in this process.
async fn run_all(process: Process) -> anyhow::Result<()> {
    let config = AllInOneConfig::from_settings(&process.settings)?;
    let platform = Platform::connect(&process, "pension-all").await?;
    let all = AllInOne::build(&config, &platform).await?;
    tracing::info!(
        http = all.http_port(),
        grpc = all.grpc_port(),
        "pension all: every service is up; open http://127.0.0.1:{}/",
        all.http_port()
    );
    all.run(process.shutdown.clone()).await
}
