//! The unit record over the API: who may read and change it, what a save stores, and that a declared record is
//! frozen.

use proto::units::{GetUnitRecordRequest, UnitRecordInput, UpdateUnitRecordRequest};
use tonic::Code;

use crate::helpers::{TestUnits, operator, spawn_units, staff};

const UNIT: &str = "230500001";
const OTHER_UNIT: &str = "230500002";

fn complete() -> UnitRecordInput {
    UnitRecordInput {
        unit_type: "机关".into(),
        region_code: "230502".into(),
        subordination: "市".into(),
        funding_source: "全额拨款".into(),
        legal_representative: "王建国".into(),
        legal_representative_id_number: "11010519491231002x".into(),
        address: "双鸭山市尖山区新兴大街88号".into(),
        post_code: "155100".into(),
        contact_name: "张伟".into(),
        contact_phone: "0469-4221234".into(),
        clerk_name: "张伟".into(),
        clerk_phone: "13804691234".into(),
        bank_name: "中国工商银行双鸭山分行".into(),
        bank_account_name: "双鸭山市财政局".into(),
        bank_account: "0907021009000012345".into(),
        administrative_posts: "42".into(),
        ..UnitRecordInput::default()
    }
}

async fn save(
    units: &TestUnits,
    caller: Option<proto::common::Caller>,
    record: UnitRecordInput,
) -> Result<proto::units::UpdateUnitRecordReply, tonic::Status> {
    units
        .client
        .clone()
        .update_unit_record(UpdateUnitRecordRequest { caller, record: Some(record) })
        .await
        .map(|reply| reply.into_inner())
}

#[tokio::test]
async fn the_operator_saves_its_record_and_the_legal_representatives_number_is_sealed_and_kept() {
    let units = spawn_units().await;
    units.draft(UNIT, "230500").await;

    let saved = save(&units, operator(UNIT), complete()).await.expect("saved").record.expect("record");

    assert!(saved.complete);
    assert_eq!((saved.region_code.as_str(), saved.subordination.as_str()), ("230502", "40"));
    assert_eq!(saved.legal_representative_id_number_masked, "110105********002X");
    let sealed: Vec<u8> = sqlx::query_scalar("select legal_representative_id_sealed from units")
        .fetch_one(&units.pool)
        .await
        .expect("row");
    assert!(!String::from_utf8_lossy(&sealed).contains("11010519491231002X"), "sealed at rest");
    let (clear, account): (Option<String>, Option<Vec<u8>>) =
        sqlx::query_as("select bank_account, bank_account_sealed from units")
            .fetch_one(&units.pool)
            .await
            .expect("row");
    assert!(clear.is_none() && account.is_some_and(|sealed| !String::from_utf8_lossy(&sealed).contains("0907021009")));
    assert_eq!(saved.bank_account, "0907021009000012345", "the unit's own operator reads its account");

    // The form shows the number masked and sends it empty: the stored one stays.
    let again =
        UnitRecordInput { legal_representative_id_number: String::new(), address: "新地址".into(), ..complete() };
    let saved = save(&units, operator(UNIT), again).await.expect("saved").record.expect("record");
    assert_eq!(
        (saved.address.as_str(), saved.legal_representative_id_number_masked.as_str()),
        ("新地址", "110105********002X")
    );

    let audited: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select actor, action, certificate_serial from kit_audit where action = 'unit.update'")
            .fetch_all(&units.pool)
            .await
            .expect("audit");
    assert_eq!(audited.len(), 2);
    assert_eq!(audited[0], (format!("{UNIT}-01"), "unit.update".into(), Some("0A1B2C".into())));
}

#[tokio::test]
async fn a_warning_is_saved_only_once_accepted_and_the_acceptance_is_kept() {
    let units = spawn_units().await;
    units.draft(UNIT, "230500").await;
    let mismatched = UnitRecordInput { org_code: "78305975-3".into(), ..complete() };

    let refused = save(&units, operator(UNIT), mismatched.clone()).await.expect_err("not accepted yet");
    assert_eq!(
        (refused.code(), kit::status::reason(&refused).as_deref()),
        (Code::FailedPrecondition, Some("warnings_not_accepted"))
    );
    let updated: Option<time::OffsetDateTime> =
        sqlx::query_scalar("select updated_at from units").fetch_one(&units.pool).await.expect("row");
    assert!(updated.is_none(), "nothing was saved");

    let accepted = UnitRecordInput { accepted_warnings: vec!["org_code_mismatch".into()], ..mismatched };
    let reply = save(&units, operator(UNIT), accepted).await.expect("saved");
    assert_eq!(reply.warnings.iter().map(|warning| warning.code.as_str()).collect::<Vec<_>>(), ["org_code_mismatch"]);
    let stored: serde_json::Value =
        sqlx::query_scalar("select accepted_warnings from units").fetch_one(&units.pool).await.expect("row");
    assert_eq!(
        (stored[0]["code"].as_str(), stored[0]["accepted_by"].as_str()),
        (Some("org_code_mismatch"), Some("230500001-01"))
    );
}

#[tokio::test]
async fn errors_refuse_the_whole_save_and_name_every_field() {
    let units = spawn_units().await;
    units.draft(UNIT, "230500").await;
    let bad = UnitRecordInput {
        post_code: "1551".into(),
        bank_account: "ABC".into(),
        clerk_name: String::new(),
        ..complete()
    };

    let refused = save(&units, operator(UNIT), bad).await.expect_err("errors refuse");

    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: Vec<String> = kit::status::violations(&refused).into_iter().map(|violation| violation.field).collect();
    assert_eq!(fields, ["clerk_name", "post_code", "bank_account"]);
}

#[tokio::test]
async fn only_the_units_own_operator_changes_it_and_reviewers_see_only_their_agencys_units() {
    let units = spawn_units().await;
    units.draft(UNIT, "230500").await;
    units.draft(OTHER_UNIT, "230521").await;
    let mut client = units.client.clone();

    for caller in [staff("agency_reviewer", "230500"), staff("province_admin", ""), staff("ca_operator", "")] {
        let refused = save(&units, caller, complete()).await.expect_err("not a unit operator");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    // An operator's unit is the one its account names; asking for another is refused.
    let refused = client
        .get_unit_record(GetUnitRecordRequest { caller: operator(UNIT), institution_code: OTHER_UNIT.into() })
        .await
        .expect_err("another unit's record");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let own = client
        .get_unit_record(GetUnitRecordRequest { caller: operator(UNIT), institution_code: String::new() })
        .await
        .expect("its own record")
        .into_inner();
    assert_eq!(own.institution_code, UNIT);

    let reviewer = |agency: &str| GetUnitRecordRequest {
        caller: staff("agency_reviewer", agency),
        institution_code: OTHER_UNIT.into(),
    };
    let refused = client.get_unit_record(reviewer("230500")).await.expect_err("another agency's unit");
    assert_eq!(refused.code(), Code::NotFound, "refused as if it did not exist");
    assert!(client.get_unit_record(reviewer("230521")).await.is_ok());
}

#[tokio::test]
async fn a_declared_record_is_frozen() {
    let units = spawn_units().await;
    units.draft(UNIT, "230500").await;
    sqlx::query("update units set state = 'declared'").execute(&units.pool).await.expect("declared");

    let refused = save(&units, operator(UNIT), complete()).await.expect_err("frozen");

    assert_eq!(
        (refused.code(), kit::status::reason(&refused).as_deref()),
        (Code::FailedPrecondition, Some("record_frozen"))
    );
    assert!(refused.message().contains("申报撤回"), "{}", refused.message());
}

#[tokio::test]
async fn a_key_rotation_seals_the_legal_representatives_number_again_under_the_new_key() {
    let mut units = spawn_units().await;
    units.draft(UNIT, "230500").await;
    units.draft(OTHER_UNIT, "230500").await;
    save(&units, operator(UNIT), complete()).await.expect("saved");
    // The other unit gives no number: only its account to seal there.
    save(&units, operator(OTHER_UNIT), UnitRecordInput { legal_representative_id_number: String::new(), ..complete() })
        .await
        .expect("saved");
    let first_key = "development-only-units-data-key".to_owned();
    units
        .restart_with(|config| {
            config.sealing.data_key = Some("the-second-units-key".to_owned().into());
            config.sealing.data_key_version = 2;
            config.sealing.retired_data_keys.insert("1".into(), first_key.into());
        })
        .await;
    let system = Some(proto::common::Caller { actor: "cli:test".into(), role: "system".into(), ..Default::default() });

    let rotated = units
        .client
        .clone()
        .rotate_data_key(proto::common::RotateDataKeyRequest { caller: system })
        .await
        .expect("rotated")
        .into_inner();

    assert_eq!((rotated.version, rotated.resealed, rotated.remaining), (2, 2, 0), "two rows sealed again");
    let versions: Vec<(String, Option<i32>)> =
        sqlx::query_as("select institution_code, key_version from units order by institution_code")
            .fetch_all(&units.pool)
            .await
            .expect("rows");
    assert_eq!(versions[0], (UNIT.to_owned(), Some(2)));
    let sealed: Vec<u8> =
        sqlx::query_scalar("select legal_representative_id_sealed from units where institution_code = $1")
            .bind(UNIT)
            .fetch_one(&units.pool)
            .await
            .expect("sealed");
    let current_only =
        kit::sealing::Sealer::new(&"the-second-units-key".to_owned().into(), 2, "index".to_owned().into())
            .expect("sealer");
    assert_eq!(current_only.open(2, &sealed).expect("opens with the new key alone"), "11010519491231002X");
}

#[tokio::test]
async fn an_account_stored_in_clear_by_an_earlier_version_is_sealed_at_start_up() {
    let mut units = spawn_units().await;
    units.draft(UNIT, "230500").await;
    sqlx::query("update units set bank_account = '0907021009000012345'").execute(&units.pool).await.expect("legacy");

    units.restart_with(|_| {}).await;

    let (clear, sealed): (Option<String>, Option<Vec<u8>>) =
        sqlx::query_as("select bank_account, bank_account_sealed from units")
            .fetch_one(&units.pool)
            .await
            .expect("row");
    assert!(clear.is_none() && sealed.is_some());
    let record = units
        .client
        .clone()
        .get_unit_record(GetUnitRecordRequest { caller: operator(UNIT), institution_code: String::new() })
        .await
        .expect("record")
        .into_inner();
    assert_eq!(record.bank_account, "0907021009000012345");
}
