//! Key applications: apply, look up, withdraw, change the password; every refusal; events and audit records.

use proto::identity::{
    ApplyForKeyRequest, ChangeKeyPasswordRequest, GetKeyApplicationRequest, KeyApplication, VerifyUnitNameRequest,
    WithdrawKeyApplicationRequest,
};

use crate::helpers::{TestIdentity, load_sample_registry, spawn_identity};

const APPLICANT_ID: &str = "230502198001011238";
const OTHER_ID: &str = "230502199002152344";

fn application() -> ApplyForKeyRequest {
    ApplyForKeyRequest {
        caller: None,
        category: "机关事业养老保险密钥注册".into(),
        unit_type: "机关".into(),
        unit_name: "双鸭山市财政局".into(),
        applicant_name: "张伟".into(),
        applicant_id_number: APPLICANT_ID.into(),
        phone: "13804691234".into(),
        password: "Secret2026".into(),
    }
}

async fn apply(identity: &TestIdentity) -> KeyApplication {
    identity.client.clone().apply_for_key(application()).await.expect("the application is accepted").into_inner()
}

fn withdraw_request(application_id: &str, id_number: &str) -> WithdrawKeyApplicationRequest {
    WithdrawKeyApplicationRequest {
        caller: None,
        application_id: application_id.into(),
        applicant_id_number: id_number.into(),
    }
}

#[tokio::test]
async fn an_application_gets_an_id_and_a_username_and_shows_among_the_units_keys() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;

    let applied = apply(&identity).await;
    let second = apply(&identity).await;
    let verified = identity
        .client
        .clone()
        .verify_unit_name(VerifyUnitNameRequest {
            unit_type: "机关".into(), unit_name: "双鸭山市财政局".into()
        })
        .await
        .expect("answers")
        .into_inner();

    assert!(applied.application_id.starts_with("SQ"), "{}", applied.application_id);
    assert_eq!(applied.username, "230500001-01");
    assert_eq!(second.username, "230500001-02");
    assert_eq!(applied.state, "applied");
    assert_eq!(applied.applicant_id_number_masked, "230502********1238");
    assert_eq!(verified.keys.len(), 2);
    assert!(verified.keys.iter().all(|key| key.state == "applied"));
    let stored: String = sqlx::query_scalar("select password_hash from key_applications where application_id = $1")
        .bind(&applied.application_id)
        .fetch_one(&identity.pool)
        .await
        .expect("row");
    assert!(stored.starts_with("$argon2id$"), "the password is stored as an argon2id hash");
    let clear_id: i64 =
        sqlx::query_scalar("select count(*) from key_applications where applicant_id_number_masked = $1")
            .bind(APPLICANT_ID)
            .fetch_one(&identity.pool)
            .await
            .expect("count");
    assert_eq!(clear_id, 0, "the ID number is never stored in clear");
}

#[tokio::test]
async fn every_bad_field_is_reported_at_once() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let request = ApplyForKeyRequest {
        unit_name: "双鸭山市不存在局".into(),
        applicant_name: String::new(),
        applicant_id_number: "230502198001011239".into(),
        phone: "12345".into(),
        password: "short".into(),
        ..application()
    };

    let status = identity.client.clone().apply_for_key(request).await.expect_err("refused");

    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields: Vec<(String, String)> =
        kit::status::violations(&status).into_iter().map(|violation| (violation.field, violation.code)).collect();
    for expected in [
        ("unit_name", "unit_not_in_registry"),
        ("applicant_name", "required"),
        ("applicant_id_number", "id_number_check_digit"),
        ("phone", "invalid_phone"),
        ("password", "password_too_short"),
    ] {
        assert!(fields.contains(&(expected.0.into(), expected.1.into())), "{expected:?} in {fields:?}");
    }
}

#[tokio::test]
async fn a_new_application_is_withdrawn_only_with_the_applicants_id_number() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let applied = apply(&identity).await;
    let mut client = identity.client.clone();

    let wrong_person = client.withdraw_key_application(withdraw_request(&applied.application_id, OTHER_ID)).await;
    let withdrawn = client
        .withdraw_key_application(withdraw_request(&applied.application_id, APPLICANT_ID))
        .await
        .expect("withdrawn");
    let again = client.withdraw_key_application(withdraw_request(&applied.application_id, APPLICANT_ID)).await;
    let looked_up = client
        .get_key_application(GetKeyApplicationRequest { application_id: applied.application_id.clone() })
        .await
        .expect("found");

    assert_eq!(wrong_person.expect_err("wrong ID number").code(), tonic::Code::NotFound);
    assert_eq!(withdrawn.into_inner().state, "withdrawn");
    let again = again.expect_err("already withdrawn");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(kit::status::reason(&again).as_deref(), Some("application_not_withdrawable"));
    assert_eq!(looked_up.into_inner().state, "withdrawn");
}

#[tokio::test]
async fn an_application_whose_key_was_made_cannot_be_withdrawn_but_its_password_can_change() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let applied = apply(&identity).await;
    // Making the key is the CA's work (the next journey); here the state is set as the CA will set it.
    sqlx::query("update key_applications set state = 'made', made_at = now() where application_id = $1")
        .bind(&applied.application_id)
        .execute(&identity.pool)
        .await
        .expect("made");
    let mut client = identity.client.clone();

    let withdraw = client.withdraw_key_application(withdraw_request(&applied.application_id, APPLICANT_ID)).await;
    let changed = client
        .change_key_password(ChangeKeyPasswordRequest {
            caller: None,
            application_id: applied.application_id.clone(),
            applicant_id_number: APPLICANT_ID.into(),
            new_password: "NewSecret2027".into(),
        })
        .await;

    assert_eq!(kit::status::reason(&withdraw.expect_err("made")).as_deref(), Some("application_not_withdrawable"));
    assert_eq!(changed.expect("password changed").into_inner().state, "made");
}

#[tokio::test]
async fn a_password_change_needs_the_right_id_number_a_good_password_and_a_live_application() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let applied = apply(&identity).await;
    let mut client = identity.client.clone();
    let change = |id_number: &str, password: &str| ChangeKeyPasswordRequest {
        caller: None,
        application_id: applied.application_id.clone(),
        applicant_id_number: id_number.into(),
        new_password: password.into(),
    };
    let hash_before: String =
        sqlx::query_scalar("select password_hash from key_applications").fetch_one(&identity.pool).await.expect("hash");

    let wrong_id = client.change_key_password(change(OTHER_ID, "NewSecret2027")).await.expect_err("wrong person");
    let weak = client.change_key_password(change(APPLICANT_ID, "12345678")).await.expect_err("too simple");
    client.change_key_password(change(APPLICANT_ID, "NewSecret2027")).await.expect("changed");
    let hash_after: String =
        sqlx::query_scalar("select password_hash from key_applications").fetch_one(&identity.pool).await.expect("hash");
    client.withdraw_key_application(withdraw_request(&applied.application_id, APPLICANT_ID)).await.expect("withdrawn");
    let after_withdrawal =
        client.change_key_password(change(APPLICANT_ID, "Another2028")).await.expect_err("withdrawn");

    assert_eq!(wrong_id.code(), tonic::Code::NotFound);
    assert_eq!(kit::status::violations(&weak)[0].code, "password_too_simple");
    assert_ne!(hash_before, hash_after);
    assert_eq!(kit::status::reason(&after_withdrawal).as_deref(), Some("password_not_changeable"));
}

#[tokio::test]
async fn every_change_and_refusal_is_audited_and_every_change_is_an_event() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let applied = apply(&identity).await;
    let mut client = identity.client.clone();
    client.withdraw_key_application(withdraw_request(&applied.application_id, OTHER_ID)).await.expect_err("refused");
    client.withdraw_key_application(withdraw_request(&applied.application_id, APPLICANT_ID)).await.expect("withdrawn");

    let audit: Vec<(String, String)> = sqlx::query_as("select action, outcome from kit_audit order by seq")
        .fetch_all(&identity.pool)
        .await
        .expect("audit");
    let events: Vec<String> = sqlx::query_scalar("select subject from kit_outbox order by id")
        .fetch_all(&identity.pool)
        .await
        .expect("events");
    let tamper = sqlx::query("update kit_audit set outcome = 'success'").execute(&identity.pool).await;

    for expected in [
        ("registry.import", "success"),
        ("key_application.apply", "success"),
        ("key_application.withdraw", "refused"),
        ("key_application.withdraw", "success"),
    ] {
        assert!(audit.contains(&(expected.0.into(), expected.1.into())), "{expected:?} in {audit:?}");
    }
    let namespace = identity.platform.namespace.clone();
    assert!(events.contains(&namespace.event_subject("identity", "key_applied")), "{events:?}");
    assert!(events.contains(&namespace.event_subject("identity", "key_application_withdrawn")), "{events:?}");
    assert!(tamper.is_err(), "the audit log refuses updates");
}
