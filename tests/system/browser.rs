//! The journeys in a real headless Chromium, driven through chromedriver: the key application, the CA operator's
//! work and login, the unit record and people, declaring and the review, and the whole journey on a fresh
//! `make run` over real mutual TLS. A screenshot of every page is kept under `.artifacts/browser/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use kit::testing::{eventually, free_port};
use serde_json::json;

use crate::key_api::{load_registry, spawn_isolated_platform};

struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_chromedriver() -> Chromedriver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (Debian's chromium-driver; `make test` installs it)");
    eventually(Duration::from_secs(20), "chromedriver listening", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    Chromedriver { child, port }
}

async fn open_browser(driver: &Chromedriver, profile: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1366,900", "--lang=zh-CN",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".artifacts/browser");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("write screenshot");
}

/// The text of `css`, waiting for it to appear: a click that submits a form returns before the next page may
/// have loaded.
async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|_| panic!("{css} on the page"))
        .text()
        .await
        .expect("text")
}

/// Waits until `css` shows `expected`: after a click that submits a form the old page, with an element of the same
/// id, may still be there for a moment, and an element read as the page changes goes stale.
async fn wait_for_text(browser: &Client, css: &str, expected: &str) -> String {
    let mut seen = String::new();
    for _ in 0..60 {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(expected) {
                return text;
            }
            seen = text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{css} never showed {expected:?}; last seen {seen:?}");
}

/// An element, waiting for it to appear.
async fn element(browser: &Client, locator: Locator<'_>) -> fantoccini::elements::Element {
    let description = format!("{locator:?}");
    browser
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(locator)
        .await
        .unwrap_or_else(|_| panic!("{description} on the page"))
}

async fn fill(browser: &Client, id: &str, value: &str) {
    let input = browser
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|_| panic!("#{id} on the page"));
    input.clear().await.expect("clear");
    input.send_keys(value).await.expect("type");
}

/// A date input's value: typed keys go through the locale's date widget, which a person uses with the picker.
async fn set_date(browser: &Client, id: &str, value: &str) {
    element(browser, Locator::Id(id)).await;
    browser
        .execute("document.getElementById(arguments[0]).value = arguments[1];", vec![json!(id), json!(value)])
        .await
        .expect("set the date");
}

/// Every field message on the page, for a failing assertion to show.
async fn field_errors(browser: &Client) -> Vec<String> {
    let mut messages = Vec::new();
    for error in browser.find_all(Locator::Css(".error")).await.unwrap_or_default() {
        messages.push(format!(
            "{}: {}",
            error.attr("id").await.ok().flatten().unwrap_or_default(),
            error.text().await.unwrap_or_default()
        ));
    }
    messages
}

#[tokio::test]
async fn a_unit_applies_for_a_key_and_withdraws_it_through_the_pages() {
    let platform = spawn_isolated_platform().await;
    load_registry(&platform).await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;

    browser.goto(&platform.url("/")).await.expect("home");
    screenshot(&browser, "01-home").await;
    element(&browser, Locator::LinkText("密钥申请")).await.click().await.expect("click");
    element(&browser, Locator::Css("#unit_type option[value='机关']")).await.click().await.expect("select");
    fill(&browser, "unit_name", "双鸭山财政局").await;
    element(&browser, Locator::Id("verify")).await.click().await.expect("click");
    assert!(text_of(&browser, "#unit_name-error").await.contains("编制通中没有这个单位名称"));
    screenshot(&browser, "02-verify-miss-with-candidates").await;

    element(&browser, Locator::XPath("//button[text()='双鸭山市财政局']")).await.click().await.expect("pick");
    assert!(text_of(&browser, ".ok-box").await.contains("校验通过"));
    fill(&browser, "applicant_name", "张伟").await;
    fill(&browser, "applicant_id_number", "230502198001011239").await;
    fill(&browser, "phone", "13804691234").await;
    fill(&browser, "password", "Secret2026").await;
    fill(&browser, "password_confirm", "Secret2026").await;
    element(&browser, Locator::Id("submit")).await.click().await.expect("click");
    let message = text_of(&browser, "#applicant_id_number-error").await;
    assert!(message.contains("校验位"), "the bad ID number is named at its field: {message}");
    screenshot(&browser, "03-applicant-id-number-error").await;

    fill(&browser, "applicant_id_number", "230502198001011238").await;
    fill(&browser, "password", "Secret2026").await;
    fill(&browser, "password_confirm", "Secret2026").await;
    element(&browser, Locator::Id("submit")).await.click().await.expect("click");
    let application_id = text_of(&browser, "#application-id").await;
    assert!(application_id.starts_with("SQ"), "{application_id}");
    assert_eq!(text_of(&browser, "#username").await, "230500001-01");
    assert_eq!(text_of(&browser, "#state").await, "新申请");
    screenshot(&browser, "04-application-submitted").await;

    browser.goto(&platform.url("/keys/withdraw")).await.expect("withdraw page");
    fill(&browser, "application_id", &application_id).await;
    fill(&browser, "applicant_id_number", "230502198001011238").await;
    element(&browser, Locator::Id("confirm")).await.click().await.expect("tick");
    element(&browser, Locator::Id("submit")).await.click().await.expect("click");
    assert_eq!(text_of(&browser, "#state").await, "已撤回");
    screenshot(&browser, "05-application-withdrawn").await;

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

#[tokio::test]
async fn the_admin_loads_the_registry_through_the_page_and_bad_rows_are_listed() {
    let platform = spawn_isolated_platform().await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let files = tempfile::tempdir().expect("files folder");
    let agencies = files.path().join("agencies.csv");
    let registry = files.path().join("registry.csv");
    std::fs::write(&agencies, crate::key_api::AGENCIES_CSV).expect("write");
    std::fs::write(&registry, crate::key_api::REGISTRY_CSV).expect("write");
    let browser = open_browser(&driver, profile.path()).await;

    for (kind, file, expected) in
        [("agencies", &agencies, "已导入 1 行。"), ("registry", &registry, "已导入 2 行，1 处错误。")]
    {
        browser.goto(&platform.url("/admin/registry")).await.expect("admin page");
        element(&browser, Locator::Css(&format!("#kind option[value='{kind}']"))).await.click().await.expect("select");
        element(&browser, Locator::Id("file")).await.send_keys(&file.display().to_string()).await.expect("choose file");
        fill(&browser, "token", crate::helpers::ADMIN_TOKEN).await;
        element(&browser, Locator::Id("submit")).await.click().await.expect("click");
        assert_eq!(text_of(&browser, "#report-summary").await, expected);
    }
    let bad_row = text_of(&browser, "table tbody tr").await;
    assert!(bad_row.contains('4') && bad_row.contains("统一社会信用代码"), "{bad_row}");
    screenshot(&browser, "06-admin-registry-import").await;

    browser.goto(&platform.url("/admin/registry")).await.expect("admin page");
    element(&browser, Locator::Id("file")).await.send_keys(&registry.display().to_string()).await.expect("file");
    fill(&browser, "token", "wrong").await;
    element(&browser, Locator::Id("submit")).await.click().await.expect("click");
    assert!(text_of(&browser, ".error-box").await.contains("管理员凭据无效"));

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// How many pixels the page is wider than the window (0 or less: no sideways scrolling).
async fn sideways_overflow(browser: &Client) -> i64 {
    browser
        .execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![])
        .await
        .expect("measure")
        .as_i64()
        .unwrap_or(i64::MAX)
}

#[tokio::test]
async fn the_pages_fit_a_tablet_without_sideways_scrolling() {
    let platform = spawn_isolated_platform().await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;
    browser.set_window_size(768, 1024).await.expect("tablet size");

    for (path, name) in
        [("/", "07-tablet-home"), ("/keys/apply", "08-tablet-apply"), ("/keys/withdraw", "09-tablet-withdraw")]
    {
        browser.goto(&platform.url(path)).await.expect("page");
        let overflow = sideways_overflow(&browser).await;
        assert!(overflow <= 0, "{path} is {overflow} px wider than a tablet");
        screenshot(&browser, name).await;
    }
    // Keyboard only: Tab reaches the skip link first, then the brand, then the key application in the main menu,
    // and Enter follows it.
    browser.goto(&platform.url("/")).await.expect("home");
    let mut focused = Vec::new();
    for _ in 0..3 {
        browser
            .active_element()
            .await
            .expect("focus")
            .send_keys(&char::from(fantoccini::key::Key::Tab).to_string())
            .await
            .expect("Tab");
        focused.push(browser.active_element().await.expect("focus").text().await.unwrap_or_default());
    }
    assert_eq!(focused[1..], ["机关事业单位养老保险参保登记平台", "密钥申请"], "{focused:?}");
    browser
        .active_element()
        .await
        .expect("focus")
        .send_keys(&char::from(fantoccini::key::Key::Enter).to_string())
        .await
        .expect("Enter");
    assert!(browser.current_url().await.expect("url").path().ends_with("/keys/apply"));

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// Journey 1 to its end: the unit applies on the public pages, the CA operator logs in and makes the key as a
/// software key, the unit logs in with it and sees the main page with its draft record. Behind an ingress stand-in
/// (header mode), which passes whichever certificate the person at the browser holds.
#[tokio::test]
async fn the_ca_operator_makes_the_key_and_the_unit_logs_in_and_sees_its_main_page() {
    let platform = crate::helpers::spawn_isolated_with(|gateway| {
        gateway.client_certificates = gateway::ClientCertificateMode::Header
    })
    .await;
    platform.load_demo_registry().await;
    let operator = platform.staff("ca_operator", "ca.browser", "").await;
    let ingress = crate::ingress::Ingress::start(platform.https_port).await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;

    // The unit applies on the public pages.
    let (application_id, username) = apply_for_the_education_bureau(&browser, &platform.url("/keys/apply")).await;

    // The CA operator, holding its own certificate, logs in and makes the key.
    ingress.present(Some(&operator.certificate_pem));
    browser.goto(&ingress.url("/login")).await.expect("login page");
    assert!(text_of(&browser, "#certificate-status").await.contains("已检测到密钥"));
    fill(&browser, "username", &operator.username).await;
    fill(&browser, "password", &operator.password).await;
    screenshot(&browser, "10-ca-operator-login").await;
    element(&browser, Locator::Id("login")).await.click().await.expect("click");
    assert_eq!(text_of(&browser, "#role").await, "CA操作员");
    element(&browser, Locator::LinkText("证书制作")).await.click().await.expect("click");
    element(&browser, Locator::Id(&format!("make-{application_id}"))).await;
    screenshot(&browser, "11-ca-applications").await;
    element(&browser, Locator::Id(&format!("make-{application_id}"))).await.click().await.expect("make");
    assert_eq!(text_of(&browser, "#issued-username").await, username);
    assert!(!text_of(&browser, "#p12-password").await.is_empty());
    screenshot(&browser, "12-certificate-made").await;
    let certificate_pem = element(&browser, Locator::Id("certificate-pem")).await.prop("value").await.expect("pem");
    let certificate_pem = certificate_pem.expect("the certificate is on the page");
    element(&browser, Locator::Id("logout")).await.click().await.expect("logout");
    assert!(text_of(&browser, ".ok-box").await.contains("安全退出"));

    // The unit, now holding its key, logs in and sees its main page.
    ingress.present(Some(&certificate_pem));
    browser.goto(&ingress.url("/login")).await.expect("login page");
    fill(&browser, "username", &username).await;
    fill(&browser, "password", "Wrong2026pass").await;
    element(&browser, Locator::Id("login")).await.click().await.expect("click");
    assert!(text_of(&browser, ".error-box[role=alert]:not(#certificate-status)").await.contains("用户名或密码错误"));
    screenshot(&browser, "13-unit-wrong-password").await;
    fill(&browser, "password", "Edu2026pass").await;
    element(&browser, Locator::Id("login")).await.click().await.expect("click");
    assert_eq!(text_of(&browser, "#role").await, "单位经办员");
    let mut unit = text_of(&browser, "#unit").await;
    for _ in 0..40 {
        if unit.contains("录入中") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        browser.refresh().await.expect("refresh");
        unit = text_of(&browser, "#unit").await;
    }
    assert!(unit.contains("双鸭山市教育局") && unit.contains("录入中"), "{unit}");
    screenshot(&browser, "14-unit-main-page").await;

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// Journey 2 in the browser: the unit operator fills in its record (a mistyped post code shown at its field), then
/// adds a staff member as the manual describes it: a bad ID number is named at its field by 校验 and 保存 stays
/// disabled; fixed, 校验 passes and shows the sex and birth date it derived; 保存 lists the person in 待办业务 with
/// the ID number masked.
#[tokio::test]
async fn a_unit_keeps_its_record_and_registers_a_staff_member_through_the_pages() {
    let platform = crate::helpers::spawn_isolated_with(|gateway| {
        gateway.client_certificates = gateway::ClientCertificateMode::Header
    })
    .await;
    platform.load_demo_registry().await;
    let unit = platform.unit_with_key().await;
    let ingress = crate::ingress::Ingress::start(platform.https_port).await;
    ingress.present(Some(&unit.certificate_pem));
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;

    browser.goto(&ingress.url("/login")).await.expect("login page");
    fill(&browser, "username", &unit.username).await;
    fill(&browser, "password", &unit.password).await;
    element(&browser, Locator::Id("login")).await.click().await.expect("click");
    assert_eq!(text_of(&browser, "#role").await, "单位经办员");
    open_unit_record(&browser, &ingress.url("/unit")).await;

    for (id, value) in [
        ("region_code", "230502"),
        ("legal_representative", "王建国"),
        ("address", "双鸭山市尖山区新兴大街88号"),
        ("post_code", "15510"),
        ("contact_name", "张伟"),
        ("contact_phone", "0469-4221234"),
        ("clerk_name", "张伟"),
        ("clerk_phone", "13804691234"),
        ("bank_name", "中国工商银行双鸭山分行"),
        ("bank_account_name", "双鸭山市财政局"),
        ("bank_account", "0907021009000012345"),
    ] {
        fill(&browser, id, value).await;
    }
    for (select, option) in [("subordination", "40"), ("funding_source", "1")] {
        element(&browser, Locator::Css(&format!("#{select} option[value='{option}']")))
            .await
            .click()
            .await
            .expect("pick");
    }
    element(&browser, Locator::Id("save-unit")).await.click().await.expect("save");
    assert!(text_of(&browser, "#post_code-error").await.contains("邮政编码应为6位数字"));
    screenshot(&browser, "20-unit-record-post-code").await;
    fill(&browser, "post_code", "155100").await;
    element(&browser, Locator::Id("save-unit")).await.click().await.expect("save");
    assert!(text_of(&browser, "#unit-saved").await.contains("单位信息已保存"));
    screenshot(&browser, "21-unit-record-saved").await;

    element(&browser, Locator::LinkText("个人管理")).await.click().await.expect("people");
    element(&browser, Locator::Id("add-person")).await.click().await.expect("add");
    fill(&browser, "name", "李娜").await;
    fill(&browser, "id_number", "230502199002152345").await;
    fill(&browser, "deemed_periods[0].unit", "双鸭山市教育局").await;
    fill(&browser, "deemed_periods[0].from", "2012-07").await;
    fill(&browser, "deemed_periods[0].to", "2015-06").await;
    set_date(&browser, "work_start", "2012-07-01").await;
    set_date(&browser, "joined_unit", "2015-03-01").await;
    for (select, option) in [("funding_form", "1"), ("personnel_status", "1"), ("establishment", "1")] {
        element(&browser, Locator::Css(&format!("#{select} option[value='{option}']")))
            .await
            .click()
            .await
            .expect("pick");
    }
    assert!(!element(&browser, Locator::Id("save")).await.is_enabled().await.expect("state"), "保存 waits for 校验");
    element(&browser, Locator::Id("check")).await.click().await.expect("check");
    assert!(text_of(&browser, "#id_number-error").await.contains("校验位"), "the check digit is named at its field");
    assert!(text_of(&browser, "[id='deemed_periods[0].to-error']").await.contains("2014-09"), "and the period's end");
    assert!(text_of(&browser, "#error-summary").await.contains("请修改以下2处"));
    assert_eq!(field_errors(&browser).await.len(), 2, "{:?}", field_errors(&browser).await);
    assert!(!element(&browser, Locator::Id("save")).await.is_enabled().await.expect("state"));
    screenshot(&browser, "22-staff-bad-id-number").await;
    browser.execute("document.getElementById('deemed-periods').scrollIntoView();", vec![]).await.expect("scroll");
    screenshot(&browser, "22-staff-deemed-period-end").await;

    fill(&browser, "id_number", "230502199002152344").await;
    fill(&browser, "deemed_periods[0].to", "2014-09").await;
    element(&browser, Locator::Id("check")).await.click().await.expect("check");
    element(&browser, Locator::Css("h1")).await;
    screenshot(&browser, "23-staff-checked").await;
    assert!(field_errors(&browser).await.is_empty(), "{:?}", field_errors(&browser).await);
    assert!(text_of(&browser, "#check-ok").await.contains("校验通过"));
    let derived = text_of(&browser, "#derived").await;
    assert!(derived.contains("女") && derived.contains("1990-02-15"), "{derived}");
    element(&browser, Locator::Id("save")).await.click().await.expect("save");
    assert!(text_of(&browser, "#done").await.contains("已保存：李娜"));
    let row = text_of(&browser, "#persons tbody tr").await;
    assert!(row.contains("李娜") && row.contains("230502********2344"), "{row}");
    assert!(
        !browser.source().await.expect("source").contains("230502199002152344"),
        "the list never shows it in clear"
    );
    screenshot(&browser, "24-staff-in-pending-list").await;

    // The retirees' registrations are the same pattern, with the retirement fields and no deemed periods before the
    // reform.
    element(&browser, Locator::LinkText("2014年10月1日前退休人员参保登记")).await.click().await.expect("tab");
    assert!(text_of(&browser, "h2").await.contains("共 0 人"));
    element(&browser, Locator::Id("add-person")).await.click().await.expect("add");
    assert_eq!(text_of(&browser, "h1").await, "2014年10月1日前退休人员参保登记");
    for field in ["retirement_date", "retirement_category", "monthly_pension", "pay_start_month", "pay_account"] {
        element(&browser, Locator::Id(field)).await;
    }
    assert!(browser.find(Locator::Id("deemed-periods")).await.is_err(), "no 视同缴费年限 for those retired before");
    screenshot(&browser, "25-retiree-form").await;
    browser.goto(&ingress.url("/persons/new?kind=retiree_post_reform")).await.expect("post-reform form");
    element(&browser, Locator::Id("deemed-periods")).await;

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// Opens the unit record page, waiting for the draft record that identity's first-login event brings.
async fn open_unit_record(browser: &Client, url: &str) {
    let mut heading = String::new();
    for _ in 0..40 {
        browser.goto(url).await.expect("unit page");
        heading = text_of(browser, "h1").await;
        if heading.contains("参保单位确认信息") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the unit record never came: {heading}");
}

/// 双鸭山市教育局 applies for a key on the public pages (password Edu2026pass): its application id and username.
async fn apply_for_the_education_bureau(browser: &Client, apply_url: &str) -> (String, String) {
    browser.goto(apply_url).await.expect("apply page");
    element(browser, Locator::Css("#unit_type option[value='机关']")).await.click().await.expect("select");
    fill(browser, "unit_name", "双鸭山市教育局").await;
    element(browser, Locator::Id("verify")).await.click().await.expect("校验");
    fill(browser, "applicant_name", "李娜").await;
    fill(browser, "applicant_id_number", "230502199002152344").await;
    fill(browser, "phone", "13904691234").await;
    fill(browser, "password", "Edu2026pass").await;
    fill(browser, "password_confirm", "Edu2026pass").await;
    element(browser, Locator::Id("submit")).await.click().await.expect("apply");
    (text_of(browser, "#application-id").await, text_of(browser, "#username").await)
}

/// Logs in through the ingress with `who`'s certificate and password.
async fn log_in(browser: &Client, ingress: &crate::ingress::Ingress, who: &crate::helpers::Credentials) {
    ingress.present(Some(&who.certificate_pem));
    browser.goto(&ingress.url("/login")).await.expect("login page");
    fill(browser, "username", &who.username).await;
    fill(browser, "password", &who.password).await;
    element(browser, Locator::Id("login")).await.click().await.expect("log in");
    element(browser, Locator::Id("role")).await;
}

/// Journey 3 in the browser (manual 4.2 and the review): the unit declares (confirming first), sees 确认申报
/// disabled and 申报撤回 enabled, withdraws, corrects a person (校验 again), declares again; the agency's reviewer
/// finds it in the queue, claims it and rejects it with a reason; the unit sees the reason.
#[tokio::test]
async fn a_unit_declares_withdraws_and_declares_again_and_sees_the_reviewers_reason() {
    let SignedInUnit { platform, unit, ingress, browser, _profile, _driver } = signed_in_unit().await;

    // The record and one person, as the pages of journey 2 leave them (tested there).
    let (_, agency) = record_and_staff(&platform, &unit, &[("李娜", "230502199002152344")]).await;

    element(&browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    assert!(text_of(&browser, "#person-count").await.contains("1 人"));
    assert!(!element(&browser, Locator::Id("declare-yes")).await.is_displayed().await.expect("state"), "asks first");
    element(&browser, Locator::Id("declare")).await.click().await.expect("确认申报");
    assert!(text_of(&browser, "#declare-question").await.contains("确定申报吗"));
    screenshot(&browser, "30-declare-confirm").await;
    element(&browser, Locator::Id("declare-yes")).await.click().await.expect("confirm");
    // As in the manual, declaring leads to the print screen; the forms appear once rendered.
    wait_for_text(&browser, "#done", "已申报").await;
    for _ in 0..60 {
        if browser.find(Locator::Id("documents")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        browser.refresh().await.expect("refresh");
    }
    let forms = text_of(&browser, "#documents").await;
    assert!(
        forms.contains("机关事业单位养老保险参保单位登记表") && forms.contains("工作人员参保登记花名册"),
        "{forms}"
    );
    screenshot(&browser, "31-print-page").await;
    element(&browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    assert_eq!(text_of(&browser, "#declaration-state").await, "已申报");
    assert!(!element(&browser, Locator::Id("declare")).await.is_enabled().await.expect("state"), "确认申报 disabled");
    screenshot(&browser, "31-declared").await;

    element(&browser, Locator::Id("withdraw")).await.click().await.expect("申报撤回");
    element(&browser, Locator::Id("withdraw-yes")).await.click().await.expect("confirm");
    wait_for_text(&browser, "#done", "申报已撤回").await;
    screenshot(&browser, "32-withdrawn").await;

    // Editing a person needs a new 校验.
    element(&browser, Locator::LinkText("个人管理")).await.click().await.expect("people");
    element(&browser, Locator::LinkText("修改")).await.click().await.expect("edit");
    fill(&browser, "post_rank", "一级科员").await;
    element(&browser, Locator::Id("check")).await.click().await.expect("check");
    wait_for_text(&browser, "#check-ok", "校验通过").await;
    element(&browser, Locator::Id("save")).await.click().await.expect("save");
    wait_for_text(&browser, "#done", "已保存：李娜").await;

    element(&browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    element(&browser, Locator::Id("declare")).await.click().await.expect("确认申报");
    element(&browser, Locator::Id("declare-yes")).await.click().await.expect("confirm");
    wait_for_text(&browser, "#done", "已申报").await;
    element(&browser, Locator::Id("logout")).await.click().await.expect("logout");

    // The agency's reviewer rejects it with a reason.
    let reviewer = platform.staff("agency_reviewer", "reviewer.browser", &agency).await;
    log_in(&browser, &ingress, &reviewer).await;
    element(&browser, Locator::Id("review-card")).await.click().await.expect("queue");
    let row = text_of(&browser, "#queue tbody tr").await;
    assert!(row.contains("双鸭山市财政局") && row.contains("已申报"), "{row}");
    screenshot(&browser, "33-review-queue").await;
    element(&browser, Locator::LinkText("查看")).await.click().await.expect("open");
    element(&browser, Locator::Id("claim")).await.click().await.expect("claim");
    wait_for_text(&browser, "#done", "已认领").await;
    assert!(text_of(&browser, "#roster").await.contains("230502********2344"));
    element(&browser, Locator::Id("reject")).await.click().await.expect("reject without a reason");
    wait_for_text(&browser, ".error-box", "请填写退回原因").await;
    fill(&browser, "reason", "李娜的参加工作时间与档案不符，请核实").await;
    screenshot(&browser, "34-review-reject").await;
    element(&browser, Locator::Id("reject")).await.click().await.expect("reject");
    wait_for_text(&browser, "#done", "已退回").await;
    element(&browser, Locator::Id("logout")).await.click().await.expect("logout");

    // The unit sees why.
    log_in(&browser, &ingress, &unit).await;
    element(&browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    assert_eq!(text_of(&browser, "#rejection-reason").await, "李娜的参加工作时间与档案不符，请核实");
    assert!(element(&browser, Locator::Id("declare")).await.is_enabled().await.expect("state"), "can declare again");
    assert!(text_of(&browser, "#history").await.contains("退回"));
    screenshot(&browser, "35-unit-sees-the-reason").await;

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// A unit operator of the demo registry's unit, with a key, signed in through the ingress in a Chromium of its own,
/// on a platform of its own.
struct SignedInUnit {
    platform: crate::helpers::TestPlatform,
    unit: crate::helpers::Credentials,
    ingress: crate::ingress::Ingress,
    browser: Client,
    _profile: tempfile::TempDir,
    _driver: Chromedriver,
}

async fn signed_in_unit() -> SignedInUnit {
    let platform = crate::helpers::spawn_isolated_with(|gateway| {
        gateway.client_certificates = gateway::ClientCertificateMode::Header
    })
    .await;
    platform.load_demo_registry().await;
    let unit = platform.unit_with_key().await;
    let ingress = crate::ingress::Ingress::start(platform.https_port).await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;
    log_in(&browser, &ingress, &unit).await;
    SignedInUnit { platform, unit, ingress, browser, _profile: profile, _driver: driver }
}

/// The unit record filled in and `staff` saved over NATS RPC, as the pages of journey 2 leave them (tested there),
/// once identity's first-login event has made the draft record; returns the operator as a caller and the unit's
/// agency.
pub(crate) async fn record_and_staff(
    platform: &crate::helpers::TestPlatform,
    unit: &crate::helpers::Credentials,
    staff: &[(&str, &str)],
) -> (Option<proto::common::Caller>, String) {
    use proto::names::Service;
    let caller = Some(proto::common::Caller {
        actor: unit.username.clone(),
        role: "unit_operator".into(),
        institution_code: unit.username.split('-').next().expect("code").to_owned(),
        ..Default::default()
    });
    let mut units = proto::units::units_client::UnitsClient::new(platform.platform.channel(Service::Units));
    let get = proto::units::GetUnitRecordRequest { caller: caller.clone(), institution_code: String::new() };
    eventually(Duration::from_secs(20), "the unit's draft record", || {
        let (mut units, get) = (units.clone(), get.clone());
        async move { units.get_unit_record(get).await.is_ok() }
    })
    .await;
    let agency = units.get_unit_record(get).await.expect("record").into_inner().agency_code;
    let record = proto::units::UnitRecordInput {
        unit_type: "机关".into(),
        region_code: "230502".into(),
        subordination: "市".into(),
        funding_source: "全额拨款".into(),
        legal_representative: "王建国".into(),
        address: "双鸭山市尖山区新兴大街88号".into(),
        post_code: "155100".into(),
        contact_name: "张伟".into(),
        contact_phone: "0469-4221234".into(),
        clerk_name: "张伟".into(),
        clerk_phone: "13804691234".into(),
        bank_name: "中国工商银行双鸭山分行".into(),
        bank_account_name: "双鸭山市财政局".into(),
        bank_account: "0907021009000012345".into(),
        ..Default::default()
    };
    let update = proto::units::UpdateUnitRecordRequest { caller: caller.clone(), record: Some(record) };
    units.update_unit_record(update).await.expect("record saved");
    let mut personnel =
        proto::personnel::personnel_client::PersonnelClient::new(platform.platform.channel(Service::Personnel));
    for (name, id_number) in staff {
        let person = proto::personnel::PersonInput {
            kind: "staff".into(),
            name: (*name).into(),
            id_type: "01".into(),
            id_number: (*id_number).into(),
            funding_form: "全额拨款".into(),
            work_start: "2012-07-01".into(),
            joined_unit: "2015-03-01".into(),
            personnel_status: "公务员".into(),
            establishment: "编制内".into(),
            // The development registry may not know everyone; what it says is accepted, as a clerk would.
            accepted_warnings: vec!["population_not_found".into(), "population_name_mismatch".into()],
            ..Default::default()
        };
        let create = proto::personnel::CreatePersonRequest {
            caller: caller.clone(),
            person: Some(person),
            idempotency_key: String::new(),
        };
        personnel.create_person(create).await.expect("person saved");
    }
    (caller, agency)
}

/// A browser that holds one client certificate, as a clerk's PC holds its USB key: its own chromedriver and
/// Chromium with a home folder whose NSS database has the certificate (from PKCS#12) and trusts the platform's CA.
/// Chromium selects the certificate by itself through the `AutoSelectCertificateForUrls` policy that `make test`
/// installs for https://127.0.0.1 (scripts/deps.sh); without the policy there is nothing to select with.
struct KeyHolder {
    browser: Client,
    _driver: Chromedriver,
    _home: tempfile::TempDir,
}

impl KeyHolder {
    async fn open(ca_certificate: &std::path::Path, pkcs12: &[u8], password: &str) -> Self {
        let home = tempfile::tempdir().expect("home folder");
        let nssdb = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).expect("nssdb folder");
        let database = format!("sql:{}", nssdb.display());
        let run = |program: &str, args: &[&str]| {
            let status = Command::new(program).args(args).stdout(Stdio::null()).status().expect(program);
            assert!(status.success(), "{program} {args:?}");
        };
        run("certutil", &["-d", &database, "-N", "--empty-password"]);
        let ca = ca_certificate.to_str().expect("path");
        run("certutil", &["-d", &database, "-A", "-t", "C,,", "-n", "pension-ca", "-i", ca]);
        let p12 = home.path().join("key.p12");
        std::fs::write(&p12, pkcs12).expect("write p12");
        run("pk12util", &["-d", &database, "-i", p12.to_str().expect("path"), "-W", password]);
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs");
        eventually(Duration::from_secs(20), "chromedriver listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        let driver = Chromedriver { child, port };
        let browser = open_browser(&driver, &home.path().join("profile")).await;
        Self { browser, _driver: driver, _home: home }
    }
}

/// Picks the option of `select` whose text is `label`.
async fn choose(browser: &Client, select: &str, label: &str) {
    let xpath = format!("//select[@id='{select}']/option[normalize-space(text())='{label}']");
    element(browser, Locator::XPath(&xpath)).await.click().await.expect("pick");
}

/// Ticks every warning the page asks to accept.
async fn accept_warnings(browser: &Client) {
    for checkbox in browser.find_all(Locator::Css("#warnings input[type=checkbox]")).await.expect("warnings") {
        checkbox.click().await.expect("tick");
    }
}

/// Logs a key holder in with its username and password.
async fn key_login(holder: &KeyHolder, platform: &MadeRun, username: &str, password: &str, shot: &str) {
    let browser = &holder.browser;
    browser.goto(&platform.secure_url("/login")).await.expect("login page");
    assert!(text_of(browser, "#certificate-status").await.contains("已检测到密钥"), "the certificate came over TLS");
    fill(browser, "username", username).await;
    fill(browser, "password", password).await;
    screenshot(browser, shot).await;
    element(browser, Locator::Id("login")).await.click().await.expect("log in");
    element(browser, Locator::Id("role")).await;
}

/// A fresh `make run` (scripts/run.sh with the built binary), on ports, databases, a NATS namespace and a Redis
/// prefix of its own, so it runs beside anything else; stopped (with the platform it started) when dropped.
struct MadeRun {
    script: std::process::Child,
    http_port: u16,
    https_port: u16,
    run_dir: tempfile::TempDir,
    _databases: Vec<kit::testing::TestDatabase>,
}

impl Drop for MadeRun {
    fn drop(&mut self) {
        // The script's trap stops the platform on TERM.
        let _ = Command::new("kill").arg("-TERM").arg(self.script.id().to_string()).status();
        let _ = self.script.wait();
    }
}

impl MadeRun {
    async fn start() -> Self {
        let run_dir = tempfile::tempdir().expect("run folder");
        let (http_port, https_port, population_port) = (free_port(), free_port(), free_port());
        let namespace = format!("t_{}", kit::testing::unique_suffix());
        let mut command = Command::new("scripts/run.sh");
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PENSION_BIN", env!("CARGO_BIN_EXE_pension"))
            .env("PENSION_RUN_DIR", run_dir.path())
            .env("PENSION_HTTP_PORT", http_port.to_string())
            .env("PENSION_HTTPS_PORT", https_port.to_string())
            .env("PENSION__GATEWAY__GRPC_ADDR", "127.0.0.1:0")
            .env("PENSION__GATEWAY__AGENCY_GRPC_ADDR", "127.0.0.1:0")
            .env("PENSION__NATS__URL", kit::testing::shared_nats_url())
            .env("PENSION__NATS__NAMESPACE", &namespace)
            .env("PENSION__REDIS__URL", kit::testing::shared_redis_url())
            .env("PENSION__REDIS__KEY_PREFIX", format!("{namespace}:"))
            .env("PENSION__POPULATION__ADDR", format!("127.0.0.1:{population_port}"))
            .env("PENSION__PERSONNEL__POPULATION_REGISTRY_URL", format!("http://127.0.0.1:{population_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut databases = Vec::new();
        for service in ["identity", "units", "personnel", "printing", "population"] {
            let database = kit::testing::TestDatabase::create().await;
            let upper = service.to_uppercase();
            command.env(format!("PENSION__{upper}__DATABASE__URL"), &database.url);
            if service != "population" {
                command.env(format!("PENSION__{upper}__GRPC_ADDR"), "127.0.0.1:0");
            }
            databases.push(database);
        }
        let script = command.spawn().expect("scripts/run.sh starts");
        let made = Self { script, http_port, https_port, run_dir, _databases: databases };
        // Ready once the demo accounts are written and the logged-in port answers.
        eventually(Duration::from_secs(120), "make run is up with its demo accounts", || async {
            made.run_dir.path().join("demo.json").exists()
                && tokio::net::TcpStream::connect(("127.0.0.1", made.https_port)).await.is_ok()
        })
        .await;
        made
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn secure_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    /// A demo account of `.run/demo.json`: username, password, PKCS#12 and its password.
    fn account(&self, role: &str) -> (String, String, Vec<u8>, String) {
        let demo: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.run_dir.path().join("demo.json")).expect("demo.json"))
                .expect("json");
        let account = demo["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .find(|account| account["role"] == role)
            .expect(role)
            .clone();
        let text = |key: &str| account[key].as_str().expect(key).to_owned();
        let p12 = std::fs::read(text("pkcs12")).expect("pkcs12");
        (text("username"), text("password"), p12, text("pkcs12_password"))
    }
}

/// The whole journey in the pages of a fresh `make run`, over real mutual TLS: Chromium presents each clerk's
/// certificate from its NSS database. Apply for a key → the CA operator makes it → the unit logs in with it → unit
/// record → a staff member → a retiree → declare → print → the reviewer rejects → the unit fixes and declares again
/// → the reviewer approves. A screenshot of each page is kept under `.artifacts/browser/`.
#[tokio::test]
async fn the_whole_journey_over_mutual_tls_on_a_fresh_make_run() {
    use base64::Engine as _;
    let platform = MadeRun::start().await;
    let ca = platform.run_dir.path().join("ca/ca.crt");

    // The unit applies on the public pages.
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let public = open_browser(&driver, profile.path()).await;
    let (application_id, username) = apply_for_the_education_bureau(&public, &platform.url("/keys/apply")).await;
    screenshot(&public, "41-journey-applied").await;
    public.close().await.expect("close");

    // The CA operator, with its own key, makes the unit's key and hands over the PKCS#12.
    let (operator, operator_password, operator_p12, operator_p12_password) = platform.account("ca_operator");
    let ca_desk = KeyHolder::open(&ca, &operator_p12, &operator_p12_password).await;
    key_login(&ca_desk, &platform, &operator, &operator_password, "42-journey-ca-login").await;
    let desk = &ca_desk.browser;
    element(desk, Locator::LinkText("证书制作")).await.click().await.expect("CA page");
    element(desk, Locator::Id(&format!("make-{application_id}"))).await.click().await.expect("make");
    assert_eq!(text_of(desk, "#issued-username").await, username);
    screenshot(desk, "43-journey-key-made").await;
    let href = element(desk, Locator::Id("download-p12")).await.attr("href").await.expect("href").expect("data url");
    let p12 = base64::engine::general_purpose::STANDARD
        .decode(href.trim_start_matches("data:application/x-pkcs12;base64,"))
        .expect("base64");
    let p12_password = text_of(desk, "#p12-password").await;

    // The unit logs in with the key it was handed, keeps its record and registers its people.
    let unit = KeyHolder::open(&ca, &p12, &p12_password).await;
    key_login(&unit, &platform, &username, "Edu2026pass", "44-journey-unit-login").await;
    let browser = &unit.browser;
    open_unit_record(browser, &platform.secure_url("/unit")).await;
    for (id, value) in [
        ("region_code", "230502"),
        ("legal_representative", "王建国"),
        ("address", "双鸭山市尖山区新兴大街88号"),
        ("post_code", "155100"),
        ("contact_name", "李娜"),
        ("contact_phone", "0469-4221234"),
        ("clerk_name", "李娜"),
        ("clerk_phone", "13904691234"),
        ("bank_name", "中国工商银行双鸭山分行"),
        ("bank_account_name", "双鸭山市教育局"),
        ("bank_account", "0907021009000054321"),
    ] {
        fill(browser, id, value).await;
    }
    choose(browser, "subordination", "市").await;
    choose(browser, "funding_source", "全额拨款").await;
    element(browser, Locator::Id("save-unit")).await.click().await.expect("save");
    if browser.find(Locator::Id("warnings")).await.is_ok() {
        accept_warnings(browser).await;
        element(browser, Locator::Id("save-unit")).await.click().await.expect("save");
    }
    wait_for_text(browser, "#unit-saved", "单位信息已保存").await;
    screenshot(browser, "45-journey-unit-record").await;

    browser.goto(&platform.secure_url("/persons/new?kind=staff")).await.expect("staff form");
    fill(browser, "name", "孙丽").await;
    fill(browser, "id_number", "230502198603151326").await;
    set_date(browser, "work_start", "2002-07-01").await;
    set_date(browser, "joined_unit", "2010-03-01").await;
    choose(browser, "funding_form", "全额拨款").await;
    choose(browser, "personnel_status", "公务员").await;
    choose(browser, "establishment", "编制内").await;
    element(browser, Locator::Id("check")).await.click().await.expect("校验");
    wait_for_text(browser, "#check-ok", "校验").await;
    accept_warnings(browser).await;
    element(browser, Locator::Id("save")).await.click().await.expect("保存");
    wait_for_text(browser, "#done", "已保存：孙丽").await;
    screenshot(browser, "46-journey-staff").await;

    browser.goto(&platform.secure_url("/persons/new?kind=retiree_pre_reform")).await.expect("retiree form");
    fill(browser, "name", "胡建国").await;
    fill(browser, "id_number", "230502195506201519").await;
    set_date(browser, "work_start", "1975-08-01").await;
    set_date(browser, "retirement_date", "2014-09-30").await;
    choose(browser, "funding_form", "全额拨款").await;
    choose(browser, "personnel_status", "工勤技能人员").await;
    choose(browser, "establishment", "编制内").await;
    choose(browser, "retirement_category", "正常退休").await;
    fill(browser, "monthly_pension", "3200.00").await;
    fill(browser, "pay_start_month", "2014-10").await;
    fill(browser, "pay_bank", "中国农业银行").await;
    fill(browser, "pay_account", "6228480123456789012").await;
    element(browser, Locator::Id("check")).await.click().await.expect("校验");
    wait_for_text(browser, "#check-ok", "校验").await;
    accept_warnings(browser).await;
    screenshot(browser, "47-journey-retiree-checked").await;
    element(browser, Locator::Id("save")).await.click().await.expect("保存");
    wait_for_text(browser, "#done", "已保存：胡建国").await;

    // Declare, and print.
    element(browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    element(browser, Locator::Id("declare")).await.click().await.expect("确认申报");
    element(browser, Locator::Id("declare-yes")).await.click().await.expect("confirm");
    wait_for_text(browser, "#done", "已申报").await;
    for _ in 0..60 {
        if browser.find(Locator::Id("documents")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        browser.refresh().await.expect("refresh");
    }
    assert!(text_of(browser, "#documents").await.contains("2014年10月1日前退休人员参保登记花名册"));
    screenshot(browser, "48-journey-print").await;

    // The agency's reviewer, with its own key, rejects it.
    assert!(text_of(browser, "#who").await.contains("双鸭山市教育局"));
    let (reviewer, reviewer_password, reviewer_p12, reviewer_p12_password) = platform.account("agency_reviewer");
    let review_desk = KeyHolder::open(&ca, &reviewer_p12, &reviewer_p12_password).await;
    key_login(&review_desk, &platform, &reviewer, &reviewer_password, "49-journey-reviewer-login").await;
    let desk = &review_desk.browser;
    element(desk, Locator::Id("review-card")).await.click().await.expect("queue");
    element(desk, Locator::LinkText("查看")).await.click().await.expect("open");
    element(desk, Locator::Id("claim")).await.click().await.expect("claim");
    wait_for_text(desk, "#done", "已认领").await;
    fill(desk, "reason", "胡建国的离退休类别需附审批材料，请核实").await;
    screenshot(desk, "50-journey-review").await;
    element(desk, Locator::Id("reject")).await.click().await.expect("reject");
    wait_for_text(desk, "#done", "已退回").await;

    // The unit sees why, fixes the person and declares again.
    element(browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    assert_eq!(text_of(browser, "#rejection-reason").await, "胡建国的离退休类别需附审批材料，请核实");
    screenshot(browser, "51-journey-rejected").await;
    browser.goto(&platform.secure_url("/persons?kind=retiree_pre_reform")).await.expect("retirees");
    element(browser, Locator::LinkText("修改")).await.click().await.expect("edit");
    fill(browser, "address", "双鸭山市尖山区七星大街12号").await;
    // The account is shown masked and typed again on every edit.
    fill(browser, "pay_account", "6228480123456789012").await;
    element(browser, Locator::Id("check")).await.click().await.expect("校验");
    wait_for_text(browser, "#check-ok", "校验").await;
    accept_warnings(browser).await;
    element(browser, Locator::Id("save")).await.click().await.expect("保存");
    wait_for_text(browser, "#done", "已保存：胡建国").await;
    element(browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    element(browser, Locator::Id("declare")).await.click().await.expect("确认申报");
    element(browser, Locator::Id("declare-yes")).await.click().await.expect("confirm");
    wait_for_text(browser, "#done", "已申报").await;

    // The reviewer sees what changed, and approves.
    element(desk, Locator::LinkText("申报审核")).await.click().await.expect("queue");
    element(desk, Locator::LinkText("查看")).await.click().await.expect("open");
    element(desk, Locator::Id("claim")).await.click().await.expect("claim");
    wait_for_text(desk, "#done", "已认领").await;
    assert!(text_of(desk, "#roster-changes").await.contains("胡建国"));
    element(desk, Locator::Id("approve")).await.click().await.expect("approve");
    wait_for_text(desk, "#done", "已审核通过").await;
    screenshot(desk, "52-journey-approved").await;

    element(browser, Locator::LinkText("参保登记申报")).await.click().await.expect("declaration page");
    wait_for_text(browser, "#declaration-state", "审核通过").await;
    assert_eq!(text_of(browser, "#unit-number").await.len(), 12);
    screenshot(browser, "53-journey-unit-approved").await;

    for holder in [unit, review_desk, ca_desk] {
        holder.browser.clone().close().await.expect("close");
    }
}

#[tokio::test]
async fn after_approval_a_unit_changes_its_roster_through_the_change_pages() {
    use proto::names::Service;
    let SignedInUnit { platform, unit, ingress: _ingress, browser, _profile, _driver } = signed_in_unit().await;

    // A unit declared and approved, as the pages of the first declaration leave it (tested there).
    let people = [("李娜", "230502199002152344"), ("张伟", "230502198001011238")];
    let (caller, agency) = record_and_staff(&platform, &unit, &people).await;
    let mut units = proto::units::units_client::UnitsClient::new(platform.platform.channel(Service::Units));
    let reviewer = Some(proto::common::Caller {
        actor: "reviewer.changes".into(),
        role: "agency_reviewer".into(),
        agency_code: agency.clone(),
        ..Default::default()
    });
    let reviewing = units.clone();
    let approve = |declaration_id: String| {
        let (mut units, reviewer) = (reviewing.clone(), reviewer.clone());
        async move {
            let request =
                proto::units::ReviewRequest { caller: reviewer.clone(), declaration_id: declaration_id.clone() };
            units.claim_declaration(request.clone()).await.expect("claimed");
            units.approve_declaration(request).await.expect("approved")
        }
    };
    let declare = proto::units::DeclareRequest { caller: caller.clone(), kind: String::new() };
    let first = units.declare(declare).await.expect("declared").into_inner();
    approve(first.declaration_id).await;

    element(&browser, Locator::LinkText("人员变更")).await.click().await.expect("changes page");
    element(&browser, Locator::Css("h1")).await;
    screenshot(&browser, "60-changes-page").await;
    assert!(text_of(&browser, "#roster").await.contains("张伟"));
    assert!(
        !element(&browser, Locator::Id("declare-changes")).await.is_enabled().await.expect("state"),
        "nothing to declare"
    );
    screenshot(&browser, "60-changes-approved-roster").await;

    // 减员: 张伟 transfers out.
    let remove = "//table[@id='roster']//tr[td[normalize-space(text())='张伟']]//a[normalize-space(text())='减员']";
    element(&browser, Locator::XPath(remove)).await.click().await.expect("减员");
    element(&browser, Locator::Id("save-remove")).await.click().await.expect("save without anything");
    wait_for_text(&browser, "#error-summary", "请修改以下2处").await;
    screenshot(&browser, "61-remove-errors").await;
    set_date(&browser, "leave_date", "2026-11-30").await;
    choose(&browser, "leave_reason", "调出").await;
    element(&browser, Locator::Id("save-remove")).await.click().await.expect("save");
    wait_for_text(&browser, "#done", "已保存：张伟").await;

    // 增员: 王芳, through 校验 and 保存 as when registering.
    element(&browser, Locator::Id("add-staff")).await.click().await.expect("增员");
    assert_eq!(text_of(&browser, "h1").await, "增员：工作人员");
    fill(&browser, "name", "王芳").await;
    fill(&browser, "id_number", "230502199105062341").await;
    choose(&browser, "funding_form", "全额拨款").await;
    set_date(&browser, "work_start", "2013-07-01").await;
    set_date(&browser, "joined_unit", "2026-11-01").await;
    choose(&browser, "personnel_status", "公务员").await;
    choose(&browser, "establishment", "编制内").await;
    element(&browser, Locator::Id("check")).await.click().await.expect("check");
    wait_for_text(&browser, "#check-ok", "校验通过").await;
    accept_warnings(&browser).await;
    screenshot(&browser, "62-add-checked").await;
    element(&browser, Locator::Id("save")).await.click().await.expect("save");
    wait_for_text(&browser, "#done", "已保存：王芳").await;

    // 变更: 李娜's phone.
    let update = "//table[@id='roster']//tr[td[normalize-space(text())='李娜']]//a[normalize-space(text())='变更']";
    element(&browser, Locator::XPath(update)).await.click().await.expect("变更");
    fill(&browser, "phone", "13904691111").await;
    element(&browser, Locator::Id("check")).await.click().await.expect("check");
    wait_for_text(&browser, "#check-ok", "校验通过").await;
    accept_warnings(&browser).await;
    element(&browser, Locator::Id("save")).await.click().await.expect("save");
    wait_for_text(&browser, "#done", "已保存：李娜").await;
    let changes = text_of(&browser, "#changes").await;
    assert!(
        changes.contains("减员")
            && changes.contains("调出")
            && changes.contains("增员")
            && changes.contains("联系电话"),
        "{changes}"
    );
    assert!(!browser.source().await.expect("source").contains("230502199105062341"), "masked in the list");
    screenshot(&browser, "63-open-changes").await;

    // 确认申报, confirmed first, leads to the print page with the 增减变动表.
    element(&browser, Locator::Id("declare-changes")).await.click().await.expect("确认申报");
    element(&browser, Locator::Id("declare-changes-yes")).await.click().await.expect("confirm");
    wait_for_text(&browser, "#done", "已申报").await;
    for _ in 0..60 {
        if browser.find(Locator::Id("documents")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        browser.refresh().await.expect("refresh");
    }
    assert!(text_of(&browser, "#documents").await.contains("机关事业单位养老保险人员增减变动表"));
    screenshot(&browser, "64-change-form-to-print").await;
    element(&browser, Locator::LinkText("人员变更")).await.click().await.expect("changes page");
    assert_eq!(text_of(&browser, "#change-declaration-state").await, "已申报");
    assert!(text_of(&browser, "#changes-locked").await.contains("不能修改"));

    // The agency approves; the changes take effect.
    let change = units
        .get_declaration(proto::units::GetDeclarationRequest { caller: caller.clone(), declaration_id: String::new() })
        .await
        .expect("declaration")
        .into_inner();
    assert_eq!(change.kind, "change");
    approve(change.declaration_id).await;
    browser.refresh().await.expect("refresh");
    wait_for_text(&browser, "#last-approved", "审核通过并生效").await;
    let roster = text_of(&browser, "#roster").await;
    assert!(roster.contains("王芳") && roster.contains("李娜") && !roster.contains("张伟"), "{roster}");
    screenshot(&browser, "65-changes-applied").await;

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

#[tokio::test]
async fn a_unit_imports_a_spreadsheet_through_the_pages_and_sees_the_report() {
    let SignedInUnit { platform, unit, ingress: _ingress, browser, _profile, _driver } = signed_in_unit().await;
    record_and_staff(&platform, &unit, &[]).await;

    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet();
    let rows = [
        ["姓名*", "证件类型*", "证件号码*", "经费补助形式*", "参加工作时间*"],
        ["李娜", "居民身份证（户口簿）", "230502199002152344", "全额拨款", "2012-07-01"],
        ["张伟", "01", "230502198001011238", "全额拨款", "2002-07-01"],
        ["孙浩", "01", "230502198001011239", "全额拨款", "2002-07-01"],
    ];
    for (r, row) in rows.iter().enumerate() {
        for (c, value) in row.iter().enumerate() {
            sheet.write_string(u32::try_from(r).expect("row"), u16::try_from(c).expect("col"), *value).expect("cell");
        }
    }
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("工作人员.xlsx");
    workbook.save(&path).expect("xlsx");

    element(&browser, Locator::LinkText("个人管理")).await.click().await.expect("people");
    element(&browser, Locator::Id("import-persons")).await.click().await.expect("批量导入");
    assert!(text_of(&browser, "#templates").await.contains("工作人员参保登记模板"));
    element(&browser, Locator::Id("file")).await.send_keys(&path.display().to_string()).await.expect("choose the file");
    element(&browser, Locator::Id("accept-warnings")).await.click().await.expect("accept warnings");
    screenshot(&browser, "70-import-form").await;
    element(&browser, Locator::Id("upload")).await.click().await.expect("upload");
    // The job's page refreshes itself until the import is done.
    let outcome = wait_for_text(&browser, "#outcome", "已保存 2 人").await;
    assert!(outcome.contains("未保存 1 行"), "{outcome}");
    let rows = text_of(&browser, "#rows").await;
    assert!(rows.contains("4") && rows.contains("证件号码") && rows.contains("校验位"), "{rows}");
    screenshot(&browser, "71-import-report").await;
    element(&browser, Locator::LinkText("返回待办业务")).await.click().await.expect("people");
    let listed = text_of(&browser, "#persons").await;
    assert!(listed.contains("李娜") && listed.contains("张伟") && !listed.contains("孙浩"), "{listed}");

    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// The province admin registers another agency's system on the 接口客户端 pages: a mistyped client id is named at
/// its field; the client is created with two scopes, gets a certificate the platform generates (the private key
/// shown once), and that certificate works on the agency port until the admin revokes it on the page; then the
/// admin grants a third scope and disables the client.
#[tokio::test]
async fn the_province_admin_registers_an_agency_system_whose_certificate_works_until_revoked() {
    let platform = crate::helpers::spawn_isolated_with(|gateway| {
        gateway.client_certificates = gateway::ClientCertificateMode::Header
    })
    .await;
    platform.load_demo_registry().await;
    let admin = platform.staff("province_admin", "admin.browser", "").await;
    let ingress = crate::ingress::Ingress::start(platform.https_port).await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;
    log_in(&browser, &ingress, &admin).await;
    element(&browser, Locator::Id("api-clients-card")).await.click().await.expect("open");
    assert!(text_of(&browser, "#no-clients").await.contains("尚无接口客户端"));

    fill(&browser, "client_id", "Finance Province").await;
    fill(&browser, "display_name", "省财政厅").await;
    element(&browser, Locator::Id("scope_persons_read")).await.click().await.expect("check");
    element(&browser, Locator::Id("scope_events_read")).await.click().await.expect("check");
    element(&browser, Locator::Id("create-client")).await.click().await.expect("create");
    let error = text_of(&browser, "#client_id-error, .field.invalid .error").await;
    assert!(error.contains("小写字母"), "{error}");
    assert_eq!(
        element(&browser, Locator::Id("display_name")).await.prop("value").await.expect("value").as_deref(),
        Some("省财政厅")
    );
    screenshot(&browser, "80-api-client-bad-id").await;
    fill(&browser, "client_id", "finance-province").await;
    // The boxes stay as they were checked.
    assert!(
        element(&browser, Locator::Id("scope_persons_read")).await.prop("checked").await.expect("checked").as_deref()
            == Some("true")
    );
    element(&browser, Locator::Id("create-client")).await.click().await.expect("create");
    assert!(wait_for_text(&browser, "#done", "已创建").await.contains("签发"));
    assert!(text_of(&browser, "#no-certificates").await.contains("尚无证书"));
    screenshot(&browser, "81-api-client-created").await;

    element(&browser, Locator::Id("issue-certificate")).await.click().await.expect("issue");
    assert_eq!(text_of(&browser, "#issued-client").await, "finance-province");
    let value = |id: &'static str| {
        let browser = browser.clone();
        async move { element(&browser, Locator::Id(id)).await.prop("value").await.expect("value").expect("text") }
    };
    let (certificate, key) = (value("certificate-pem").await, value("private-key").await);
    assert!(certificate.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
    screenshot(&browser, "82-api-client-certificate").await;

    // The certificate from the page works on the agency port.
    let ca = std::fs::read_to_string(&platform.ca.certificate).expect("ca");
    let lookup =
        proto::agency::GetPersonEnrollmentRequest { id_number: "230502198001011238".into(), name: String::new() };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(&certificate, &key));
    let channel = tonic::transport::Channel::from_shared(format!("https://localhost:{}", platform.agency_port))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connected");
    let mut agency = proto::agency::agency_api_client::AgencyApiClient::new(channel);
    agency.get_person_enrollment(lookup.clone()).await.expect("the new client is admitted");

    element(&browser, Locator::LinkText("返回")).await.click().await.expect("back");
    let serial = text_of(&browser, "#client-certificates tbody tr td").await;
    element(&browser, Locator::Id(&format!("revoke-{serial}"))).await.click().await.expect("revoke");
    assert!(wait_for_text(&browser, "#done", "已吊销").await.contains("CRL"));
    assert!(text_of(&browser, "#client-certificates").await.contains("已吊销"));
    screenshot(&browser, "83-api-client-revoked").await;
    kit::testing::eventually(Duration::from_secs(10), "the revoked certificate is refused", || {
        let (mut agency, lookup) = (agency.clone(), lookup.clone());
        async move {
            agency
                .get_person_enrollment(lookup)
                .await
                .is_err_and(|status| status.code() == tonic::Code::Unauthenticated)
        }
    })
    .await;

    element(&browser, Locator::Id("scope_units_read")).await.click().await.expect("check");
    choose(&browser, "state", "停用（拒绝一切调用）").await;
    element(&browser, Locator::Id("save-client")).await.click().await.expect("save");
    wait_for_text(&browser, "#done", "已保存").await;
    screenshot(&browser, "84-api-client-saved").await;
    let clients = platform
        .identity()
        .list_api_clients(proto::identity::ListApiClientsRequest {
            caller: Some(proto::common::Caller { actor: "test".into(), role: "system".into(), ..Default::default() }),
        })
        .await
        .expect("clients")
        .into_inner()
        .clients;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].scopes, ["persons:read", "units:read", "events:read"]);
    assert_eq!(clients[0].state, "disabled");
    browser.close().await.expect("close the browser");
    platform.stop().await;
}

/// The province dashboard (参保进度) in Chromium after a morning's journey: the headline figures, the funnel, the
/// regions and the queue as charts with their tables, and a screenshot of it; then an agency reviewer's own.
#[tokio::test]
async fn the_province_admin_opens_the_dashboard_and_an_agency_reviewer_sees_its_own() {
    let platform = crate::helpers::spawn_isolated_with(|gateway| {
        gateway.client_certificates = gateway::ClientCertificateMode::Header
    })
    .await;
    platform.load_demo_registry().await;
    let scenario = crate::dashboard::run_scenario(&platform).await;
    let ingress = crate::ingress::Ingress::start(platform.https_port).await;
    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().expect("profile folder");
    let browser = open_browser(&driver, profile.path()).await;
    let admin = platform.staff("province_admin", "admin.browser", "").await;
    log_in(&browser, &ingress, &admin).await;
    element(&browser, Locator::LinkText("参保进度")).await.click().await.expect("the dashboard");
    // The projection follows the events within moments; the page shows what it holds when asked.
    for _ in 0..100 {
        if text_of(&browser, "#headline").await.contains("完成率 11.1%") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.refresh().await.expect("refresh");
    }
    let headline = text_of(&browser, "#headline").await;
    assert!(headline.contains("应参保单位") && headline.contains("完成率 11.1%"), "{headline}");
    assert_eq!(text_of(&browser, "#scope").await, "全省");
    for chart in ["funnel-chart", "regions-chart", "agencies-chart", "people-day-chart", "queue-chart", "load-chart"] {
        element(&browser, Locator::Id(chart)).await;
    }
    let funnel = text_of(&browser, "#table-funnel").await;
    assert!(funnel.contains("已参保") && funnel.contains("11.1%"), "{funnel}");
    assert!(text_of(&browser, "#table-regions").await.contains("双鸭山市"));
    assert!(text_of(&browser, "#table-rejections").await.contains(crate::dashboard::REJECTION));
    screenshot(&browser, "80-province-dashboard").await;
    browser.execute("document.getElementById('review').scrollIntoView()", vec![]).await.expect("scroll");
    screenshot(&browser, "81-province-dashboard-review").await;
    // Printed (as the browser prints it), every section's charts and tables are on paper, without the filters.
    let configuration = fantoccini::wd::PrintConfiguration::builder().build().expect("print settings");
    let pdf = browser.print(configuration).await.expect("the page printed");
    let printed = artifacts().join("84-province-dashboard.pdf");
    std::fs::write(&printed, &pdf).expect("write the print");
    let text = Command::new("pdftotext").arg(&printed).arg("-").output().expect("pdftotext runs");
    let text = String::from_utf8_lossy(&text.stdout);
    for expected in ["参保进度漏斗", "各市（地）参保完成率", "每日登记人数", "审核队列", crate::dashboard::REJECTION]
    {
        assert!(text.contains(expected), "the print lacks {expected}: {text}");
    }
    assert!(!text.contains("下载全部表格"), "the print leaves out the page's controls");
    element(&browser, Locator::Id("logout")).await.click().await.expect("logout");

    let reviewer = platform.staff("agency_reviewer", "reviewer.dashboard", &scenario.agency).await;
    log_in(&browser, &ingress, &reviewer).await;
    browser.goto(&ingress.url("/dashboard")).await.expect("the dashboard");
    let scope = text_of(&browser, "#scope").await;
    assert_eq!(scope, "双鸭山市社会保险事业中心");
    assert!(text_of(&browser, "#table-funnel").await.contains('6'), "the agency's six units");
    assert!(browser.find(Locator::Id("agencies-chart")).await.is_err(), "no breakdown by agency for a reviewer");
    screenshot(&browser, "82-agency-dashboard").await;
    // On a tablet the charts shrink and the wide tables scroll within their own box, not the page.
    browser.set_window_size(768, 1024).await.expect("tablet size");
    browser.refresh().await.expect("refresh");
    let overflow = sideways_overflow(&browser).await;
    assert!(overflow <= 0, "the dashboard is {overflow} px wider than a tablet");
    screenshot(&browser, "83-tablet-agency-dashboard").await;
    browser.close().await.expect("close the browser");
    platform.stop().await;
}
