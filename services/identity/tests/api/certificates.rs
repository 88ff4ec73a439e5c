//! The CA operator's work: making a key from a CSR or as a generated key pair, renewing, revoking, the CRL, staff
//! accounts; and who may do each.

use proto::identity::{
    ApplyForKeyRequest, CreateAccountRequest, GetTrustBundleRequest, IssueCertificateRequest, IssuedCertificate,
    KeyApplication, LoginReply, LoginRequest, RenewCertificateRequest, RevokeCertificateRequest,
    WithdrawKeyApplicationRequest,
};
use rustls_pki_types::pem::PemObject as _;
use tonic::Code;

use crate::helpers::{TestIdentity, caller, load_sample_registry, outbox_subjects, spawn_identity};

pub const PASSWORD: &str = "Secret2026";
const APPLICANT_ID: &str = "230502198001011238";

pub async fn apply(identity: &TestIdentity) -> KeyApplication {
    let request = ApplyForKeyRequest {
        caller: None,
        category: "机关事业养老保险密钥注册".into(),
        unit_type: "机关".into(),
        unit_name: "双鸭山市财政局".into(),
        applicant_name: "张伟".into(),
        applicant_id_number: APPLICANT_ID.into(),
        phone: "13804691234".into(),
        password: PASSWORD.into(),
    };
    identity.client.clone().apply_for_key(request).await.expect("the application is accepted").into_inner()
}

/// A USB key's CSR: the key pair stays with the test, as it would stay on the key.
pub fn csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let request = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (request, key)
}

pub async fn issue(identity: &TestIdentity, application_id: &str, csr_pem: &str) -> IssuedCertificate {
    let request = IssueCertificateRequest {
        caller: caller("ca_operator"),
        application_id: application_id.into(),
        csr_pem: csr_pem.into(),
    };
    identity.client.clone().issue_certificate(request).await.expect("the certificate is made").into_inner()
}

pub fn der_of(pem: &str) -> Vec<u8> {
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM").to_vec()
}

pub async fn login(
    identity: &TestIdentity,
    der: &[u8],
    username: &str,
    password: &str,
) -> Result<LoginReply, tonic::Status> {
    let request = LoginRequest {
        caller: caller("public"),
        certificate_der: der.to_vec(),
        username: username.into(),
        password: password.into(),
    };
    identity.client.clone().login(request).await.map(tonic::Response::into_inner)
}

pub fn reason(status: &tonic::Status) -> String {
    kit::status::reason(status).unwrap_or_default()
}

#[tokio::test]
async fn a_key_made_from_a_csr_logs_the_unit_in_with_its_password() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;
    let (csr_pem, _key) = csr();

    let issued = issue(&identity, &application.application_id, &csr_pem).await;

    let certificate = issued.certificate.expect("certificate");
    assert!(issued.private_key_pem.is_empty() && issued.pkcs12.is_empty(), "a CSR's key never passes the platform");
    assert_eq!(certificate.username, application.username);
    assert!(certificate.subject.contains("O=双鸭山市财政局") && certificate.subject.contains("OU=230500001"));
    let made = identity
        .client
        .clone()
        .get_key_application(proto::identity::GetKeyApplicationRequest {
            application_id: application.application_id.clone(),
        })
        .await
        .expect("application")
        .into_inner();
    assert_eq!((made.state.as_str(), made.state_label.as_str()), ("made", "已制作"));
    let reply = login(&identity, &der_of(&certificate.certificate_pem), &application.username, PASSWORD)
        .await
        .expect("the unit logs in");
    let account = reply.account.expect("account");
    assert_eq!((account.role.as_str(), account.institution_code.as_str()), ("unit_operator", "230500001"));
    assert_eq!(account.unit_name, "双鸭山市财政局");
    let subjects = outbox_subjects(&identity).await;
    for event in ["certificate_issued", "unit_first_login"] {
        assert_eq!(subjects.iter().filter(|subject| subject.ends_with(event)).count(), 1, "{event}: {subjects:?}");
    }

    // A second login is no first login.
    login(&identity, &der_of(&certificate.certificate_pem), &application.username, PASSWORD).await.expect("again");
    let subjects = outbox_subjects(&identity).await;
    assert_eq!(subjects.iter().filter(|subject| subject.ends_with("unit_first_login")).count(), 1);
}

#[tokio::test]
async fn a_generated_key_is_handed_over_once_as_pem_and_pkcs12() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;

    let issued = issue(&identity, &application.application_id, "").await;

    assert!(issued.private_key_pem.contains("BEGIN PRIVATE KEY"));
    let store = p12_keystore::KeyStore::from_pkcs12(
        &issued.pkcs12,
        &issued.pkcs12_password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .expect("the PKCS#12 opens with its one-time password");
    let (_, chain) = store.private_key_chain().expect("a key with its chain");
    let certificate = issued.certificate.expect("certificate");
    assert_eq!(chain.certs()[0].as_der(), der_of(&certificate.certificate_pem));
    assert_eq!(chain.certs().len(), 2, "the CA travels with the certificate");
    let stored: Vec<String> =
        sqlx::query_scalar("select pem from certificates").fetch_all(&identity.pool).await.expect("stored");
    assert!(stored.iter().all(|pem| !pem.contains("PRIVATE KEY")), "the private key is not kept");
}

#[tokio::test]
async fn only_a_new_application_is_made_and_only_by_the_ca_operator() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;
    let (csr_pem, _key) = csr();
    let mut client = identity.client.clone();

    for role in ["unit_operator", "province_admin", "public"] {
        let refused = client
            .issue_certificate(IssueCertificateRequest {
                caller: caller(role),
                application_id: application.application_id.clone(),
                csr_pem: csr_pem.clone(),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::PermissionDenied, "{role}");
    }
    let bad_csr = client
        .issue_certificate(IssueCertificateRequest {
            caller: caller("ca_operator"),
            application_id: application.application_id.clone(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
        })
        .await
        .expect_err("a broken CSR is refused");
    assert_eq!(
        (bad_csr.code(), kit::status::violations(&bad_csr)[0].field.as_str()),
        (Code::InvalidArgument, "csr_pem")
    );

    issue(&identity, &application.application_id, &csr_pem).await;
    let twice = client
        .issue_certificate(IssueCertificateRequest {
            caller: caller("ca_operator"),
            application_id: application.application_id.clone(),
            csr_pem,
        })
        .await
        .expect_err("made once");
    assert_eq!((twice.code(), reason(&twice).as_str()), (Code::FailedPrecondition, "application_not_applied"));

    let withdrawn = apply(&identity).await;
    client
        .withdraw_key_application(WithdrawKeyApplicationRequest {
            caller: None,
            application_id: withdrawn.application_id.clone(),
            applicant_id_number: APPLICANT_ID.into(),
        })
        .await
        .expect("withdrawn");
    let refused = client
        .issue_certificate(IssueCertificateRequest {
            caller: caller("ca_operator"),
            application_id: withdrawn.application_id,
            csr_pem: String::new(),
        })
        .await
        .expect_err("a withdrawn application is not made");
    assert_eq!(reason(&refused), "application_not_applied");
}

#[tokio::test]
async fn a_revoked_certificate_logs_nobody_in_and_is_on_the_crl() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;
    let issued = issue(&identity, &application.application_id, "").await.certificate.expect("certificate");
    let der = der_of(&issued.certificate_pem);
    let mut client = identity.client.clone();

    let refused = client
        .revoke_certificate(RevokeCertificateRequest {
            caller: caller("unit_operator"),
            serial: issued.serial.clone(),
            reason: "key_compromise".into(),
        })
        .await
        .expect_err("only the CA operator revokes");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let revoked = client
        .revoke_certificate(RevokeCertificateRequest {
            caller: caller("ca_operator"),
            serial: issued.serial.clone(),
            reason: "key_compromise".into(),
        })
        .await
        .expect("revoked")
        .into_inner();

    assert_eq!((revoked.state.as_str(), revoked.state_label.as_str()), ("revoked", "已吊销"));
    let status = login(&identity, &der, &application.username, PASSWORD).await.expect_err("refused");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unauthenticated, "certificate_revoked"));
    let bundle = client.get_trust_bundle(GetTrustBundleRequest {}).await.expect("bundle").into_inner();
    assert!(bundle.revoked_serials.contains(&issued.serial));
    let (_, crl) = x509_parser::parse_x509_crl(&bundle.crl_der).expect("a CRL");
    let listed: Vec<String> =
        crl.iter_revoked_certificates().map(|entry| identity::ca::hex_upper(entry.raw_serial())).collect();
    assert!(listed.iter().any(|serial| identity::ca::normalize_serial(serial) == issued.serial), "{listed:?}");
    let key_state: String = sqlx::query_scalar("select state from key_applications where application_id = $1")
        .bind(&application.application_id)
        .fetch_one(&identity.pool)
        .await
        .expect("state");
    assert_eq!(key_state, "revoked");
    let again = client
        .revoke_certificate(RevokeCertificateRequest {
            caller: caller("ca_operator"),
            serial: issued.serial.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("revoked once");
    assert_eq!(reason(&again), "certificate_not_active");
    assert!(outbox_subjects(&identity).await.iter().any(|subject| subject.ends_with("certificate_revoked")));
}

#[tokio::test]
async fn renewal_replaces_the_certificate_and_the_old_one_stops_working() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let application = apply(&identity).await;
    let old = issue(&identity, &application.application_id, "").await.certificate.expect("certificate");
    let (csr_pem, _key) = csr();

    let renewed = identity
        .client
        .clone()
        .renew_certificate(RenewCertificateRequest {
            caller: caller("ca_operator"),
            serial: old.serial.clone(),
            csr_pem,
        })
        .await
        .expect("renewed")
        .into_inner()
        .certificate
        .expect("certificate");

    assert_ne!(renewed.serial, old.serial);
    assert_eq!(renewed.subject, old.subject, "the same unit and account");
    let refused = login(&identity, &der_of(&old.certificate_pem), &application.username, PASSWORD)
        .await
        .expect_err("the old certificate is superseded");
    assert_eq!(reason(&refused), "certificate_revoked");
    login(&identity, &der_of(&renewed.certificate_pem), &application.username, PASSWORD)
        .await
        .expect("the new one works");
    assert!(outbox_subjects(&identity).await.iter().any(|subject| subject.ends_with("certificate_renewed")));
}

#[tokio::test]
async fn an_admin_creates_staff_accounts_with_their_certificates() {
    let identity = spawn_identity().await;
    load_sample_registry(&identity).await;
    let mut client = identity.client.clone();
    let reviewer = |caller, agency: &str| CreateAccountRequest {
        caller,
        username: "reviewer.li".into(),
        display_name: "李审核".into(),
        role: "agency_reviewer".into(),
        agency_code: agency.into(),
        password: "Review2026".into(),
    };

    let refused = client.create_account(reviewer(caller("ca_operator"), "230500")).await.expect_err("not an admin");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let invalid = client.create_account(reviewer(caller("security_admin"), "")).await.expect_err("needs its agency");
    assert_eq!(kit::status::violations(&invalid)[0].field, "agency_code");
    let created =
        client.create_account(reviewer(caller("security_admin"), "230500")).await.expect("created").into_inner();

    let account = created.account.expect("account");
    assert_eq!(
        (account.role_label.as_str(), account.agency_name.as_str()),
        ("经办机构审核员", "双鸭山市社会保险事业中心")
    );
    let certificate = created.certificate.expect("issued");
    assert!(!certificate.pkcs12.is_empty());
    let der = der_of(&certificate.certificate.expect("certificate").certificate_pem);
    let reply = login(&identity, &der, "reviewer.li", "Review2026").await.expect("the reviewer logs in");
    assert_eq!(reply.account.expect("account").agency_code, "230500");
    let taken = client.create_account(reviewer(caller("province_admin"), "230500")).await.expect_err("taken");
    assert_eq!(kit::status::violations(&taken)[0].code, "username_taken");
}
