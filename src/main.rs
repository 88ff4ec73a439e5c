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
    /// Load the establishment registry (编制通) from a file.
    Registry {
        #[command(subcommand)]
        action: FileAction,
    },
    /// Load the handling agencies (经办机构) from a file.
    Agencies {
        #[command(subcommand)]
        action: FileAction,
    },
    /// The provincial CA.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Keys of the earlier systems, and the data keys of personal numbers at rest.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The enrollment dashboards' projection (kept by units from the services' events).
    Progress {
        #[command(subcommand)]
        action: ProgressAction,
    },
    /// Development and demonstration data.
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Create a development CA (key, self-signed root, empty CRL) and the gateway's TLS certificate, in a folder.
    /// Production takes the CA from configuration or a Kubernetes secret instead.
    Init {
        #[arg(long, default_value = ".run/ca")]
        dir: PathBuf,
        /// Names the gateway's 8443 certificate is valid for.
        #[arg(long = "server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        server_names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Load the earlier CAs' roots (PEM) and their key list (CSV or xlsx: 证书序列号, 登录用户名, 密码哈希, 机构编码)
    /// through the running identity service.
    ImportLegacy {
        #[arg(long)]
        roots: PathBuf,
        #[arg(long)]
        keys: PathBuf,
    },
    /// Seal every ID number, account and document stored under an older data key again under the current one, in
    /// personnel, units and printing, while the platform keeps serving. First give every instance the new key as `data_key` (with a
    /// higher `data_key_version`) and the old one in `retired_data_keys`; once this reports nothing remaining, the
    /// old key can go.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum ProgressAction {
    /// Rebuild the projection from the event streams into temporary tables and compare it with the one kept live;
    /// exits non-zero on any difference. Reads only: the live projection is left as it is.
    Verify,
}

#[derive(Debug, Subcommand)]
enum DemoAction {
    /// Create (once) the demo accounts through the running platform: a unit operator whose key the CA made, an
    /// agency reviewer, a CA operator and a province admin, each with a certificate; writes `demo.json`.
    Seed {
        #[arg(long, default_value = ".run/demo")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum FileAction {
    /// Load a CSV (UTF-8) or xlsx file through the running identity service; bad rows are listed by row number.
    Import {
        /// The file to load.
        file: PathBuf,
    },
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
            Command::Registry { action: FileAction::Import { file } } => {
                import(process, ImportKind::Registry, file).await
            }
            Command::Agencies { action: FileAction::Import { file } } => {
                import(process, ImportKind::Agencies, file).await
            }
            Command::Ca { action: CaAction::Init { dir, server_names } } => {
                let files = identity::ca::init_development(&dir, &server_names)?;
                println!("development CA created: {} (key {})", files.certificate.display(), files.key.display());
                println!("gateway TLS certificate: {}", files.server_certificate.display());
                Ok(())
            }
            Command::Keys { action: KeysAction::ImportLegacy { roots, keys } } => {
                import_legacy(process, roots, keys).await
            }
            Command::Keys { action: KeysAction::Rotate } => rotate_data_keys(process).await,
            Command::Demo { action: DemoAction::Seed { out } } => pension::demo::seed(process, &out).await,
            Command::Progress { action: ProgressAction::Verify } => verify_progress(process).await,
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

#[derive(Debug, Clone, Copy)]
enum ImportKind {
    Registry,
    Agencies,
}

/// `pension keys import-legacy`: as the registry import, under the operating-system user's name.
async fn import_legacy(process: Process, roots: PathBuf, keys: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use proto::identity::{ImportLegacyKeysRequest, identity_client::IdentityClient};

    let roots_pem = std::fs::read_to_string(&roots).with_context(|| format!("cannot read {}", roots.display()))?;
    let file = std::fs::read(&keys).with_context(|| format!("cannot read {}", keys.display()))?;
    let platform = Platform::connect(&process, "pension-cli").await?;
    platform.wait_connected(std::time::Duration::from_secs(10)).await?;
    let request = ImportLegacyKeysRequest { caller: cli_caller(), roots_pem, file };
    let report = IdentityClient::new(platform.channel(proto::names::Service::Identity))
        .import_legacy_keys(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    println!("{}: {} keys loaded, {} refused", keys.display(), report.loaded, report.errors.len());
    for error in &report.errors {
        println!("  row {} {}: {} ({})", error.row, error.column, error.message, error.code);
    }
    Ok(())
}

/// `pension keys rotate`: each sealing service re-seals its values; the counts are printed, and anything left
/// under an older key makes the command fail so a script notices.
async fn verify_progress(process: Process) -> anyhow::Result<()> {
    let config: units::Config = process.settings.section("units")?;
    let platform = Platform::connect(&process, "pension-cli").await?;
    platform.wait_connected(std::time::Duration::from_secs(10)).await?;
    let pool = kit::db::connect_application(&config.service.database, units::DEFAULTS.database).await?;
    let jetstream = async_nats::jetstream::new(platform.nats.clone());
    let verification = units::progress::verify(&pool, &jetstream, &platform.namespace).await?;
    for (stream, replayed) in &verification.replayed {
        println!("{stream}: {replayed} events replayed");
    }
    for (table, differences) in &verification.differences {
        println!("{table}: {} rows differ", differences.len());
        for difference in differences {
            println!("  {difference}");
        }
    }
    if verification.matches() {
        println!("the live projection equals its rebuild from the events");
        return Ok(());
    }
    if verification.pending > 0 {
        anyhow::bail!("the projection differs, and {} events were still pending: run it again", verification.pending);
    }
    anyhow::bail!("the live projection differs from its rebuild from the events")
}

async fn rotate_data_keys(process: Process) -> anyhow::Result<()> {
    use proto::personnel::personnel_client::PersonnelClient;
    use proto::printing::printing_client::PrintingClient;
    use proto::units::units_client::UnitsClient;

    let platform = Platform::connect(&process, "pension-cli").await?;
    platform.wait_connected(std::time::Duration::from_secs(10)).await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let caller =
        Some(proto::common::Caller { actor: format!("cli:{user}"), role: "system".into(), ..Default::default() });
    let request = || proto::common::RotateDataKeyRequest { caller: caller.clone() };
    let failed =
        |service: &'static str| move |status: tonic::Status| anyhow::anyhow!("{service}: {}", status.message());
    // A whole table may take a while: no short deadline.
    let long = std::time::Duration::from_secs(3600);
    let personnel = PersonnelClient::new(platform.channel_with_timeout(proto::names::Service::Personnel, long))
        .rotate_data_key(request())
        .await
        .map_err(failed("personnel"))?
        .into_inner();
    let units = UnitsClient::new(platform.channel_with_timeout(proto::names::Service::Units, long))
        .rotate_data_key(request())
        .await
        .map_err(failed("units"))?
        .into_inner();
    let printing = PrintingClient::new(platform.channel_with_timeout(proto::names::Service::Printing, long))
        .rotate_data_key(request())
        .await
        .map_err(failed("printing"))?
        .into_inner();
    for (service, reply) in [("personnel", &personnel), ("units", &units), ("printing", &printing)] {
        println!(
            "{service}: {} values sealed again under data key version {}, {} remaining",
            reply.resealed, reply.version, reply.remaining
        );
    }
    if personnel.remaining + units.remaining + printing.remaining > 0 {
        anyhow::bail!("some values are still under an older key (held by saves throughout): run it again");
    }
    Ok(())
}

/// The operator on the platform's own machine, who holds its NATS credentials, acts as the province admin.
fn cli_caller() -> Option<proto::common::Caller> {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    Some(proto::common::Caller { actor: format!("cli:{user}"), role: "province_admin".into(), ..Default::default() })
}

/// `pension registry import FILE` / `pension agencies import FILE`: the operator on the platform's own machine
/// acts as the province admin; the import is audited under the operating-system user's name.
async fn import(process: Process, kind: ImportKind, file: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use proto::identity::{ImportFileRequest, identity_client::IdentityClient};

    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let platform = Platform::connect(&process, "pension-cli").await?;
    platform.wait_connected(std::time::Duration::from_secs(10)).await?;
    let request = ImportFileRequest { caller: cli_caller(), file: bytes };
    let mut identity = IdentityClient::new(platform.channel(proto::names::Service::Identity));
    let reply = match kind {
        ImportKind::Registry => identity.import_registry(request).await,
        ImportKind::Agencies => identity.import_agencies(request).await,
    };
    let report = reply.map_err(|status| anyhow::anyhow!("{}", status.message()))?.into_inner();
    println!("{}: {} rows loaded, {} refused", file.display(), report.loaded, report.errors.len());
    for error in &report.errors {
        println!("  row {} {}: {} ({})", error.row, error.column, error.message, error.code);
    }
    Ok(())
}
