//! The JSON API of the key journey and of loading the registry, through the gateway: status codes, the error
//! format (stable `code`, Chinese `message`, `field`), and the OpenAPI document naming every operation.

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestPlatform, get_json};

pub const AGENCIES_CSV: &str = "经办机构编码,经办机构名称,所属行政区划\n230500,双鸭山市社会保险事业中心,230500\n";
pub const REGISTRY_CSV: &str = "单位名称,机构编码,统一社会信用代码,单位类型,所属行政区划,所属经办机构\n\
双鸭山市财政局,230500001,11230500MB0000001P,机关,230500,230500\n\
双鸭山市教育局,230500002,11230500MB0000002T,机关,230500,230500\n\
坏行,230500003,123,机关,230500,230500\n";

pub async fn spawn_isolated_platform() -> TestPlatform {
    spawn_isolated_platform_limited(gateway::Config::default().public_writes_per_minute).await
}

async fn spawn_isolated_platform_limited(public_writes_per_minute: u32) -> TestPlatform {
    crate::helpers::spawn_isolated_with(|gateway| gateway.public_writes_per_minute = public_writes_per_minute).await
}

pub async fn post(platform: &TestPlatform, path: &str, body: Vec<u8>, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(platform.url(path)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

pub async fn load_registry(platform: &TestPlatform) {
    let (status, agencies) = post(platform, "/api/agencies/import", AGENCIES_CSV.into(), Some(ADMIN_TOKEN)).await;
    assert_eq!((status, agencies["loaded"].as_u64()), (200, Some(1)), "{agencies}");
    let (status, registry) = post(platform, "/api/registry/import", REGISTRY_CSV.into(), Some(ADMIN_TOKEN)).await;
    assert_eq!((status, registry["loaded"].as_u64()), (200, Some(2)), "{registry}");
}

#[tokio::test]
async fn import_registry_needs_the_admin_token_and_reports_bad_rows() {
    let platform = spawn_isolated_platform().await;

    let (no_token, _) = post(&platform, "/api/registry/import", REGISTRY_CSV.into(), None).await;
    let (wrong_token, body) = post(&platform, "/api/registry/import", REGISTRY_CSV.into(), Some("guess")).await;
    post(&platform, "/api/agencies/import", AGENCIES_CSV.into(), Some(ADMIN_TOKEN)).await;
    let (status, report) = post(&platform, "/api/registry/import", REGISTRY_CSV.into(), Some(ADMIN_TOKEN)).await;

    let oversized = vec![b'x'; 2 * 1024 * 1024];
    let (too_large, refusal) = post(&platform, "/api/registry/import", oversized, Some(ADMIN_TOKEN)).await;
    assert_eq!((too_large, refusal["code"].as_str()), (413, Some("file_too_large")), "{refusal}");
    assert_eq!(no_token, 401);
    assert_eq!((wrong_token, body["code"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(status, 200);
    assert_eq!(report["loaded"], 2);
    assert_eq!(report["errors"][0]["row"], 4);
    assert_eq!(report["errors"][0]["column"], "统一社会信用代码");
    platform.stop().await;
}

#[tokio::test]
async fn the_key_journey_over_the_json_api() {
    let platform = spawn_isolated_platform().await;
    load_registry(&platform).await;

    let (status, verified) = post(
        &platform,
        "/api/unit-names/verify",
        json!({"unit_type": "organ", "unit_name": "双鸭山市 财政局"}).to_string().into(),
        None,
    )
    .await;
    assert_eq!((status, verified["matched"].as_bool()), (200, Some(true)), "{verified}");
    let (_, missed) = post(
        &platform,
        "/api/unit-names/verify",
        json!({"unit_type": "机关", "unit_name": "双鸭山财政局"}).to_string().into(),
        None,
    )
    .await;
    assert_eq!(missed["matched"], false);
    assert_eq!(missed["candidates"][0], "双鸭山市财政局");

    let application = json!({
        "unit_type": "机关", "unit_name": "双鸭山市财政局", "applicant_name": "张伟",
        "applicant_id_number": "230502198001011238", "phone": "13804691234", "password": "Secret2026"
    });
    let (status, applied) = post(&platform, "/api/key-applications", application.to_string().into(), None).await;
    assert_eq!(status, 201, "{applied}");
    let id = applied["application_id"].as_str().expect("an application id").to_owned();
    assert_eq!(applied["username"], "230500001-01");
    assert_eq!(applied["applicant_id_number_masked"], "230502********1238");
    assert!(!applied.to_string().contains("230502198001011238"), "the ID number never comes back in clear");

    let (status, looked_up) = get_json(&platform.url(&format!("/api/key-applications/{id}"))).await;
    assert_eq!((status, looked_up["state"].as_str()), (200, Some("applied")));
    assert_eq!(looked_up["applicant_name"], "张*", "a public lookup masks the applicant's name");

    let wrong = json!({"applicant_id_number": "230502199002152344"}).to_string();
    let (status, refused) = post(&platform, &format!("/api/key-applications/{id}/withdraw"), wrong.into(), None).await;
    assert_eq!((status, refused["code"].as_str()), (404, Some("application_not_found")));

    let password = json!({"applicant_id_number": "230502198001011238", "new_password": "NewSecret2027"}).to_string();
    let (status, changed) =
        post(&platform, &format!("/api/key-applications/{id}/password"), password.into(), None).await;
    assert_eq!((status, changed["state"].as_str()), (200, Some("applied")));

    let right = json!({"applicant_id_number": "230502198001011238"}).to_string();
    let (status, withdrawn) =
        post(&platform, &format!("/api/key-applications/{id}/withdraw"), right.clone().into(), None).await;
    assert_eq!((status, withdrawn["state"].as_str()), (200, Some("withdrawn")));
    let (status, again) = post(&platform, &format!("/api/key-applications/{id}/withdraw"), right.into(), None).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("application_not_withdrawable")));
    assert!(again["message"].as_str().is_some_and(|message| message.contains("已撤回")), "{again}");
    platform.stop().await;
}

#[tokio::test]
async fn bad_input_gets_field_level_chinese_errors_never_a_500() {
    let platform = spawn_isolated_platform().await;
    load_registry(&platform).await;

    let bad = json!({
        "unit_type": "机关", "unit_name": "双鸭山市财政局", "applicant_name": "",
        "applicant_id_number": "230502198001011239", "phone": "1", "password": "short"
    });
    let (status, body) = post(&platform, "/api/key-applications", bad.to_string().into(), None).await;
    let (json_status, json_body) = post(&platform, "/api/key-applications", b"{not json".to_vec(), None).await;
    let (missing_status, missing) = get_json(&platform.url("/api/key-applications/SQ0")).await;

    assert_eq!(status, 422);
    assert_eq!(body["field"], "applicant_name");
    let fields: Vec<&str> =
        body["errors"].as_array().expect("errors").iter().filter_map(|error| error["field"].as_str()).collect();
    assert_eq!(fields, ["applicant_name", "applicant_id_number", "phone", "password"]);
    assert!(
        body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .all(|error| error["message"].as_str().is_some_and(|m| !m.is_ascii()))
    );
    assert_eq!((json_status, json_body["code"].as_str()), (400, Some("invalid_json")));
    assert_eq!((missing_status, missing["code"].as_str()), (404, Some("application_not_found")));
    platform.stop().await;
}

#[tokio::test]
async fn the_openapi_document_names_every_operation() {
    let platform = spawn_isolated_platform().await;

    let (status, document) = get_json(&platform.url("/api/openapi.json")).await;

    assert_eq!(status, 200);
    let operations: Vec<&str> = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|path| path.as_object().expect("operations").values())
        .filter_map(|operation| operation["operationId"].as_str())
        .collect();
    for expected in [
        "importRegistry",
        "listApiClients",
        "createApiClient",
        "updateApiClient",
        "issueApiClientCertificate",
        "revokeApiClientCertificate",
        "verifyUnitName",
        "applyForKey",
        "getKeyApplication",
        "withdrawKeyApplication",
        "changeKeyPassword",
        "login",
        "activateKey",
        "logout",
        "whoAmI",
        "issueCertificate",
        "renewCertificate",
        "revokeCertificate",
        "getCrl",
        "getMyUnit",
        "updateMyUnit",
        "checkPerson",
        "createPerson",
        "listPersons",
        "getPerson",
        "updatePerson",
        "deletePerson",
        "declare",
        "withdrawDeclaration",
        "getDeclaration",
        "listReviewQueue",
        "getReviewDeclaration",
        "claimDeclaration",
        "approveDeclaration",
        "rejectDeclaration",
        "listDocuments",
        "downloadDocument",
        "downloadBundle",
        "verifyDocument",
        "listRegistrationConflicts",
        "endRegistration",
        "getPersonHistory",
        "listRosterChanges",
        "saveRosterChange",
        "deleteRosterChange",
        "declareChanges",
        "downloadImportTemplate",
        "importPersons",
        "getImportJob",
        "downloadImportReport",
        "exportPersons",
    ] {
        assert!(operations.contains(&expected), "{expected} in {operations:?}");
    }
    platform.stop().await;
}

#[tokio::test]
async fn guessing_id_numbers_against_an_application_is_rate_limited() {
    let platform = spawn_isolated_platform_limited(3).await;
    load_registry(&platform).await;
    let application = json!({
        "unit_type": "机关", "unit_name": "双鸭山市财政局", "applicant_name": "张伟",
        "applicant_id_number": "230502198001011238", "phone": "13804691234", "password": "Secret2026"
    });
    let (_, applied) = post(&platform, "/api/key-applications", application.to_string().into(), None).await;
    let path = format!("/api/key-applications/{}/withdraw", applied["application_id"].as_str().expect("id"));
    let guess = json!({"applicant_id_number": "230502199002152344"}).to_string();

    // The allowance is counted per minute of the clock: start well inside a minute so all four calls share one.
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() % 60;
    if second > 50 {
        tokio::time::sleep(std::time::Duration::from_secs(61 - second)).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&platform, &path, guess.clone().into(), None).await.0);
    }
    let response = reqwest::Client::new().post(platform.url(&path)).body(guess).send().await.expect("answer");
    let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let (status, body): (u16, serde_json::Value) = (response.status().as_u16(), response.json().await.expect("json"));

    assert_eq!(statuses, [404, 404, 404], "three guesses are answered (applying has an allowance of its own)");
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().is_ok_and(|s| s <= 60)));
    platform.stop().await;
}
