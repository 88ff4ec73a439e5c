//! `pension demo seed`: what a newcomer finds after `make run`, made through the running platform the way real data
//! is made. The accounts: the unit applies for a key and the CA makes it; the staff accounts are created with their
//! certificates. Their certificates, keys and PKCS#12 files go to `<out>/demo/`, and `<out>/demo.json` lists them;
//! they are made once (when `demo.json` exists, they are kept). The demo unit's data: its operator logs in (which
//! creates the draft record), fills in the unit record and registers a dozen staff and a few retirees, each checked
//! and saved as the pages do it; done whenever the unit has no people yet.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kit::process::Process;
use kit::rpc::NatsChannel;
use kit::service::Platform;
use proto::common::Caller;
use proto::identity::identity_client::IdentityClient;
use proto::identity::{
    ApplyForKeyRequest, CreateAccountRequest, IssueCertificateRequest, IssuedCertificate, LoginRequest,
};
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{CheckPersonRequest, CreatePersonRequest, ListPersonsRequest, PersonInput};
use proto::units::units_client::UnitsClient;
use proto::units::{GetUnitRecordRequest, UnitRecordInput, UpdateUnitRecordRequest};
use serde::{Deserialize, Serialize};

/// The demo unit: the first of the demo registry.
const DEMO_UNIT: (&str, &str) = ("双鸭山市财政局", "机关");

/// One demo account as `demo.json` lists it.
#[derive(Debug, Serialize, Deserialize)]
struct DemoAccount {
    role: String,
    username: String,
    password: String,
    certificate: PathBuf,
    key: PathBuf,
    pkcs12: PathBuf,
    pkcs12_password: String,
}

#[derive(Debug, Serialize, Deserialize)]
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
    let platform = Platform::connect(&process, "pension-demo").await?;
    platform.wait_connected(std::time::Duration::from_secs(10)).await?;
    let listing = out.join("demo.json");
    if listing.exists() {
        println!("demo accounts exist already: {}", listing.display());
    } else {
        seed_accounts(&platform, out, &listing).await?;
    }
    seed_api_client(&platform, out).await?;
    let file: DemoFile = serde_json::from_slice(&std::fs::read(&listing)?).context("demo.json")?;
    let unit = file.accounts.iter().find(|account| account.role == "unit_operator").context("no demo unit operator")?;
    seed_unit(&platform, unit).await
}

async fn seed_accounts(platform: &Platform, out: &Path, listing: &Path) -> anyhow::Result<()> {
    let folder = out.join("demo");
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let folder = folder.canonicalize()?;
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
    std::fs::write(listing, serde_json::to_vec_pretty(&file)?)?;
    println!("demo accounts written to {}", listing.display());
    Ok(())
}

/// The demo API client of another agency, with every scope and a certificate of the platform's CA, so that the
/// grpcurl examples of docs/agency-api.md run against `make run` as written. Made once.
async fn seed_api_client(platform: &Platform, out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let folder = out.join("demo");
    let (certificate_path, key_path) = (folder.join("demo-agency.crt"), folder.join("demo-agency.key"));
    if certificate_path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let mut identity = IdentityClient::new(platform.channel(proto::names::Service::Identity));
    let created = identity
        .create_api_client(proto::identity::CreateApiClientRequest {
            caller: system(),
            client_id: "demo-agency".into(),
            display_name: "演示部门（省财政厅）".into(),
            scopes: ["persons:read", "units:read", "events:read", "registry:write"].map(String::from).to_vec(),
            calls_per_minute: 0,
        })
        .await;
    match created {
        Ok(_) => {}
        // Made by an earlier run whose files are gone: a new certificate for it is all that is needed.
        Err(status) if kit::status::reason(&status).as_deref() == Some("client_exists") => {}
        Err(status) => return Err(rpc_error("creating the demo API client")(status)),
    }
    let issued = identity
        .issue_api_client_certificate(proto::identity::IssueApiClientCertificateRequest {
            caller: system(),
            client_id: "demo-agency".into(),
            csr_pem: String::new(),
        })
        .await
        .map_err(rpc_error("issuing the demo API client's certificate"))?
        .into_inner();
    let certificate = issued.certificate.context("no certificate")?;
    std::fs::write(&certificate_path, &certificate.pem)?;
    std::fs::write(&key_path, &issued.private_key_pem)?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    println!("demo API client written to {}", certificate_path.display());
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

/// The demo unit's record.
fn demo_unit_record() -> UnitRecordInput {
    UnitRecordInput {
        unit_type: "机关".into(),
        region_code: "230502".into(),
        subordination: "市".into(),
        funding_source: "全额拨款".into(),
        legal_representative: "王建国".into(),
        address: "双鸭山市尖山区新兴大街88号".into(),
        post_code: "155100".into(),
        contact_name: "张伟".into(),
        contact_phone: "0469-4221234".into(),
        email: "rsk@czj.shuangyashan.gov.cn".into(),
        clerk_name: "张伟".into(),
        clerk_phone: "13804691234".into(),
        bank_name: "中国工商银行双鸭山分行".into(),
        bank_account_name: "双鸭山市财政局".into(),
        bank_account: "0907021009000012345".into(),
        administrative_posts: "42".into(),
        logistics_posts: "5".into(),
        ..UnitRecordInput::default()
    }
}

/// One of the demo unit's people.
struct DemoPerson {
    kind: &'static str,
    name: &'static str,
    id_number: &'static str,
    work_start: &'static str,
    joined_unit: &'static str,
    personnel_status: &'static str,
    /// A retiree's retirement date and monthly pension (正常退休).
    retirement: Option<(&'static str, &'static str)>,
}

const fn staff(
    name: &'static str,
    id_number: &'static str,
    work_start: &'static str,
    joined_unit: &'static str,
    personnel_status: &'static str,
) -> DemoPerson {
    DemoPerson { kind: "staff", name, id_number, work_start, joined_unit, personnel_status, retirement: None }
}

const fn retiree(
    kind: &'static str,
    name: &'static str,
    id_number: &'static str,
    work_start: &'static str,
    retired: &'static str,
    pension: &'static str,
) -> DemoPerson {
    DemoPerson {
        kind,
        name,
        id_number,
        work_start,
        joined_unit: "",
        personnel_status: "公务员",
        retirement: Some((retired, pension)),
    }
}

/// The demo unit's people: a dozen staff, two who retired before 2014-10-01 and two after. All but three are known
/// to the demo population registry (`demo/population.csv`).
const DEMO_PEOPLE: [DemoPerson; 16] = [
    staff("张伟", "230502198001011238", "2002-07-01", "2010-03-01", "公务员"),
    staff("王秀英", "23050219820315224X", "2004-08-01", "2004-08-01", "公务员"),
    staff("李强", "230502197506203118", "1996-09-01", "2008-05-01", "公务员"),
    staff("刘洋", "230502198809114520", "2011-07-01", "2011-07-01", "参公人员"),
    staff("陈静", "230502199002185269", "2013-08-01", "2016-01-01", "公务员"),
    staff("杨帆", "230502198507306172", "2008-07-01", "2012-09-01", "公务员"),
    staff("赵敏", "230502199211057087", "2015-07-01", "2015-07-01", "专业技术人员"),
    staff("黄磊", "230502197804128195", "2000-07-01", "2006-04-01", "公务员"),
    staff("周婷", "230502199508239025", "2018-07-01", "2018-07-01", "公务员"),
    staff("吴刚", "230502197001021319", "1990-09-01", "1999-12-01", "工勤技能人员"),
    staff("徐丽", "230502198705162421", "2009-07-01", "2014-03-01", "公务员"),
    staff("孙浩", "230502199307160011", "2016-07-01", "2021-06-01", "公务员"),
    retiree("retiree_pre_reform", "马国华", "230502194403101713", "1962-09-01", "2004-03-31", "4860.00"),
    retiree("retiree_pre_reform", "朱桂兰", "230502195006282826", "1969-03-01", "2005-06-30", "4215.50"),
    retiree("retiree_post_reform", "钱振华", "23050619560412003X", "1976-12-01", "2016-04-30", "5630.00"),
    retiree("retiree_post_reform", "郑淑芬", "230502196209050042", "1981-07-01", "2017-09-30", "5102.80"),
];

/// The demo unit's operator logs in (so identity's first-login event creates the draft record), then fills in the
/// record and registers the people, each checked (校验) and saved with the warnings it raised accepted, as the pages
/// do. Nothing is done once the unit has people.
async fn seed_unit(platform: &Platform, unit: &DemoAccount) -> anyhow::Result<()> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let certificate = CertificateDer::pem_file_iter(&unit.certificate)
        .with_context(|| format!("cannot read {}", unit.certificate.display()))?
        .next()
        .context("no certificate in the demo unit's file")??;
    let mut identity = IdentityClient::new(platform.channel(proto::names::Service::Identity));
    let login = identity
        .login(LoginRequest {
            caller: system(),
            certificate_der: certificate.to_vec(),
            username: unit.username.clone(),
            password: unit.password.clone(),
        })
        .await
        .map_err(rpc_error("the demo unit's login"))?
        .into_inner();
    let account = login.account.context("the demo login came without its account")?;
    let operator = Some(Caller {
        actor: account.username.clone(),
        role: "unit_operator".into(),
        institution_code: account.institution_code.clone(),
        ..Caller::default()
    });
    let mut units = UnitsClient::new(platform.channel(proto::names::Service::Units));
    let mut personnel = PersonnelClient::new(platform.channel(proto::names::Service::Personnel));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let record = loop {
        let request = GetUnitRecordRequest { caller: operator.clone(), institution_code: String::new() };
        match units.get_unit_record(request).await {
            Ok(record) => break record.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(status) => return Err(rpc_error("the demo unit's draft record")(status)),
        }
    };
    let listed = personnel
        .list_persons(ListPersonsRequest { caller: operator.clone(), page_size: 1, ..ListPersonsRequest::default() })
        .await
        .map_err(rpc_error("the demo unit's people"))?
        .into_inner();
    if listed.total > 0 {
        println!("the demo unit {} has its people already", record.unit_name);
        return Ok(());
    }
    let input = UnitRecordInput { credit_code: record.credit_code.clone(), ..demo_unit_record() };
    let saved = units
        .update_unit_record(UpdateUnitRecordRequest { caller: operator.clone(), record: Some(input.clone()) })
        .await;
    if let Err(status) = saved {
        if kit::status::reason(&status).as_deref() != Some("warnings_not_accepted") {
            return Err(rpc_error("the demo unit's record")(status));
        }
        // The operator reads the warnings and accepts them, as on the page.
        let accepted = kit::status::violations(&status).into_iter().map(|warning| warning.code).collect();
        let input = UnitRecordInput { accepted_warnings: accepted, ..input };
        units
            .update_unit_record(UpdateUnitRecordRequest { caller: operator.clone(), record: Some(input) })
            .await
            .map_err(rpc_error("the demo unit's record"))?;
    }
    for (number, demo) in DEMO_PEOPLE.iter().enumerate() {
        let name = demo.name;
        let mut person = PersonInput {
            kind: demo.kind.into(),
            name: name.into(),
            id_type: "01".into(),
            id_number: demo.id_number.into(),
            funding_form: "全额拨款".into(),
            ethnicity: "01".into(),
            work_start: demo.work_start.into(),
            joined_unit: demo.joined_unit.into(),
            personnel_status: demo.personnel_status.into(),
            establishment: "编制内".into(),
            wage_base: "8200.00".into(),
            ..PersonInput::default()
        };
        if let Some((retired, pension)) = demo.retirement {
            person = PersonInput {
                wage_base: String::new(),
                retirement_date: retired.into(),
                retirement_category: "正常退休".into(),
                monthly_pension: pension.into(),
                pay_start_month: retired.get(..7).map(next_month).unwrap_or_default(),
                pay_bank: "中国工商银行双鸭山分行".into(),
                pay_account: format!("62220209070{}", demo.id_number[10..].replace('X', "0")),
                ..person
            };
        }
        let check = personnel
            .check_person(CheckPersonRequest {
                caller: operator.clone(),
                person: Some(person.clone()),
                person_id: String::new(),
            })
            .await
            .map_err(rpc_error("checking a demo person"))?
            .into_inner();
        if !check.ok {
            let errors: Vec<String> =
                check.errors.iter().map(|error| format!("{}: {}", error.field, error.message)).collect();
            anyhow::bail!("the demo person {name} does not pass 校验: {}", errors.join("; "));
        }
        let accepted_warnings = check.warnings.into_iter().map(|warning| warning.code).collect();
        personnel
            .create_person(CreatePersonRequest {
                caller: operator.clone(),
                person: Some(PersonInput { accepted_warnings, ..person }),
                // A seed cut short and run again saves nobody twice.
                idempotency_key: format!("demo-seed-{number}"),
            })
            .await
            .map_err(rpc_error("saving a demo person"))?;
    }
    println!("the demo unit {}: record filled in, {} people registered", record.unit_name, DEMO_PEOPLE.len());
    Ok(())
}

/// The month after `YYYY-MM`: a pension is paid from the month after retirement.
fn next_month(month: &str) -> String {
    let (year, month) = month.split_once('-').unwrap_or(("", ""));
    match (year.parse::<u32>(), month.parse::<u32>()) {
        (Ok(year), Ok(12)) => format!("{}-01", year + 1),
        (Ok(year), Ok(month)) => format!("{year}-{:02}", month + 1),
        _ => String::new(),
    }
}
