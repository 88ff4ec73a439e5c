//! The unit record and people over the JSON API on 8443, as a unit operator's client uses it: errors at their
//! fields, warnings accepted by code, ID numbers masked in lists and in clear only on request.

use std::time::Duration;

use kit::testing::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Credentials, TestPlatform, spawn_isolated_with};

/// A signed-in unit operator's client: its certificate, session cookie and CSRF token.
pub(crate) struct Operator {
    client: reqwest::Client,
    cookie: String,
    csrf: String,
}

impl Operator {
    pub(crate) async fn sign_in(platform: &TestPlatform, unit: &Credentials) -> Self {
        let client = platform.https_client(Some(unit));
        let response = client
            .post(platform.secure_url("/api/session"))
            .json(&json!({ "username": unit.username, "password": unit.password }))
            .send()
            .await
            .expect("login");
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|cookie| cookie.starts_with("pension_session="))
            .and_then(|cookie| cookie.split(';').next())
            .expect("session")
            .to_owned();
        let body: Value = response.json().await.expect("json");
        Self { client, cookie, csrf: body["csrf_token"].as_str().expect("csrf").to_owned() }
    }

    /// A page's HTML, as the signed-in browser gets it.
    async fn page(&self, url: String) -> String {
        let response = self.client.get(url).header("cookie", &self.cookie).send().await.expect("page");
        response.text().await.expect("html")
    }

    /// A GET as the signed-in client, the answer as it comes (a download).
    pub(crate) async fn get(&self, url: String) -> reqwest::Response {
        self.client.get(url).header("cookie", &self.cookie).send().await.expect("answer")
    }

    pub(crate) async fn call(&self, method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
        let mut request =
            self.client.request(method, url).header("cookie", &self.cookie).header("x-csrf-token", &self.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn fields(answer: &Value) -> Vec<(String, String)> {
    answer["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    (error["field"].as_str().unwrap_or("").to_owned(), error["code"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn signed_in_unit() -> (TestPlatform, Operator) {
    let platform = spawn_isolated_with(|_| {}).await;
    eventually(Duration::from_secs(30), "the gateway trusts the CA", || async {
        platform.https_client(None).get(platform.secure_url("/login")).send().await.is_ok()
    })
    .await;
    platform.load_demo_registry().await;
    let unit = platform.unit_with_key().await;
    let operator = Operator::sign_in(&platform, &unit).await;
    // The draft record arrives through identity's event.
    eventually(Duration::from_secs(20), "the unit's draft record", || async {
        operator.call(reqwest::Method::GET, platform.secure_url("/api/my-unit"), None).await.0 == StatusCode::OK
    })
    .await;
    (platform, operator)
}

pub(crate) fn unit_record() -> Value {
    json!({
        "unit_type": "机关", "credit_code": "11230500MB0000010M", "region_code": "230502", "subordination": "市",
        "funding_source": "全额拨款", "legal_representative": "王建国", "address": "双鸭山市尖山区新兴大街1号",
        "post_code": "155100", "contact_name": "刘敏", "contact_phone": "0469-4221234", "email": "czj@sys.gov.cn",
        "clerk_name": "刘敏", "clerk_phone": "13904691111", "bank_name": "中国工商银行双鸭山分行",
        "bank_account_name": "双鸭山市财政局", "bank_account": "0907 0210 0900 0012 345", "administrative_posts": "35"
    })
}

#[tokio::test]
async fn the_unit_keeps_its_record_with_errors_at_fields_and_warnings_accepted() {
    let (platform, operator) = signed_in_unit().await;
    let url = platform.secure_url("/api/my-unit");

    let (status, draft) = operator.call(reqwest::Method::GET, url.clone(), None).await;
    assert_eq!(
        (status, draft["state_label"].as_str(), draft["unit_type"].as_str()),
        (StatusCode::OK, Some("录入中"), Some("10"))
    );
    assert_eq!(draft["complete"], false);
    assert_eq!(draft["agency_name"], "双鸭山市社会保险事业中心", "from identity's first-login event");

    let mut bad = unit_record();
    bad["post_code"] = json!("15510");
    bad["bank_account"] = json!("09070210ABC");
    bad["contact_phone"] = json!("");
    bad["credit_code"] = json!("11230500MB0000010N");
    let (status, refused) = operator.call(reqwest::Method::PUT, url.clone(), Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let found = fields(&refused);
    for expected in [
        ("post_code", "invalid_post_code"),
        ("bank_account", "invalid_bank_account"),
        ("contact_phone", "required"),
        ("credit_code", "credit_code_check_character"),
    ] {
        assert!(found.contains(&(expected.0.to_owned(), expected.1.to_owned())), "{expected:?} in {found:?}");
    }

    let mut mismatched = unit_record();
    mismatched["org_code"] = json!("78305975-3");
    let (status, warned) = operator.call(reqwest::Method::PUT, url.clone(), Some(mismatched.clone())).await;
    assert_eq!((status, warned["code"].as_str()), (StatusCode::CONFLICT, Some("warnings_not_accepted")));
    assert_eq!(fields(&warned), [("org_code".to_owned(), "org_code_mismatch".to_owned())]);
    mismatched["accepted_warnings"] = json!(["org_code_mismatch"]);
    let (status, saved) = operator.call(reqwest::Method::PUT, url.clone(), Some(mismatched)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(
        (saved["record"]["complete"].as_bool(), saved["record"]["bank_account"].as_str()),
        (Some(true), Some("0907021009000012345"))
    );
    assert_eq!(saved["record"]["accepted_warnings"], json!(["org_code_mismatch"]));
    assert_eq!(saved["record"]["region_code"], "230502", "the unit names its district in place of the registry's city");
    platform.stop().await;
}

#[tokio::test]
async fn people_are_checked_saved_listed_masked_edited_and_deleted_over_the_api() {
    let (platform, operator) = signed_in_unit().await;
    let person = json!({
        "kind": "staff", "name": "李娜", "id_type": "01", "id_number": "230502199002152345",
        "funding_form": "全额拨款", "ethnicity": "01", "work_start": "2012-07-01", "joined_unit": "2015-03-01",
        "personnel_status": "公务员", "establishment": "编制内"
    });

    let (status, check) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/persons/check"), Some(person.clone())).await;
    assert_eq!((status, check["ok"].as_bool()), (StatusCode::OK, Some(false)));
    assert_eq!(fields(&check), [("id_number".to_owned(), "id_number_check_digit".to_owned())]);

    let mut fixed = person.clone();
    fixed["id_number"] = json!("230502199002152344");
    let (_, check) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/persons/check"), Some(fixed.clone())).await;
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(
        check["normalized"],
        json!({ "id_number": "230502199002152344", "sex": "2", "birth_date": "1990-02-15" })
    );
    let (status, created) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(fixed.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let person_id = created["person"]["person_id"].as_str().expect("id").to_owned();
    assert_eq!(created["person"]["id_number_masked"], "230502********2344");
    assert!(created["person"].get("id_number").is_none(), "no clear number in a save's answer");

    let unknown = json!({
        "kind": "retiree_pre_reform", "name": "胡建国", "id_type": "居民身份证（户口簿）", "id_number": "230502195509153911",
        "funding_form": "1", "work_start": "1975-08-01", "personnel_status": "工勤技能人员", "establishment": "编制内",
        "retirement_date": "2014-09-30", "retirement_category": "正常退休", "monthly_pension": "3200.00",
        "pay_start_month": "2014-10", "pay_bank": "中国农业银行", "pay_account": "6228480123456789012"
    });
    let (status, warned) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(unknown.clone())).await;
    assert_eq!((status, warned["code"].as_str()), (StatusCode::CONFLICT, Some("warnings_not_accepted")));
    let codes: Vec<String> = fields(&warned).into_iter().map(|(_, code)| code).collect();
    assert!(
        codes.contains(&"population_not_found".to_owned()) && codes.contains(&"retired_below_normal_age".to_owned()),
        "{codes:?}"
    );
    let mut accepted = unknown.clone();
    accepted["accepted_warnings"] = json!(codes);
    let (status, retiree) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(accepted)).await;
    assert_eq!(status, StatusCode::CREATED, "{retiree}");
    assert_eq!(retiree["person"]["pay_account_masked"], "****9012");

    let (status, list) =
        operator.call(reqwest::Method::GET, platform.secure_url("/api/persons?page_size=1"), None).await;
    assert_eq!(
        (status, list["total"].as_u64(), list["persons"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2), Some(1))
    );
    let (_, staff) = operator.call(reqwest::Method::GET, platform.secure_url("/api/persons?kind=staff"), None).await;
    assert_eq!(staff["persons"][0]["id_number_masked"], "230502********2344");
    assert!(!staff.to_string().contains("230502199002152344"), "lists never carry a clear number");

    let (status, full) =
        operator.call(reqwest::Method::GET, platform.secure_url(&format!("/api/persons/{person_id}")), None).await;
    assert_eq!((status, full["id_number"].as_str()), (StatusCode::OK, Some("230502199002152344")));
    let mut edited = fixed.clone();
    edited["post_rank"] = json!("一级科员");
    edited["deemed_periods"] = json!([{ "unit": "双鸭山市教育局", "from": "2012-07", "to": "2014-09", "months": 27 }]);
    let (status, updated) = operator
        .call(reqwest::Method::PUT, platform.secure_url(&format!("/api/persons/{person_id}")), Some(edited))
        .await;
    assert_eq!((status, updated["person"]["post_rank"].as_str()), (StatusCode::OK, Some("一级科员")));
    assert_eq!(
        updated["person"]["deemed_periods"],
        json!([{ "unit": "双鸭山市教育局", "from": "2012-07", "to": "2014-09", "months": "27", "reason": "" }])
    );
    let (status, _) =
        operator.call(reqwest::Method::DELETE, platform.secure_url(&format!("/api/persons/{person_id}")), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, gone) =
        operator.call(reqwest::Method::GET, platform.secure_url(&format!("/api/persons/{person_id}")), None).await;
    assert_eq!((status, gone["code"].as_str()), (StatusCode::NOT_FOUND, Some("person_not_found")));
    platform.stop().await;
}

#[tokio::test]
async fn a_create_with_an_idempotency_key_is_safe_to_send_twice() {
    let (platform, operator) = signed_in_unit().await;
    let person = json!({
        "kind": "staff", "name": "李娜", "id_type": "01", "id_number": "230502199002152344",
        "funding_form": "全额拨款", "work_start": "2012-07-01", "joined_unit": "2015-03-01",
        "personnel_status": "公务员", "establishment": "编制内"
    });
    let send = |body: Value| {
        operator
            .client
            .post(platform.secure_url("/api/persons"))
            .header("cookie", &operator.cookie)
            .header("x-csrf-token", &operator.csrf)
            .header("idempotency-key", "0b7c6a2e-retry")
            .json(&body)
            .send()
    };

    let first = send(person.clone()).await.expect("answer");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let again = send(person.clone()).await.expect("answer");
    assert_eq!(again.status(), StatusCode::CREATED, "the retry gets the first answer");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["person"]["person_id"], first["person"]["person_id"]);

    let mut other = person;
    other["name"] = json!("王秀英");
    other["id_number"] = json!("23050219820315224X");
    let reused = send(other).await.expect("answer");
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reused: Value = reused.json().await.expect("json");
    assert_eq!(reused["code"], "idempotency_key_reused");
    let (_, list) = operator.call(reqwest::Method::GET, platform.secure_url("/api/persons"), None).await;
    assert_eq!(list["total"], 1);
    platform.stop().await;
}

#[tokio::test]
async fn a_declaration_is_declared_withdrawn_rejected_and_approved_over_the_api() {
    let (platform, operator) = signed_in_unit().await;
    let mut record = unit_record();
    let (status, saved) =
        operator.call(reqwest::Method::PUT, platform.secure_url("/api/my-unit"), Some(record.clone())).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let agency = saved["record"]["agency_code"].as_str().expect("agency").to_owned();

    let (status, refused) = operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::CONFLICT, Some("no_persons")), "{refused}");
    let person = json!({
        "kind": "staff", "name": "李娜", "id_type": "01", "id_number": "230502199002152344",
        "funding_form": "全额拨款", "work_start": "2012-07-01", "joined_unit": "2015-03-01",
        "personnel_status": "公务员", "establishment": "编制内"
    });
    let (status, _) = operator.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(person)).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, declared) = operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    assert_eq!((status, declared["state"].as_str()), (StatusCode::OK, Some("declared")), "{declared}");
    assert_eq!(declared["staff_count"], 1);
    let (status, frozen) =
        operator.call(reqwest::Method::PUT, platform.secure_url("/api/my-unit"), Some(record.clone())).await;
    assert_eq!((status, frozen["code"].as_str()), (StatusCode::CONFLICT, Some("record_frozen")));
    let (status, withdrawn) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration/withdraw"), None).await;
    assert_eq!((status, withdrawn["state"].as_str()), (StatusCode::OK, Some("withdrawn")));
    let (status, _) = operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    assert_eq!(status, StatusCode::OK);

    // The agency's reviewer signs in with its own certificate and password.
    let reviewer_account = platform.staff("agency_reviewer", "reviewer.api", &agency).await;
    let reviewer = Operator::sign_in(&platform, &reviewer_account).await;
    let (status, denied) = reviewer.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    assert_eq!((status, denied["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, queue) = reviewer.call(reqwest::Method::GET, platform.secure_url("/api/review-queue"), None).await;
    assert_eq!((status, queue["total"].as_u64()), (StatusCode::OK, Some(1)), "{queue}");
    let id = queue["declarations"][0]["declaration_id"].as_str().expect("id").to_owned();
    let (status, _) = operator.call(reqwest::Method::GET, platform.secure_url("/api/review-queue"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a unit has no queue");
    let (status, claimed) =
        reviewer.call(reqwest::Method::POST, platform.secure_url(&format!("/api/declarations/{id}/claim")), None).await;
    assert_eq!((status, claimed["state"].as_str()), (StatusCode::OK, Some("claimed")));
    let (status, late) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration/withdraw"), None).await;
    assert_eq!((status, late["code"].as_str()), (StatusCode::CONFLICT, Some("already_claimed")));
    let reject = platform.secure_url(&format!("/api/declarations/{id}/reject"));
    let (status, empty) = reviewer.call(reqwest::Method::POST, reject.clone(), Some(json!({ "reason": "" }))).await;
    assert_eq!(
        (status, empty["field"].as_str(), empty["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("reason"), Some("reason_required"))
    );
    let (status, _) =
        reviewer.call(reqwest::Method::POST, reject, Some(json!({ "reason": "联系电话有误，请核实" }))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, seen) = operator.call(reqwest::Method::GET, platform.secure_url("/api/declaration"), None).await;
    assert_eq!((seen["state"].as_str(), seen["reason"].as_str()), (Some("rejected"), Some("联系电话有误，请核实")));

    record["contact_phone"] = json!("0469-4229999");
    let (status, _) = operator.call(reqwest::Method::PUT, platform.secure_url("/api/my-unit"), Some(record)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    let again_id = again["declaration_id"].as_str().expect("id").to_owned();
    reviewer
        .call(reqwest::Method::POST, platform.secure_url(&format!("/api/declarations/{again_id}/claim")), None)
        .await;
    let (status, view) =
        reviewer.call(reqwest::Method::GET, platform.secure_url(&format!("/api/declarations/{again_id}")), None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["previous_rejected_id"], json!(id));
    assert_eq!(view["unit_changes"][0]["label"], "联系电话");
    assert_eq!(view["roster"]["persons"][0]["id_number_masked"], "230502********2344");
    assert!(!view.to_string().contains("230502199002152344"), "the reviewer's view carries no clear number");
    let (status, approved) = reviewer
        .call(reqwest::Method::POST, platform.secure_url(&format!("/api/declarations/{again_id}/approve")), None)
        .await;
    assert_eq!((status, approved["state"].as_str()), (StatusCode::OK, Some("approved")), "{approved}");
    assert!(approved["unit_number"].as_str().is_some_and(|number| number.len() == 12));
    let (_, unit) = operator.call(reqwest::Method::GET, platform.secure_url("/api/my-unit"), None).await;
    assert_eq!(unit["state_label"], "已参保");

    // The forms of the approved declaration: listed, downloaded (一键打印) and verified.
    eventually(Duration::from_secs(30), "the forms are rendered", || async {
        operator.call(reqwest::Method::GET, platform.secure_url("/api/documents"), None).await.1["rendered"] == true
    })
    .await;
    let (_, listed) = operator.call(reqwest::Method::GET, platform.secure_url("/api/documents"), None).await;
    assert_eq!(listed["declaration_id"], json!(again_id));
    assert_eq!(listed["documents"].as_array().map(Vec::len), Some(5), "{listed}");
    let bundle = operator
        .client
        .get(platform.secure_url("/api/documents/bundle"))
        .header("cookie", &operator.cookie)
        .send()
        .await
        .expect("answer");
    assert_eq!(bundle.status(), StatusCode::OK);
    assert_eq!(bundle.headers()["content-type"], "application/pdf");
    let digest = bundle.headers()["x-document-sha256"].to_str().expect("digest").to_owned();
    let bytes = bundle.bytes().await.expect("pdf");
    assert!(bytes.starts_with(b"%PDF"));
    let listed_bundle =
        listed["documents"].as_array().expect("documents").iter().find(|d| d["kind"] == "bundle").cloned();
    assert_eq!(listed_bundle.expect("bundle")["sha256"], json!(digest));
    let (status, denied) =
        reviewer.call(reqwest::Method::GET, platform.secure_url("/api/documents/bundle"), None).await;
    assert_eq!((status, denied["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, theirs) = reviewer
        .call(reqwest::Method::GET, platform.secure_url(&format!("/api/documents?declaration_id={again_id}")), None)
        .await;
    assert_eq!((status, theirs["rendered"].as_bool()), (StatusCode::OK, Some(true)), "the reviewer reads them too");

    let unit_digest = approved["unit_digest"].as_str().expect("digest");
    let (status, verified) =
        crate::helpers::get_json(&platform.url(&format!("/api/verify/{again_id}/{unit_digest}"))).await;
    assert_eq!(
        (status, verified["matches"].as_bool(), verified["state"].as_str()),
        (200, Some(true), Some("approved"))
    );
    let last = if unit_digest.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &unit_digest[..unit_digest.len() - 1]);
    let (_, refused) = crate::helpers::get_json(&platform.url(&format!("/api/verify/{again_id}/{tampered}"))).await;
    assert_eq!(refused["matches"], false);
    assert_eq!(refused["unit_name"], "", "a mismatch names nothing");
    platform.stop().await;
}

#[tokio::test]
async fn the_holding_agency_ends_a_stale_registration_over_the_api() {
    let (platform, old_unit) = signed_in_unit().await;
    let new_credentials = platform.unit_with_key_named("尖山区人民政府办公室").await;
    let new_unit = Operator::sign_in(&platform, &new_credentials).await;
    eventually(Duration::from_secs(20), "the new unit's draft record", || async {
        new_unit.call(reqwest::Method::GET, platform.secure_url("/api/my-unit"), None).await.0 == StatusCode::OK
    })
    .await;
    let person = json!({
        "kind": "staff", "name": "李娜", "id_type": "01", "id_number": "230502199002152344",
        "funding_form": "全额拨款", "work_start": "2012-07-01", "joined_unit": "2015-03-01",
        "personnel_status": "公务员", "establishment": "编制内"
    });
    let (status, _) =
        old_unit.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(person.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, refused) =
        new_unit.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(person.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&refused), [("id_number".to_owned(), "insured_elsewhere".to_owned())]);
    assert!(
        refused["message"].as_str().is_some_and(|message| message.contains("双鸭山市社会保险事业中心")),
        "{refused}"
    );

    let reviewer_account = platform.staff("agency_reviewer", "reviewer.conflicts", "230500").await;
    let reviewer = Operator::sign_in(&platform, &reviewer_account).await;
    let (status, listed) =
        reviewer.call(reqwest::Method::GET, platform.secure_url("/api/registration-conflicts"), None).await;
    assert_eq!(status, StatusCode::OK);
    let conflict = listed["conflicts"][0].clone();
    assert_eq!(conflict["id_number_masked"], "230502********2344");
    let (status, _) =
        new_unit.call(reqwest::Method::GET, platform.secure_url("/api/registration-conflicts"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "units do not settle conflicts");
    let page = reviewer.page(platform.secure_url("/review/conflicts")).await;
    assert!(page.contains("230502********2344") && page.contains("终止原登记") && !page.contains("230502199002152344"));
    let end = platform
        .secure_url(&format!("/api/registration-conflicts/{}/end", conflict["conflict_id"].as_str().expect("id")));
    let (status, ended) = reviewer.call(reqwest::Method::POST, end, Some(json!({ "reason": "已调往尖山区" }))).await;
    assert_eq!((status, ended["resolution"].as_str()), (StatusCode::OK, Some("ended")), "{ended}");

    let (status, created) =
        new_unit.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(person)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let new_id = created["person"]["person_id"].as_str().expect("id");
    let (status, history) =
        reviewer.call(reqwest::Method::GET, platform.secure_url(&format!("/api/persons/{new_id}/history")), None).await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> =
        history["entries"].as_array().expect("entries").iter().filter_map(|entry| entry["event"].as_str()).collect();
    assert_eq!(events, ["registered", "ended", "registered"]);
    platform.stop().await;
}

#[tokio::test]
async fn after_approval_the_roster_changes_through_a_change_declaration_over_the_api() {
    let (platform, operator) = signed_in_unit().await;
    let (status, saved) =
        operator.call(reqwest::Method::PUT, platform.secure_url("/api/my-unit"), Some(unit_record())).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let agency = saved["record"]["agency_code"].as_str().expect("agency").to_owned();
    let staff = |name: &str, id_number: &str| {
        json!({
            "kind": "staff", "name": name, "id_type": "01", "id_number": id_number, "funding_form": "全额拨款",
            "work_start": "2012-07-01", "joined_unit": "2015-03-01", "personnel_status": "公务员",
            "establishment": "编制内"
        })
    };
    let (status, created) = operator
        .call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(staff("李娜", "230502199002152344")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let li_na = created["person"]["person_id"].as_str().expect("id").to_owned();
    let (status, changes) = operator.call(reqwest::Method::GET, platform.secure_url("/api/roster-changes"), None).await;
    assert_eq!((status, changes["enrolled"].as_bool()), (StatusCode::OK, Some(false)));
    let (status, early) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/change-declaration"), None).await;
    assert_eq!((status, early["code"].as_str()), (StatusCode::CONFLICT, Some("not_approved")), "{early}");

    let reviewer_account = platform.staff("agency_reviewer", "reviewer.changes", &agency).await;
    let reviewer = Operator::sign_in(&platform, &reviewer_account).await;
    let decide = |id: &str, step: &str| platform.secure_url(&format!("/api/declarations/{id}/{step}"));
    let (_, first) = operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    let first_id = first["declaration_id"].as_str().expect("id").to_owned();
    reviewer.call(reqwest::Method::POST, decide(&first_id, "claim"), None).await;
    let (status, approved) = reviewer.call(reqwest::Method::POST, decide(&first_id, "approve"), None).await;
    assert_eq!((status, approved["kind"].as_str()), (StatusCode::OK, Some("initial")), "{approved}");

    // The reviewer exports the declared roster, masked.
    let exported = reviewer
        .client
        .get(platform.secure_url(&format!("/api/persons/export?declaration_id={first_id}")))
        .header("cookie", &reviewer.cookie)
        .send()
        .await
        .expect("export");
    assert_eq!(exported.status(), StatusCode::OK);
    let exported = exported.bytes().await.expect("bytes");
    let mut workbook = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(exported.to_vec())).expect("xlsx");
    use calamine::Reader as _;
    let cells: Vec<String> =
        workbook.worksheet_range("人员").expect("sheet").cells().map(|(_, _, cell)| cell.to_string()).collect();
    assert!(cells.contains(&"230502********2344".to_owned()) && !cells.contains(&"230502199002152344".to_owned()));
    let (status, _) = reviewer.call(reqwest::Method::GET, platform.secure_url("/api/persons/export"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reviewer has no live roster to export");

    // Enrolled: direct saves are refused, changes take their place.
    let (status, direct) = operator
        .call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(staff("王芳", "230502199105062341")))
        .await;
    assert_eq!((status, direct["code"].as_str()), (StatusCode::CONFLICT, Some("roster_enrolled")), "{direct}");
    let changes_url = platform.secure_url("/api/roster-changes");
    let (status, bad) = operator
        .call(reqwest::Method::POST, changes_url.clone(), Some(json!({ "action": "remove", "person_id": li_na })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        fields(&bad),
        [("leave_reason".to_owned(), "required".to_owned()), ("leave_date".to_owned(), "required".to_owned())]
    );
    let transfer =
        json!({ "action": "remove", "person_id": li_na, "leave_date": "2026-11-30", "leave_reason": "transfer" });
    let (status, removed) = operator.call(reqwest::Method::POST, changes_url.clone(), Some(transfer)).await;
    assert_eq!((status, removed["action_label"].as_str()), (StatusCode::OK, Some("减员")), "{removed}");
    // The development registry does not know her: the warning is accepted, as a clerk would.
    let mut newcomer = staff("王芳", "230502199105062341");
    newcomer["accepted_warnings"] = json!(["population_not_found"]);
    let (status, added) = operator
        .call(reqwest::Method::POST, changes_url.clone(), Some(json!({ "action": "add", "person": newcomer })))
        .await;
    assert_eq!((status, added["id_number_masked"].as_str()), (StatusCode::OK, Some("230502********2341")), "{added}");
    let (_, listed) = operator.call(reqwest::Method::GET, changes_url.clone(), None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    assert!(!listed.to_string().contains("230502199105062341"), "lists carry masked numbers only");

    let (status, declared) =
        operator.call(reqwest::Method::POST, platform.secure_url("/api/change-declaration"), None).await;
    assert_eq!(
        (status, declared["kind"].as_str(), declared["state"].as_str()),
        (StatusCode::OK, Some("change"), Some("declared")),
        "{declared}"
    );
    assert_eq!((declared["add_count"].as_u64(), declared["remove_count"].as_u64()), (Some(1), Some(1)));
    let change_id = declared["declaration_id"].as_str().expect("id").to_owned();
    let (status, locked) = operator
        .call(
            reqwest::Method::DELETE,
            platform.secure_url(&format!("/api/roster-changes/{}", added["change_id"].as_str().expect("id"))),
            None,
        )
        .await;
    assert_eq!((status, locked["code"].as_str()), (StatusCode::CONFLICT, Some("changes_locked")));
    let (_, queue) = reviewer.call(reqwest::Method::GET, platform.secure_url("/api/review-queue"), None).await;
    assert_eq!(queue["declarations"][0]["kind_label"], "人员变更申报", "{queue}");
    reviewer.call(reqwest::Method::POST, decide(&change_id, "claim"), None).await;
    let (status, view) =
        reviewer.call(reqwest::Method::GET, platform.secure_url(&format!("/api/declarations/{change_id}")), None).await;
    assert_eq!((status, view["roster"]["kind"].as_str()), (StatusCode::OK, Some("changes")), "{view}");
    let actions: Vec<&str> = view["roster"]["change_items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["action"].as_str())
        .collect();
    assert_eq!(actions, ["remove", "add"]);
    assert!(!view.to_string().contains("230502199105062341"), "the reviewer's view carries no clear number");
    let review_page = reviewer.page(platform.secure_url(&format!("/review/{change_id}"))).await;
    assert!(review_page.contains("审核人员变更申报") && review_page.contains("调出") && review_page.contains("王芳"));
    let (status, applied) = reviewer.call(reqwest::Method::POST, decide(&change_id, "approve"), None).await;
    assert_eq!((status, applied["state"].as_str()), (StatusCode::OK, Some("approved")), "{applied}");

    let (_, roster) = operator.call(reqwest::Method::GET, platform.secure_url("/api/persons"), None).await;
    let names: Vec<&str> =
        roster["persons"].as_array().expect("persons").iter().filter_map(|person| person["name"].as_str()).collect();
    assert_eq!(names, ["王芳"], "the transferred person left, the new one is on the roster: {roster}");
    let (_, history) =
        reviewer.call(reqwest::Method::GET, platform.secure_url(&format!("/api/persons/{li_na}/history")), None).await;
    let last = history["entries"].as_array().and_then(|entries| entries.last()).cloned().unwrap_or_default();
    assert_eq!((last["event"].as_str(), last["declaration_id"].as_str()), (Some("ended"), Some(change_id.as_str())));
    let history_page = reviewer.page(platform.secure_url(&format!("/review/persons/{li_na}/history"))).await;
    assert!(
        history_page.contains("审核通过参保") && history_page.contains("终止登记") && history_page.contains("调出"),
        "{history_page}"
    );
    let page = operator.page(platform.secure_url("/changes")).await;
    assert!(page.contains("人员变更") && page.contains("王芳") && page.contains("审核通过并生效"), "{page}");
    platform.stop().await;
}

/// An xlsx of staff as a clerk fills in the template.
fn staff_workbook(rows: &[[&str; 5]]) -> Vec<u8> {
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet();
    let headers = ["姓名*", "证件类型*", "证件号码*", "经费补助形式*", "参加工作时间*"];
    for (r, row) in std::iter::once(&headers).chain(rows).enumerate() {
        for (c, value) in row.iter().enumerate() {
            sheet.write_string(u32::try_from(r).expect("row"), u16::try_from(c).expect("col"), *value).expect("cell");
        }
    }
    workbook.save_to_buffer().expect("xlsx")
}

#[tokio::test]
async fn a_unit_imports_a_spreadsheet_over_the_api_and_reads_the_report_and_the_export() {
    let (platform, operator) = signed_in_unit().await;
    let template = operator
        .client
        .get(platform.secure_url("/api/persons/import-template?kind=staff"))
        .header("cookie", &operator.cookie)
        .send()
        .await
        .expect("template");
    assert_eq!(template.status(), StatusCode::OK);
    assert!(
        template.headers()["content-disposition"].to_str().expect("ascii").contains("filename*=UTF-8''"),
        "the Chinese file name travels"
    );
    let template = template.bytes().await.expect("bytes");
    let workbook = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(template.to_vec())).expect("xlsx");
    use calamine::Reader as _;
    assert_eq!(workbook.sheet_names(), ["人员", "填写说明", "代码表"]);

    let file = staff_workbook(&[
        ["李娜", "01", "230502199002152344", "全额拨款", "2012-07-01"],
        ["孙浩", "01", "230502198001011239", "全额拨款", "2002-07-01"],
    ]);
    let upload = |body: Vec<u8>| {
        operator
            .client
            .post(platform.secure_url("/api/persons/import?kind=staff&mode=valid_rows&file_name=staff.xlsx"))
            .header("cookie", &operator.cookie)
            .header("x-csrf-token", &operator.csrf)
            .body(body)
            .send()
    };
    let started = upload(file).await.expect("answer");
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let started: Value = started.json().await.expect("json");
    let job_id = started["job_id"].as_str().expect("id").to_owned();
    let job_url = platform.secure_url(&format!("/api/imports/{job_id}"));
    eventually(Duration::from_secs(30), "the import finishes", || async {
        operator.call(reqwest::Method::GET, job_url.clone(), None).await.1["state"] == "done"
    })
    .await;
    let (_, job) = operator.call(reqwest::Method::GET, job_url, None).await;
    assert_eq!((job["rows_saved"].as_u64(), job["rows_failed"].as_u64()), (Some(1), Some(1)), "{job}");
    assert_eq!(job["rows"][0]["row_number"], 3);
    assert_eq!(job["rows"][0]["findings"][0]["column"], "证件号码");
    assert_eq!(job["rows"][0]["findings"][0]["code"], "id_number_check_digit");
    let report = operator
        .client
        .get(platform.secure_url(&format!("/api/imports/{job_id}/report")))
        .header("cookie", &operator.cookie)
        .send()
        .await
        .expect("report");
    assert_eq!(report.status(), StatusCode::OK);
    let page = operator.page(platform.secure_url(&format!("/persons/import/{job_id}"))).await;
    assert!(page.contains("已保存 1 人") && page.contains("身份证号码校验位不正确"), "{page}");

    let oversize = upload(vec![b'x'; 21 * 1024 * 1024]).await.expect("answer");
    assert_eq!(oversize.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let oversize: Value = oversize.json().await.expect("json");
    assert_eq!(oversize["code"], "file_too_large");
    let not_a_table = upload(b"%PDF-1.7\x00\x01".to_vec()).await.expect("answer");
    let not_a_table: Value = not_a_table.json().await.expect("json");
    let failed_url = platform.secure_url(&format!("/api/imports/{}", not_a_table["job_id"].as_str().expect("id")));
    eventually(Duration::from_secs(30), "the bad file is refused", || async {
        operator.call(reqwest::Method::GET, failed_url.clone(), None).await.1["state"] == "failed"
    })
    .await;
    let (_, failed) = operator.call(reqwest::Method::GET, failed_url, None).await;
    assert_eq!(failed["error_code"], "not_a_spreadsheet", "{failed}");

    let export = operator
        .client
        .get(platform.secure_url("/api/persons/export"))
        .header("cookie", &operator.cookie)
        .send()
        .await
        .expect("export")
        .bytes()
        .await
        .expect("bytes");
    let mut exported = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(export.to_vec())).expect("xlsx");
    let cells: Vec<String> =
        exported.worksheet_range("人员").expect("sheet").cells().map(|(_, _, cell)| cell.to_string()).collect();
    assert!(cells.contains(&"230502********2344".to_owned()) && !cells.contains(&"230502199002152344".to_owned()));
    platform.stop().await;
}
