//! Logging in: every refusal of a certificate, the wrong password, and legacy keys' activation (密钥激活).

use proto::identity::{ActivateKeyRequest, ImportLegacyKeysRequest};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SerialNumber};
use time::{Duration, OffsetDateTime};
use tonic::Code;

use crate::certificates::{PASSWORD, apply, csr, issue, login, reason};
use crate::helpers::{TestIdentity, caller, load_sample_registry, outbox_subjects, spawn_identity};

fn client_params(common_name: &str, serial: &[u8], not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = OffsetDateTime::now_utc() - Duration::days(400);
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn self_signed_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let certificate = params.self_signed(&key).expect("root");
    (certificate.pem(), Issuer::new(params, key))
}

#[tokio::test]
async fn login_refuses_a_missing_foreign_expired_or_unknown_certificate() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;
    issue(&identity, &application.application_id, "").await;
    let username = application.username.as_str();

    let missing = login(&identity, &[], username, PASSWORD).await.expect_err("no certificate");
    assert_eq!((missing.code(), reason(&missing).as_str()), (Code::Unauthenticated, "certificate_missing"));

    let (_, foreign_ca) = self_signed_ca("Foreign CA");
    let key = KeyPair::generate().expect("key");
    let foreign = client_params(username, &[7], OffsetDateTime::now_utc() + Duration::days(30))
        .signed_by(&key, &foreign_ca)
        .expect("foreign");
    let refused = login(&identity, foreign.der(), username, PASSWORD).await.expect_err("foreign CA");
    assert_eq!(reason(&refused), "certificate_invalid");

    // Made with the platform's own CA key, as the CA would have made it two years ago.
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&identity.ca.key).expect("key")).expect("ca key");
    let ca = Issuer::from_ca_cert_pem(&std::fs::read_to_string(&identity.ca.certificate).expect("cert"), ca_key)
        .expect("issuer");
    let expired = client_params(username, &[8], OffsetDateTime::now_utc() - Duration::days(1))
        .signed_by(&key, &ca)
        .expect("expired");
    let refused = login(&identity, expired.der(), username, PASSWORD).await.expect_err("expired");
    assert_eq!(reason(&refused), "certificate_expired");

    let unknown = client_params(username, &[9], OffsetDateTime::now_utc() + Duration::days(30))
        .signed_by(&key, &ca)
        .expect("unknown");
    let refused = login(&identity, unknown.der(), username, PASSWORD).await.expect_err("never issued");
    assert_eq!(reason(&refused), "certificate_unknown");

    let audited: i64 =
        sqlx::query_scalar("select count(*) from kit_audit where action = 'login' and outcome = 'refused'")
            .fetch_one(&identity.pool)
            .await
            .expect("audit");
    assert_eq!(audited, 4);
}

#[tokio::test]
async fn the_right_certificate_with_the_wrong_password_or_username_is_refused() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;
    let (csr_pem, _key) = csr();
    let certificate = issue(&identity, &application.application_id, &csr_pem).await.certificate.expect("certificate");
    let der = crate::certificates::der_of(&certificate.certificate_pem);

    let wrong_password = login(&identity, &der, &application.username, "Wrong2026x").await.expect_err("refused");
    let wrong_username = login(&identity, &der, "230500002-01", PASSWORD).await.expect_err("refused");

    for status in [wrong_password, wrong_username] {
        assert_eq!((status.code(), reason(&status).as_str()), (Code::Unauthenticated, "wrong_credentials"));
        assert_eq!(status.message(), "用户名或密码错误", "the two cannot be told apart");
    }
}

/// A legacy CA with one key for 双鸭山市财政局 (230500001), listed with its unit.
struct LegacyKey {
    der: Vec<u8>,
}

async fn load_legacy_key(identity: &TestIdentity) -> LegacyKey {
    use argon2::PasswordHasher as _;
    let (root_pem, legacy_ca) = self_signed_ca("原工资系统CA");
    let key = KeyPair::generate().expect("key");
    let certificate =
        client_params("legacy-0001", &[0x0A, 0xBC, 0x01], OffsetDateTime::now_utc() + Duration::days(365))
            .signed_by(&key, &legacy_ca)
            .expect("legacy certificate");
    let hash = argon2::Argon2::default().hash_password(b"Legacy2019").expect("hash").to_string();
    // PHC strings hold commas, so a CSV quotes them.
    let list = format!("证书序列号,登录用户名,密码哈希,机构编码\n0ABC01,legacy-0001,\"{hash}\",230500001\n,bad,,\n");
    let report = identity
        .client
        .clone()
        .import_legacy_keys(ImportLegacyKeysRequest {
            caller: caller("province_admin"),
            roots_pem: root_pem,
            file: list.into_bytes(),
        })
        .await
        .expect("the legacy list loads")
        .into_inner();
    assert_eq!((report.loaded, report.errors.len()), (1, 1), "{report:?}");
    LegacyKey { der: certificate.der().to_vec() }
}

fn activation(der: &[u8], ticket: &str, institution_code: &str, unit_name: &str) -> ActivateKeyRequest {
    ActivateKeyRequest {
        caller: caller("public"),
        certificate_der: der.to_vec(),
        activation_ticket: ticket.into(),
        category: "机关事业养老保险密钥注册".into(),
        agreement_accepted: true,
        institution_code: institution_code.into(),
        unit_name: unit_name.into(),
        agency_code: "230500".into(),
    }
}

#[tokio::test]
async fn a_legacy_key_is_activated_once_and_then_logs_in_directly() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let legacy = load_legacy_key(&identity).await;
    let mut client = identity.client.clone();

    let wrong = login(&identity, &legacy.der, "legacy-0001", "Wrong2026x").await.expect_err("the password first");
    assert_eq!(reason(&wrong), "wrong_credentials");
    let first = login(&identity, &legacy.der, "legacy-0001", "Legacy2019").await.expect("the password is right");
    assert!(first.account.is_none() && !first.activation_ticket.is_empty(), "activation comes first");
    assert_eq!(first.activation_institution_code, "230500001");
    let ticket = first.activation_ticket;

    let unknown_code = client
        .activate_key(activation(&legacy.der, &ticket, "999999999", "双鸭山市财政局"))
        .await
        .expect_err("no such institution");
    let fields: Vec<(String, String)> =
        kit::status::violations(&unknown_code).into_iter().map(|violation| (violation.field, violation.code)).collect();
    assert_eq!(fields, [("institution_code".to_owned(), "unknown_institution".to_owned())]);
    let other_unit = client
        .activate_key(activation(&legacy.der, &ticket, "230500002", "双鸭山市教育局"))
        .await
        .expect_err("the key was the 财政局's");
    assert_eq!(kit::status::violations(&other_unit)[0].code, "institution_mismatch");
    let wrong_name = client
        .activate_key(activation(&legacy.der, &ticket, "230500001", "双鸭山市教育局"))
        .await
        .expect_err("the name must match the code");
    assert_eq!(kit::status::violations(&wrong_name)[0].field, "unit_name");
    let forged = client
        .activate_key(activation(&legacy.der, "4102444800.00", "230500001", "双鸭山市财政局"))
        .await
        .expect_err("a forged ticket");
    assert_eq!(reason(&forged), "activation_expired");

    let activated = client
        .activate_key(activation(&legacy.der, &ticket, "230500001", "双鸭山市财政局"))
        .await
        .expect("activated")
        .into_inner();

    let account = activated.account.expect("logged in");
    assert_eq!((account.username.as_str(), account.institution_code.as_str()), ("legacy-0001", "230500001"));
    let again = client
        .activate_key(activation(&legacy.der, &ticket, "230500001", "双鸭山市财政局"))
        .await
        .expect_err("once only");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let direct = login(&identity, &legacy.der, "legacy-0001", "Legacy2019").await.expect("a direct login now");
    assert!(direct.activation_ticket.is_empty());
    assert_eq!(direct.certificate.expect("certificate").origin, "legacy");
    let subjects = outbox_subjects(&identity).await;
    for event in ["key_activated", "unit_first_login"] {
        assert_eq!(subjects.iter().filter(|subject| subject.ends_with(event)).count(), 1, "{event}: {subjects:?}");
    }
}
