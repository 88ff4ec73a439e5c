//! The key journey in a real headless Chromium, driven through chromedriver: 校验 with a mistyped name, picking
//! the offered registry name, a bad ID number shown at its field, the fix, the application id and username, then
//! the withdrawal. A screenshot of every page is kept under `.artifacts/browser/`.

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

async fn text_of(browser: &Client, css: &str) -> String {
    browser.find(Locator::Css(css)).await.unwrap_or_else(|_| panic!("{css} on the page")).text().await.expect("text")
}

async fn fill(browser: &Client, id: &str, value: &str) {
    let input = browser.find(Locator::Id(id)).await.unwrap_or_else(|_| panic!("#{id} on the page"));
    input.clear().await.expect("clear");
    input.send_keys(value).await.expect("type");
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
    browser.find(Locator::LinkText("密钥申请")).await.expect("menu link").click().await.expect("click");
    browser.find(Locator::Css("#unit_type option[value='机关']")).await.expect("option").click().await.expect("select");
    fill(&browser, "unit_name", "双鸭山财政局").await;
    browser.find(Locator::Id("verify")).await.expect("校验").click().await.expect("click");
    assert!(text_of(&browser, "#unit_name-error").await.contains("编制通中没有这个单位名称"));
    screenshot(&browser, "02-verify-miss-with-candidates").await;

    browser
        .find(Locator::XPath("//button[text()='双鸭山市财政局']"))
        .await
        .expect("the offered name")
        .click()
        .await
        .expect("pick");
    assert!(text_of(&browser, ".ok-box").await.contains("校验通过"));
    fill(&browser, "applicant_name", "张伟").await;
    fill(&browser, "applicant_id_number", "230502198001011239").await;
    fill(&browser, "phone", "13804691234").await;
    fill(&browser, "password", "Secret2026").await;
    fill(&browser, "password_confirm", "Secret2026").await;
    browser.find(Locator::Id("submit")).await.expect("提交").click().await.expect("click");
    let message = text_of(&browser, "#applicant_id_number-error").await;
    assert!(message.contains("校验位"), "the bad ID number is named at its field: {message}");
    screenshot(&browser, "03-applicant-id-number-error").await;

    fill(&browser, "applicant_id_number", "230502198001011238").await;
    fill(&browser, "password", "Secret2026").await;
    fill(&browser, "password_confirm", "Secret2026").await;
    browser.find(Locator::Id("submit")).await.expect("提交").click().await.expect("click");
    let application_id = text_of(&browser, "#application-id").await;
    assert!(application_id.starts_with("SQ"), "{application_id}");
    assert_eq!(text_of(&browser, "#username").await, "230500001-01");
    assert_eq!(text_of(&browser, "#state").await, "新申请");
    screenshot(&browser, "04-application-submitted").await;

    browser.goto(&platform.url("/keys/withdraw")).await.expect("withdraw page");
    fill(&browser, "application_id", &application_id).await;
    fill(&browser, "applicant_id_number", "230502198001011238").await;
    browser.find(Locator::Id("confirm")).await.expect("confirmation").click().await.expect("tick");
    browser.find(Locator::Id("submit")).await.expect("撤回").click().await.expect("click");
    assert_eq!(text_of(&browser, "#state").await, "已撤回");
    screenshot(&browser, "05-application-withdrawn").await;

    browser.close().await.expect("close the browser");
    platform.stop().await;
}
