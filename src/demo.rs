//! `pension demo seed`: the accounts a newcomer logs in with after `make run`, made through the running platform the
//! way real ones are made: the unit applies for a key and the CA makes it; the staff accounts are created with
//! their certificates. Their certificates, keys and PKCS#12 files go to `<out>/demo/`, and `<out>/demo.json` lists
//! them. Run once: when `demo.json` exists, nothing is done.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kit::process::Process;
use kit::rpc::NatsChannel;
use kit::service::Platform;
use proto::common::Caller;
use proto::identity::identity_client::IdentityClient;
use proto::identity::{ApplyForKeyRequest, CreateAccountRequest, IssueCertificateRequest, IssuedCertificate};
use serde::Serialize;

/// The demo unit: the first of the demo registry.
const DEMO_UNIT: (&str, &str) = ("双鸭山市财政局", "机关");

/// One demo account as `demo.json` lists it.
#[derive(Debug, Serialize)]
struct DemoAccount {
    role: String,
    username: String,
    password: String,
    certificate: PathBuf,
    key: PathBuf,
    pkcs12: PathBuf,
    pkcs12_password: String,
}

#[derive(Debug, Serialize)]
struct DemoFile {
    accounts: Vec<DemoAccount>,
}

/// The platform's own command line, on its machine: it acts as the CA operator and the admin here.
fn system() -> Option<Caller> {
    Some(Caller { actor: "demo-seed".into(), role: "system".into(), ..Caller::default() })
}

fn rpc_error(what: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |status| anyhow::anyhow!("{what}: {} ({:?})", status.message(), status.code())
}

pub async fn seed(process: Process, out: &Path) -> anyhow::Result<()> {
    let listing = out.join("demo.json");
    if listing.exists() {
        println!("demo accounts exist already: {}", listing.display());
        return Ok(());
    }
    let folder = out.join("demo");
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let folder = folder.canonicalize()?;
    let platform = Platform::connect(&process, "pension-demo").await?;
    platform.wait_connected(std::time::Duration::from_secs(10)).await?;
    let mut identity = IdentityClient::new(platform.channel(proto::names::Service::Identity));
    let mut accounts = Vec::new();

    let unit_password = "Unit2026demo";
    let application = identity
        .apply_for_key(ApplyForKeyRequest {
            caller: system(),
            category: "机关事业养老保险密钥注册".into(),
            unit_type: DEMO_UNIT.1.into(),
            unit_name: DEMO_UNIT.0.into(),
            applicant_name: "张伟".into(),
            applicant_id_number: "230502198001011238".into(),
            phone: "13804691234".into(),
            password: unit_password.into(),
        })
        .await
        .map_err(rpc_error("the demo key application (is the demo registry loaded?)"))?
        .into_inner();
    let issued = identity
        .issue_certificate(IssueCertificateRequest {
            caller: system(),
            application_id: application.application_id.clone(),
            csr_pem: String::new(),
        })
        .await
        .map_err(rpc_error("making the demo unit's certificate"))?
        .into_inner();
    accounts.push(write_account(&folder, "unit_operator", &application.username, unit_password, &issued)?);

    let staff = [
        ("agency_reviewer", "reviewer", "王审核（双鸭山市社会保险事业中心）", "230500", "Review2026demo"),
        ("ca_operator", "ca.operator", "李制证", "", "Ca2026demo"),
        ("province_admin", "province.admin", "赵管理", "", "Admin2026demo"),
    ];
    for (role, username, display_name, agency_code, password) in staff {
        let created = create(&mut identity, role, username, display_name, agency_code, password).await?;
        accounts.push(write_account(&folder, role, username, password, &created)?);
    }
    let file = DemoFile { accounts };
    std::fs::write(&listing, serde_json::to_vec_pretty(&file)?)?;
    println!("demo accounts written to {}", listing.display());
    Ok(())
}

async fn create(
    identity: &mut IdentityClient<NatsChannel>,
    role: &str,
    username: &str,
    display_name: &str,
    agency_code: &str,
    password: &str,
) -> anyhow::Result<IssuedCertificate> {
    let created = identity
        .create_account(CreateAccountRequest {
            caller: system(),
            username: username.into(),
            display_name: display_name.into(),
            role: role.into(),
            agency_code: agency_code.into(),
            password: password.into(),
        })
        .await
        .map_err(rpc_error("creating a demo staff account"))?
        .into_inner();
    created.certificate.context("the account came without its certificate")
}

/// Writes the certificate (with the CA after it), the private key and the PKCS#12 of one account.
fn write_account(
    folder: &Path,
    role: &str,
    username: &str,
    password: &str,
    issued: &IssuedCertificate,
) -> anyhow::Result<DemoAccount> {
    use std::os::unix::fs::PermissionsExt as _;
    let certificate = issued.certificate.as_ref().context("no certificate")?;
    let paths = (
        folder.join(format!("{username}.crt")),
        folder.join(format!("{username}.key")),
        folder.join(format!("{username}.p12")),
    );
    std::fs::write(&paths.0, format!("{}{}", certificate.certificate_pem, issued.ca_certificate_pem))?;
    std::fs::write(&paths.1, &issued.private_key_pem)?;
    std::fs::write(&paths.2, &issued.pkcs12)?;
    for private in [&paths.1, &paths.2] {
        std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(DemoAccount {
        role: role.into(),
        username: username.into(),
        password: password.into(),
        certificate: paths.0,
        key: paths.1,
        pkcs12: paths.2,
        pkcs12_password: issued.pkcs12_password.clone(),
    })
}
