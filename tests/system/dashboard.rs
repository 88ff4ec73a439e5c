//! The enrollment dashboards (参保进度): figures that follow a real journey through the services' events, an agency
//! that sees its own units only, the same figures over the agency API, and a projection whose rebuild from the
//! event streams equals what the consumers kept live.

use std::time::Duration;

use kit::testing::eventually;
use proto::common::Caller;
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::units::units_client::UnitsClient;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Credentials, TestPlatform, spawn_isolated_with};
use crate::people_api::Operator;

/// The reason the scenario's reviewer gives, to find among the most common ones.
pub(crate) const REJECTION: &str = "单位联系电话有误，请核实后重新申报";

/// What the scenario leaves, for the tests to look for.
pub(crate) struct Scenario {
    /// 双鸭山市财政局's agency (230500), whose declaration was rejected once and then approved.
    pub agency: String,
}

fn unit_caller(unit: &Credentials) -> Option<Caller> {
    Some(Caller {
        actor: unit.username.clone(),
        role: "unit_operator".into(),
        institution_code: unit.username.split('-').next().expect("code").to_owned(),
        ..Default::default()
    })
}

fn reviewer_caller(agency: &str) -> Option<Caller> {
    Some(Caller {
        actor: "reviewer.scenario".into(),
        role: "agency_reviewer".into(),
        agency_code: agency.into(),
        ..Default::default()
    })
}

/// Logs the unit in once, as the gateway does, so identity announces its first login.
async fn first_login(platform: &TestPlatform, unit: &Credentials) {
    platform
        .identity()
        .login(proto::identity::LoginRequest {
            caller: Some(Caller { actor: "anonymous".into(), role: "public".into(), ..Default::default() }),
            certificate_der: unit.certificate_der.clone(),
            username: unit.username.clone(),
            password: unit.password.clone(),
        })
        .await
        .expect("the unit logs in");
}

/// A peak-week morning in miniature, over the services' own calls: 双鸭山市财政局 (agency 230500) gets its key, logs
/// in, fills its record, saves three staff and deletes one, declares, is rejected with a reason, declares again
/// and is approved; 尖山区人民政府办公室 (agency 230502) gets its key and logs in; 岭东区农业技术推广中心 (230503)
/// only applies. The other six registry units do nothing.
pub(crate) async fn run_scenario(platform: &TestPlatform) -> Scenario {
    let finance = platform.unit_with_key().await;
    first_login(platform, &finance).await;
    let staff = [("李娜", "230502199002152344"), ("王芳", "230502198507203341"), ("赵磊", "230502199107083314")];
    let (caller, agency) = crate::browser::record_and_staff(platform, &finance, &staff).await;
    let mut personnel = PersonnelClient::new(platform.platform.channel(Service::Personnel));
    let listed = personnel
        .list_persons(proto::personnel::ListPersonsRequest { caller: caller.clone(), ..Default::default() })
        .await
        .expect("listed")
        .into_inner();
    let deleted = listed.persons.iter().find(|person| person.name == "赵磊").expect("赵磊 saved");
    personnel
        .delete_person(proto::personnel::DeletePersonRequest {
            caller: caller.clone(),
            person_id: deleted.person_id.clone(),
        })
        .await
        .expect("deleted");

    let mut units = UnitsClient::new(platform.platform.channel(Service::Units));
    let reviewer = reviewer_caller(&agency);
    let declare = || proto::units::DeclareRequest { caller: unit_caller(&finance), kind: String::new() };
    let first = units.declare(declare()).await.expect("declared").into_inner();
    let review = |id: &str| proto::units::ReviewRequest { caller: reviewer.clone(), declaration_id: id.into() };
    units.claim_declaration(review(&first.declaration_id)).await.expect("claimed");
    units
        .reject_declaration(proto::units::RejectDeclarationRequest {
            caller: reviewer.clone(),
            declaration_id: first.declaration_id.clone(),
            reason: REJECTION.into(),
        })
        .await
        .expect("rejected");
    let second = units.declare(declare()).await.expect("declared again").into_inner();
    units.claim_declaration(review(&second.declaration_id)).await.expect("claimed");
    units.approve_declaration(review(&second.declaration_id)).await.expect("approved");

    let district = platform.unit_with_key_named("尖山区人民政府办公室").await;
    first_login(platform, &district).await;
    platform
        .identity()
        .apply_for_key(proto::identity::ApplyForKeyRequest {
            category: "机关事业养老保险密钥注册".into(),
            unit_type: "事业单位".into(),
            unit_name: "岭东区农业技术推广中心".into(),
            applicant_name: "张伟".into(),
            applicant_id_number: "230502198001011238".into(),
            phone: "13804691234".into(),
            password: "Demo-Passw0rd!".into(),
            ..Default::default()
        })
        .await
        .expect("applied");
    Scenario { agency }
}

/// The units per state of a dashboard's JSON, from its funnel and region tables: (step, units).
fn funnel(progress: &Value) -> Vec<(String, u64)> {
    let table = progress["tables"].as_array().and_then(|tables| tables.iter().find(|table| table["id"] == "funnel"));
    table
        .and_then(|table| table["rows"].as_array())
        .map(|rows| {
            rows.iter()
                .map(|row| (row[0].as_str().unwrap_or("").to_owned(), row[1].as_f64().unwrap_or(-1.0) as u64))
                .collect()
        })
        .unwrap_or_default()
}

fn table<'a>(progress: &'a Value, id: &str) -> &'a Value {
    progress["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|table| table["id"] == id))
        .unwrap_or(&Value::Null)
}

fn step(name: &str, units: u64) -> (String, u64) {
    (name.to_owned(), units)
}

async fn dashboard(who: &Operator, platform: &TestPlatform, query: &str) -> (StatusCode, Value) {
    who.call(reqwest::Method::GET, platform.secure_url(&format!("/api/enrollment-progress{query}")), None).await
}

#[tokio::test]
async fn the_dashboards_follow_the_journey_each_agency_sees_its_own_and_the_projection_equals_its_rebuild() {
    let platform = spawn_isolated_with(|_| {}).await;
    eventually(Duration::from_secs(30), "the gateway trusts the CA", || async {
        platform.https_client(None).get(platform.secure_url("/login")).send().await.is_ok()
    })
    .await;
    platform.load_demo_registry().await;
    let scenario = run_scenario(&platform).await;

    // The province admin sees the whole registry: nine units, each where the journey left it.
    let admin = Operator::sign_in(&platform, &platform.staff("province_admin", "admin.dashboard", "").await).await;
    let expected = vec![
        step("编制通单位（应参保）", 9),
        step("已申请密钥", 3),
        step("密钥已制作", 2),
        step("已启用密钥", 2),
        step("单位信息已填写", 1),
        step("已申报", 1),
        step("已参保", 1),
    ];
    let mut seen = Vec::new();
    for _ in 0..100 {
        let (status, progress) = dashboard(&admin, &platform, "").await;
        assert_eq!(status, StatusCode::OK, "{progress}");
        seen = funnel(&progress);
        let cumulative = table(&progress, "people_cumulative")["rows"].as_array().and_then(|rows| rows.last().cloned());
        if seen == expected && cumulative.as_ref().is_some_and(|row| row[3].as_f64() == Some(2.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, expected, "the funnel follows the events");
    let (_, progress) = dashboard(&admin, &platform, "").await;
    let people = table(&progress, "people_by_day")["rows"][0].clone();
    assert_eq!((people[1].as_f64(), people[5].as_f64()), (Some(3.0), Some(1.0)), "3 staff saved, 1 deleted: {people}");
    let queue = table(&progress, "queue")["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!((queue[0][5].as_f64(), queue[0][6].as_f64()), (Some(1.0), Some(1.0)), "one approved, one rejected");
    assert_eq!(table(&progress, "rejections")["rows"][0][0], REJECTION);
    let regions = table(&progress, "regions")["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(regions.len(), 1, "every demo unit is in 双鸭山市: {regions:?}");
    assert_eq!((regions[0][0].as_str(), regions[0][1].as_f64()), (Some("双鸭山市"), Some(9.0)));
    assert_eq!(regions[0].as_array().and_then(|row| row.last()).and_then(Value::as_str), Some("11.1%"));

    // A region narrows every figure, the queue and the reasons too.
    let (_, city) = dashboard(&admin, &platform, "?region=2305").await;
    assert_eq!(funnel(&city)[0], step("编制通单位（应参保）", 9));
    assert_eq!(table(&city, "rejections")["rows"][0][0], REJECTION);
    let (_, elsewhere) = dashboard(&admin, &platform, "?region=2301").await;
    assert_eq!(funnel(&elsewhere)[0], step("编制通单位（应参保）", 0));
    assert_eq!(table(&elsewhere, "queue")["rows"], serde_json::json!([]));
    assert_eq!(table(&elsewhere, "rejections")["rows"], serde_json::json!([]));

    // 尖山区's reviewer sees its two units and nothing of 230500's queue, even when asking for it.
    let district_reviewer =
        Operator::sign_in(&platform, &platform.staff("agency_reviewer", "reviewer.230502", "230502").await).await;
    let (status, theirs) = dashboard(&district_reviewer, &platform, "").await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    assert_eq!(funnel(&theirs)[0], step("编制通单位（应参保）", 2));
    assert_eq!(funnel(&theirs)[3], step("已启用密钥", 1));
    assert_eq!(table(&theirs, "queue")["rows"], serde_json::json!([]), "no other agency's queue");
    assert_eq!(table(&theirs, "rejections")["rows"], serde_json::json!([]));
    let (_, asked) = dashboard(&district_reviewer, &platform, &format!("?agency={}", scenario.agency)).await;
    assert_eq!(funnel(&asked)[0], step("编制通单位（应参保）", 0), "asking for another agency finds nothing");
    assert!(table(&theirs, "agencies").is_null(), "a reviewer has no breakdown by agency");
    let city_reviewer =
        Operator::sign_in(&platform, &platform.staff("agency_reviewer", "reviewer.230500", &scenario.agency).await)
            .await;
    let (_, city) = dashboard(&city_reviewer, &platform, "").await;
    assert_eq!(funnel(&city)[0], step("编制通单位（应参保）", 6));
    assert_eq!(funnel(&city)[6], step("已参保", 1));

    // A unit has no dashboard; a bad filter says what is wrong.
    let unit = Operator::sign_in(&platform, &platform.unit_with_key_named("双鸭山市教育局").await).await;
    let (status, refused) = dashboard(&unit, &platform, "").await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, invalid) = dashboard(&admin, &platform, "?region=23x").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");
    assert_eq!(invalid["errors"][0]["code"], "invalid_region_code", "{invalid}");

    // Every table downloads as xlsx: the funnel's sheet holds its numbers.
    let download = admin.get(platform.secure_url("/dashboard/xlsx/funnel")).await;
    assert_eq!(download.status(), StatusCode::OK);
    let bytes = download.bytes().await.expect("xlsx");
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).expect("an xlsx workbook");
    let sheet = calamine::Reader::worksheet_range_at(&mut book, 0).expect("a sheet").expect("readable");
    let cells: Vec<String> = sheet.rows().flat_map(|row| row.iter().map(|cell| cell.to_string())).collect();
    assert!(cells.contains(&"已参保".to_owned()) && cells.contains(&"9".to_owned()), "{cells:?}");
    let missing = admin.get(platform.secure_url("/dashboard/xlsx/nothing")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // The same figures over the agency API, with units:read.
    let key = crate::agency_api::api_client(&platform, "statistics-bureau", &["units:read"], 0).await;
    let mut client = crate::agency_api::connect(&platform, platform.agency_port, Some(&key)).await;
    let public = client
        .get_enrollment_progress(proto::agency::GetEnrollmentProgressRequest::default())
        .await
        .expect("answered")
        .into_inner();
    let registry: u32 = public.unit_states.iter().map(|row| row.units).sum();
    let approved: u32 = public
        .unit_states
        .iter()
        .filter(|row| row.state == proto::agency::UnitProgressState::Approved as i32)
        .map(|row| row.units)
        .sum();
    assert_eq!((registry, approved), (9, 1));
    assert_eq!(public.rejection_reasons[0].reason, REJECTION);
    let narrowed = client
        .get_enrollment_progress(proto::agency::GetEnrollmentProgressRequest {
            agency_code: "230503".into(),
            region_code: String::new(),
        })
        .await
        .expect("answered")
        .into_inner();
    let key_applied: Vec<_> = narrowed.unit_states.iter().map(|row| (row.state, row.units)).collect();
    assert_eq!(key_applied, [(proto::agency::UnitProgressState::KeyApplied as i32, 1)]);

    // Rebuilt from the three streams, the projection equals the one the consumers kept.
    let pool = kit::db::connect_application(&platform.databases[1].config(), "units").await.expect("units database");
    let jetstream = async_nats::jetstream::new(platform.platform.nats.clone());
    // The last logins' events may still be on their way (in an outbox, or to a consumer): compared again until
    // they have arrived; a real drift stays and fails below.
    let mut verification = units::progress::Verification::default();
    for _ in 0..50 {
        verification =
            units::progress::verify(&pool, &jetstream, &platform.platform.namespace).await.expect("verified");
        if verification.pending == 0 && verification.matches() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(verification.pending, 0, "the consumers caught up");
    assert!(verification.matches(), "{:?}", verification.differences);
    assert!(verification.replayed.values().all(|replayed| *replayed > 0), "{:?}", verification.replayed);
    // And a projection that drifted is found.
    let mut transaction = kit::db::begin_scoped(&pool, &kit::db::Scope::All).await.expect("transaction");
    sqlx::query("update progress_people set deleted = deleted + 1").execute(&mut *transaction).await.expect("drift");
    transaction.commit().await.expect("committed");
    let drifted = units::progress::verify(&pool, &jetstream, &platform.platform.namespace).await.expect("verified");
    assert!(!drifted.matches());
    assert_eq!(drifted.differences["progress_people"].len(), 2, "{:?}", drifted.differences);
    platform.stop().await;
}
