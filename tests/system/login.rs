//! Logging in on 8443 with a real TLS client presenting real certificates: sessions, CSRF, lockout, revocation while
//! the gateway runs, the CA operator's API, and the trusted-header mode behind an ingress.

use std::time::Duration;

use kit::testing::eventually;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Credentials, TestPlatform, spawn_isolated_with};

async fn platform_with_registry(tune: impl FnOnce(&mut gateway::Config)) -> TestPlatform {
    let platform = spawn_isolated_with(tune).await;
    eventually(Duration::from_secs(30), "the gateway trusts the CA", || async {
        platform.https_client(None).get(platform.secure_url("/login")).send().await.is_ok()
    })
    .await;
    platform.load_demo_registry().await;
    platform
}

/// The session cookie and CSRF token a login handed out.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login(platform: &TestPlatform, credentials: &Credentials, password: &str) -> reqwest::Response {
    platform
        .https_client(Some(credentials))
        .post(platform.secure_url("/api/session"))
        .json(&json!({ "username": credentials.username, "password": password }))
        .send()
        .await
        .expect("the gateway answers")
}

async fn signed_in(platform: &TestPlatform, credentials: &Credentials) -> Session {
    let response = login(platform, credentials, &credentials.password).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("ascii").to_owned())
        .collect();
    let session = cookies.iter().find(|cookie| cookie.starts_with("pension_session=")).expect("a session cookie");
    let body: serde_json::Value = response.json().await.expect("json");
    Session {
        cookie: session.split(';').next().expect("pair").to_owned(),
        csrf: body["csrf_token"].as_str().expect("csrf token").to_owned(),
    }
}

async fn body(response: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_unit_logs_in_over_mutual_tls_and_its_session_is_guarded_by_cookie_and_csrf() {
    let platform = platform_with_registry(|_| {}).await;
    let unit = platform.unit_with_key().await;
    let client = platform.https_client(Some(&unit));

    let response = login(&platform, &unit, &unit.password).await;

    assert_eq!(response.status(), StatusCode::OK);
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("ascii").to_owned())
        .collect();
    let session_cookie = cookies.iter().find(|cookie| cookie.starts_with("pension_session=")).expect("session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(session_cookie.contains(flag), "{session_cookie}");
    }
    assert!(cookies.iter().any(|cookie| cookie.starts_with("pension_csrf=")), "{cookies:?}");
    let csrf_header = response.headers().get("x-csrf-token").expect("csrf header").to_str().expect("ascii").to_owned();
    let (_, answer) = body(response).await;
    assert_eq!(answer["account"]["role"], "unit_operator");
    assert_eq!(answer["account"]["institution_code"], "230500001");
    let session = Session { cookie: session_cookie.split(';').next().expect("pair").to_owned(), csrf: csrf_header };

    let (status, me) = body(
        client.get(platform.secure_url("/api/session")).header("cookie", &session.cookie).send().await.expect("whoAmI"),
    )
    .await;
    assert_eq!((status, me["account"]["username"].as_str()), (StatusCode::OK, Some(unit.username.as_str())));

    // The unit's draft record arrives through identity's event, and the main page shows it.
    eventually(Duration::from_secs(20), "the unit's draft record on the main page", || async {
        let page = client.get(platform.secure_url("/")).header("cookie", &session.cookie).send().await.expect("page");
        page.text().await.is_ok_and(|html| html.contains("录入中") && html.contains("双鸭山市财政局"))
    })
    .await;

    let (status, refused) = body(
        client
            .delete(platform.secure_url("/api/session"))
            .header("cookie", &session.cookie)
            .send()
            .await
            .expect("logout"),
    )
    .await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("csrf_token_invalid")));
    let logout = client
        .delete(platform.secure_url("/api/session"))
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &session.csrf)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let (status, after) = body(
        client.get(platform.secure_url("/api/session")).header("cookie", &session.cookie).send().await.expect("whoAmI"),
    )
    .await;
    assert_eq!((status, after["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("session_expired")));

    // Another certificate cannot ride on the session.
    let session = signed_in(&platform, &unit).await;
    let other = platform.staff("ca_operator", "ca.one", "").await;
    let (status, refused) = body(
        platform
            .https_client(Some(&other))
            .get(platform.secure_url("/api/session"))
            .header("cookie", &session.cookie)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("certificate_changed")));
    platform.stop().await;
}

#[tokio::test]
async fn a_missing_or_foreign_certificate_does_not_log_in() {
    let platform = platform_with_registry(|_| {}).await;
    let unit = platform.unit_with_key().await;

    let (status, refused) = body(
        platform
            .https_client(None)
            .post(platform.secure_url("/api/session"))
            .json(&json!({ "username": unit.username, "password": unit.password }))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("certificate_missing")));

    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, unit.username.as_str());
    let foreign = params.self_signed(&key).expect("self-signed");
    let impostor = Credentials {
        certificate_der: foreign.der().to_vec(),
        certificate_pem: foreign.pem(),
        key_pem: key.serialize_pem(),
        ..unit.clone()
    };
    let result = platform
        .https_client(Some(&impostor))
        .post(platform.secure_url("/api/session"))
        .json(&json!({ "username": unit.username, "password": unit.password }))
        .send()
        .await;
    assert!(result.is_err(), "the TLS handshake refuses a certificate of a foreign CA: {result:?}");
    platform.stop().await;
}

#[tokio::test]
async fn five_wrong_passwords_lock_the_account_until_the_lockout_ends() {
    let platform = platform_with_registry(|gateway| gateway.lockout = Duration::from_secs(3)).await;
    let unit = platform.unit_with_key().await;

    for left in (1..=4).rev() {
        let (status, refused) = body(login(&platform, &unit, "Wrong2026pass").await).await;
        assert_eq!((status, refused["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("wrong_credentials")));
        assert!(
            refused["message"].as_str().is_some_and(|message| message.contains(&format!("再错{left}次"))),
            "{refused}"
        );
    }
    let (status, locked) = body(login(&platform, &unit, "Wrong2026pass").await).await;
    assert_eq!((status, locked["code"].as_str()), (StatusCode::LOCKED, Some("account_locked")));
    let response = login(&platform, &unit, &unit.password).await;
    assert_eq!(response.status(), StatusCode::LOCKED, "the right password waits too");
    assert!(response.headers().get("retry-after").is_some());

    tokio::time::sleep(Duration::from_millis(3200)).await;
    let response = login(&platform, &unit, &unit.password).await;
    assert_eq!(response.status(), StatusCode::OK, "the lock has expired");
    platform.stop().await;
}

#[tokio::test]
async fn a_certificate_the_ca_operator_revokes_is_refused_without_a_restart() {
    let platform = platform_with_registry(|_| {}).await;
    let unit = platform.unit_with_key().await;
    let unit_session = signed_in(&platform, &unit).await;
    let operator = platform.staff("ca_operator", "ca.operator", "").await;
    let operator_session = signed_in(&platform, &operator).await;
    let operator_client = platform.https_client(Some(&operator));

    // The unit cannot revoke; the operator can, through the API.
    let (status, _) = body(
        platform
            .https_client(Some(&unit))
            .post(platform.secure_url(&format!("/api/certificates/{}/revoke", unit.serial)))
            .header("cookie", &unit_session.cookie)
            .header("x-csrf-token", &unit_session.csrf)
            .json(&json!({ "reason": "key_compromise" }))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, revoked) = body(
        operator_client
            .post(platform.secure_url(&format!("/api/certificates/{}/revoke", unit.serial)))
            .header("cookie", &operator_session.cookie)
            .header("x-csrf-token", &operator_session.csrf)
            .json(&json!({ "reason": "key_compromise" }))
            .send()
            .await
            .expect("revokeCertificate"),
    )
    .await;
    assert_eq!((status, revoked["state"].as_str()), (StatusCode::OK, Some("revoked")));

    // Within the gateway's refresh (1 s here, 30 s by default): the session ends, a new handshake fails, and the
    // published CRL lists the serial.
    eventually(Duration::from_secs(15), "the revoked certificate's session ends", || async {
        let response = platform
            .https_client(Some(&unit))
            .get(platform.secure_url("/api/session"))
            .header("cookie", &unit_session.cookie)
            .send()
            .await;
        match response {
            Err(_) => true,
            Ok(response) => body(response).await.1["code"] == "certificate_revoked",
        }
    })
    .await;
    eventually(Duration::from_secs(15), "a new TLS handshake refuses the revoked certificate", || async {
        platform.https_client(Some(&unit)).get(platform.secure_url("/login")).send().await.is_err()
    })
    .await;
    let crl = reqwest::get(platform.url("/ca/crl")).await.expect("crl");
    assert_eq!(crl.headers()["content-type"], "application/pkix-crl");
    assert!(!crl.bytes().await.expect("der").is_empty());
    platform.stop().await;
}

#[tokio::test]
async fn the_ca_operator_makes_a_key_through_the_api_and_the_unit_logs_in_with_it() {
    let platform = platform_with_registry(|_| {}).await;
    let operator = platform.staff("ca_operator", "ca.maker", "").await;
    let session = signed_in(&platform, &operator).await;
    let client = platform.https_client(Some(&operator));
    let application = platform
        .identity()
        .apply_for_key(proto::identity::ApplyForKeyRequest {
            category: "机关事业养老保险密钥注册".into(),
            unit_type: "机关".into(),
            unit_name: "双鸭山市教育局".into(),
            applicant_name: "李娜".into(),
            applicant_id_number: "230502199002152344".into(),
            phone: "13904691234".into(),
            password: "Edu2026pass".into(),
            ..Default::default()
        })
        .await
        .expect("applied")
        .into_inner();

    let (status, listed) = body(
        client
            .get(platform.secure_url("/api/key-applications?state=applied"))
            .header("cookie", &session.cookie)
            .send()
            .await
            .expect("listKeyApplications"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed["applications"]
            .as_array()
            .expect("list")
            .iter()
            .any(|a| a["application_id"] == application.application_id.as_str())
    );
    let (status, issued) = body(
        client
            .post(platform.secure_url(&format!("/api/key-applications/{}/certificate", application.application_id)))
            .header("cookie", &session.cookie)
            .header("x-csrf-token", &session.csrf)
            .json(&json!({}))
            .send()
            .await
            .expect("issueCertificate"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert!(issued["pkcs12_base64"].as_str().is_some_and(|p12| !p12.is_empty()));
    let unit = Credentials {
        username: application.username.clone(),
        password: "Edu2026pass".into(),
        serial: issued["certificate"]["serial"].as_str().expect("serial").into(),
        certificate_pem: issued["certificate"]["certificate_pem"].as_str().expect("pem").into(),
        certificate_der: {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateDer::from_pem_slice(
                issued["certificate"]["certificate_pem"].as_str().expect("pem").as_bytes(),
            )
            .expect("der")
            .to_vec()
        },
        key_pem: issued["private_key_pem"].as_str().expect("key").into(),
    };
    let (status, answer) = body(login(&platform, &unit, &unit.password).await).await;
    assert_eq!((status, answer["account"]["unit_name"].as_str()), (StatusCode::OK, Some("双鸭山市教育局")));

    // Renewal hands over a new key; the old certificate is superseded.
    let (status, renewed) = body(
        client
            .post(platform.secure_url(&format!("/api/certificates/{}/renew", unit.serial)))
            .header("cookie", &session.cookie)
            .header("x-csrf-token", &session.csrf)
            .send()
            .await
            .expect("renewCertificate"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{renewed}");
    assert_ne!(renewed["certificate"]["serial"], unit.serial.as_str());
    platform.stop().await;
}

#[tokio::test]
async fn behind_an_ingress_the_certificate_comes_in_the_trusted_header() {
    let platform =
        spawn_isolated_with(|gateway| gateway.client_certificates = gateway::ClientCertificateMode::Header).await;
    platform.load_demo_registry().await;
    let unit = platform.unit_with_key().await;
    let url = format!("http://127.0.0.1:{}/api/session", platform.https_port);
    let encoded = crate::ingress::url_encode(&unit.certificate_pem);
    let client = reqwest::Client::new();

    let (status, answer) = body(
        client
            .post(&url)
            .header("ssl-client-cert", encoded)
            .json(&json!({ "username": unit.username, "password": unit.password }))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("signed_in")));
    let (status, refused) = body(
        client
            .post(&url)
            .json(&json!({ "username": unit.username, "password": unit.password }))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("certificate_missing")));
    // The public port never reads the header.
    let response = client.get(platform.url("/api/session")).send().await.expect("answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    platform.stop().await;
}

/// A key of the earlier wage system for 双鸭山市教育局 (230500002), its root and list loaded as the admin would.
async fn legacy_unit(platform: &TestPlatform) -> Credentials {
    use argon2::PasswordHasher as _;
    let root_key = rcgen::KeyPair::generate().expect("key");
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    root.distinguished_name.push(rcgen::DnType::CommonName, "原工资系统CA");
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root_pem = root.self_signed(&root_key).expect("root").pem();
    let issuer = rcgen::Issuer::new(root, root_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "gz-0002");
    leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x4D, 0x02]));
    let certificate = leaf.signed_by(&key, &issuer).expect("legacy certificate");
    let hash = argon2::Argon2::default().hash_password(b"Legacy2019").expect("hash").to_string();
    let list = format!("证书序列号,登录用户名,密码哈希,机构编码\n4D02,gz-0002,\"{hash}\",230500002\n");
    let report = platform
        .identity()
        .import_legacy_keys(proto::identity::ImportLegacyKeysRequest {
            caller: Some(proto::common::Caller {
                actor: "test".into(),
                role: "province_admin".into(),
                ..Default::default()
            }),
            roots_pem: root_pem,
            file: list.into_bytes(),
        })
        .await
        .expect("loaded")
        .into_inner();
    assert_eq!(report.loaded, 1, "{report:?}");
    Credentials {
        username: "gz-0002".into(),
        password: "Legacy2019".into(),
        serial: "4D02".into(),
        certificate_pem: certificate.pem(),
        certificate_der: certificate.der().to_vec(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn a_legacy_key_is_activated_through_the_api_and_then_logs_in_directly() {
    let platform = platform_with_registry(|_| {}).await;
    let legacy = legacy_unit(&platform).await;
    let client = platform.https_client(Some(&legacy));
    // The gateway trusts the legacy root once its next refresh has it.
    eventually(Duration::from_secs(15), "the legacy root is trusted", || async {
        client.get(platform.secure_url("/login")).send().await.is_ok()
    })
    .await;

    let response = login(&platform, &legacy, &legacy.password).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|cookie| cookie.starts_with("pension_session="))
        .and_then(|cookie| cookie.split(';').next())
        .expect("a session for the activation")
        .to_owned();
    let (_, pending) = body(response).await;
    assert_eq!(
        (pending["status"].as_str(), pending["activation"]["institution_code"].as_str()),
        (Some("activation_required"), Some("230500002"))
    );
    let csrf = pending["csrf_token"].as_str().expect("csrf").to_owned();
    let (status, refused) =
        body(client.get(platform.secure_url("/api/session")).header("cookie", &cookie).send().await.expect("whoAmI"))
            .await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("activation_required")));

    let page = client.get(platform.secure_url("/activate")).header("cookie", &cookie).send().await.expect("page");
    let html = page.text().await.expect("html");
    assert!(
        html.contains("密钥激活") && html.contains("双鸭山市社会保险事业中心") && html.contains("230500002"),
        "{html}"
    );

    let activate =
        |institution_code: &str| {
            let request = client
            .post(platform.secure_url("/api/key-activation"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({ "category": "pension_key", "agreement_accepted": true, "institution_code": institution_code,
                           "unit_name": "双鸭山市教育局", "agency_code": "230500" }));
            async move { body(request.send().await.expect("activateKey")).await }
        };
    let (status, wrong) = activate("230500001").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let codes: Vec<(&str, &str)> = wrong["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|error| Some((error["field"].as_str()?, error["code"].as_str()?)))
        .collect();
    assert!(codes.contains(&("institution_code", "institution_mismatch")), "{wrong}");
    let (status, activated) = activate("230500002").await;
    assert_eq!(
        (status, activated["account"]["unit_name"].as_str()),
        (StatusCode::OK, Some("双鸭山市教育局")),
        "{activated}"
    );

    let session = signed_in(&platform, &legacy).await;
    let (status, me) = body(
        client.get(platform.secure_url("/api/session")).header("cookie", &session.cookie).send().await.expect("whoAmI"),
    )
    .await;
    assert_eq!((status, me["account"]["institution_code"].as_str()), (StatusCode::OK, Some("230500002")));

    // A unit sees only its own record.
    let caller = |code: &str| {
        Some(proto::common::Caller {
            actor: "gz-0002".into(),
            role: "unit_operator".into(),
            institution_code: code.into(),
            ..Default::default()
        })
    };
    let mut units =
        proto::units::units_client::UnitsClient::new(platform.platform.channel(proto::names::Service::Units));
    let refused = units
        .get_unit_record(proto::units::GetUnitRecordRequest {
            caller: caller("230500002"),
            institution_code: "230500001".into(),
        })
        .await
        .expect_err("another unit's record");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    eventually(Duration::from_secs(20), "its own draft record", || {
        let mut units = units.clone();
        async move {
            units
                .get_unit_record(proto::units::GetUnitRecordRequest {
                    caller: caller("230500002"),
                    institution_code: String::new(),
                })
                .await
                .is_ok_and(|record| record.into_inner().state == "draft")
        }
    })
    .await;
    platform.stop().await;
}

#[tokio::test]
async fn a_session_ends_after_the_idle_timeout_but_not_while_it_is_used() {
    let platform = platform_with_registry(|gateway| gateway.session_idle = Duration::from_secs(2)).await;
    let unit = platform.unit_with_key().await;
    let session = signed_in(&platform, &unit).await;
    let client = platform.https_client(Some(&unit));
    let who = || async {
        client.get(platform.secure_url("/api/session")).header("cookie", &session.cookie).send().await.expect("whoAmI")
    };

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(who().await.status(), StatusCode::OK, "each request restarts the idle timer");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, expired) = body(who().await).await;
    assert_eq!((status, expired["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("session_expired")));
    platform.stop().await;
}
