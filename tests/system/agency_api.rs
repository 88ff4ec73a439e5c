//! The agency API on its own port, as another agency's system meets it: mutual TLS with the certificate the province
//! admin issued, every method allowed by exactly its scope, refusals with the right status and reason, rate limits,
//! every call audited without an ID number in clear, answers that follow a real declaration, the event stream
//! resumed after a forced disconnect, and the grpcurl examples of docs/agency-api.md run as written.

use std::collections::HashSet;
use std::time::Duration;

use kit::testing::eventually;
use proto::agency::agency_api_client::AgencyApiClient;
use proto::agency::{
    EnrollmentState, Event, EventType, GetPersonEnrollmentRequest, ListUnitsRequest, PersonKind, RegistryEntry,
    RetireRegistryEntryRequest, StreamEventsRequest, UnitState, UpsertRegistryEntryRequest,
};
use proto::common::Caller;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::helpers::{TestPlatform, spawn_isolated_with};

const SCOPES: [&str; 4] = ["persons:read", "units:read", "events:read", "registry:write"];

fn system() -> Option<Caller> {
    Some(Caller { actor: "test".into(), role: "system".into(), ..Caller::default() })
}

/// A client's certificate and key, PEM.
#[derive(Clone)]
pub(crate) struct ClientKey {
    certificate: String,
    key: String,
}

async fn ready_platform() -> TestPlatform {
    let platform = spawn_isolated_with(|_| {}).await;
    eventually(Duration::from_secs(30), "the gateway trusts the CA", || async {
        platform.https_client(None).get(platform.secure_url("/login")).send().await.is_ok()
    })
    .await;
    platform.load_demo_registry().await;
    platform
}

/// An API client with `scopes` and a certificate the platform generated for it.
pub(crate) async fn api_client(
    platform: &TestPlatform,
    client_id: &str,
    scopes: &[&str],
    calls_per_minute: u32,
) -> ClientKey {
    let mut identity = platform.identity();
    identity
        .create_api_client(proto::identity::CreateApiClientRequest {
            caller: system(),
            client_id: client_id.into(),
            display_name: format!("测试部门 {client_id}"),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            calls_per_minute,
        })
        .await
        .expect("the client is created");
    let issued = identity
        .issue_api_client_certificate(proto::identity::IssueApiClientCertificateRequest {
            caller: system(),
            client_id: client_id.into(),
            csr_pem: String::new(),
        })
        .await
        .expect("its certificate is issued")
        .into_inner();
    ClientKey { certificate: issued.certificate.expect("certificate").pem, key: issued.private_key_pem }
}

fn ca_pem(platform: &TestPlatform) -> String {
    std::fs::read_to_string(&platform.ca.certificate).expect("ca.crt")
}

/// A client of the agency port at `port` (the gateway's, or a proxy's), presenting `key` when given.
pub(crate) async fn connect(platform: &TestPlatform, port: u16, key: Option<&ClientKey>) -> AgencyApiClient<Channel> {
    crate::helpers::install_crypto_provider();
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem(platform))).domain_name("localhost");
    if let Some(key) = key {
        tls = tls.identity(Identity::from_pem(&key.certificate, &key.key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("a TLS connection to the agency port");
    AgencyApiClient::new(channel)
}

fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, expected: &str) {
    match result {
        Ok(answer) => panic!("expected {code:?} {expected}, got {answer:?}"),
        Err(status) => {
            assert_eq!((status.code(), reason(&status).as_str()), (code, expected), "{}", status.message());
            assert!(!status.message().is_empty(), "a refusal says why");
        }
    }
}

/// The registry entry of a demo unit, as 校验 finds it.
async fn demo_entry(platform: &TestPlatform, unit_name: &str) -> RegistryEntry {
    let found = platform
        .identity()
        .verify_unit_name(proto::identity::VerifyUnitNameRequest {
            unit_type: "机关".into(),
            unit_name: unit_name.into(),
        })
        .await
        .expect("verify")
        .into_inner();
    let entry = found.entry.expect("a demo entry");
    RegistryEntry {
        institution_code: entry.institution_code,
        unit_name: entry.unit_name,
        credit_code: entry.credit_code,
        unit_type: entry.unit_type,
        region_code: entry.region_code,
        agency_code: entry.agency_code,
        administrative_posts: entry.administrative_posts,
        institutional_posts: entry.institutional_posts,
        logistics_posts: entry.logistics_posts,
        retired_at: None,
    }
}

/// Calls `method` with a well-formed request; `Ok` or the refusal.
async fn call(client: &mut AgencyApiClient<Channel>, method: &str, entry: &RegistryEntry) -> Result<(), Status> {
    match method {
        "GetPersonEnrollment" => client
            .get_person_enrollment(GetPersonEnrollmentRequest {
                id_number: "230502198001011238".into(),
                name: String::new(),
            })
            .await
            .map(|_| ()),
        "ListUnits" => client.list_units(ListUnitsRequest::default()).await.map(|_| ()),
        "GetEnrollmentProgress" => {
            client.get_enrollment_progress(proto::agency::GetEnrollmentProgressRequest::default()).await.map(|_| ())
        }
        "StreamEvents" => {
            let mut stream = client
                .stream_events(StreamEventsRequest { stop_at_end: true, ..Default::default() })
                .await?
                .into_inner();
            while let Some(event) = stream.next().await {
                event?;
            }
            Ok(())
        }
        "UpsertRegistryEntry" => {
            client.upsert_registry_entry(UpsertRegistryEntryRequest { entry: Some(entry.clone()) }).await.map(|_| ())
        }
        "RetireRegistryEntry" => {
            let retired = client
                .retire_registry_entry(RetireRegistryEntryRequest {
                    institution_code: entry.institution_code.clone(),
                    reason: "测试撤销".into(),
                })
                .await
                .map(|_| ());
            // Put it back, so the next caller finds the registry as it was.
            if retired.is_ok() {
                client.upsert_registry_entry(UpsertRegistryEntryRequest { entry: Some(entry.clone()) }).await?;
            }
            retired
        }
        other => panic!("unknown method {other}"),
    }
}

#[tokio::test]
async fn every_method_is_allowed_by_its_scope_and_refused_without_it() {
    let platform = ready_platform().await;
    let entry = demo_entry(&platform, "双鸭山市教育局").await;
    let mut granted_sets: Vec<(String, Vec<&str>)> =
        SCOPES.iter().map(|scope| (scope.replace(':', "-"), vec![*scope])).collect();
    granted_sets.push(("nothing".into(), vec![]));
    granted_sets.push(("everything".into(), SCOPES.to_vec()));
    let mut matrix = Vec::new();
    for (name, granted) in &granted_sets {
        let key = api_client(&platform, &format!("matrix-{name}"), granted, 0).await;
        let mut client = connect(&platform, platform.agency_port, Some(&key)).await;
        for (method, needed) in gateway::AGENCY_METHOD_SCOPES {
            let result = call(&mut client, method, &entry).await;
            let allowed = granted.contains(&needed);
            match (&result, allowed) {
                (Ok(()), true) => {}
                (Err(status), false) => {
                    assert_eq!(status.code(), Code::PermissionDenied, "{name} {method}: {status:?}");
                    assert_eq!(reason(status), "scope_missing");
                    assert!(status.message().contains(needed), "the refusal names the scope: {}", status.message());
                }
                (result, allowed) => panic!("{name} calling {method} (allowed: {allowed}): {result:?}"),
            }
            matrix.push(format!("{name:>14} {method:<20} {}", if result.is_ok() { "allowed" } else { "refused" }));
        }
    }
    println!("{}", matrix.join("\n"));
    assert_eq!(matrix.len(), granted_sets.len() * gateway::AGENCY_METHOD_SCOPES.len());
    platform.stop().await;
}

/// A leaf certificate for client authentication signed by `issuer`, valid in `validity`.
fn leaf_signed_by(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
) -> ClientKey {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.not_before = validity.0;
    params.not_after = validity.1;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let certificate = params.signed_by(&key, issuer).expect("signed");
    ClientKey { certificate: certificate.pem(), key: key.serialize_pem() }
}

#[tokio::test]
async fn mutual_tls_admits_a_good_certificate_and_says_why_it_refuses_the_others() {
    let platform = ready_platform().await;
    let now = time::OffsetDateTime::now_utc();
    let good = api_client(&platform, "finance-province", &["persons:read"], 0).await;
    let lookup = GetPersonEnrollmentRequest { id_number: "230502198001011238".into(), name: String::new() };

    // Good: the certificate the platform issued to a registered client.
    let mut client = connect(&platform, platform.agency_port, Some(&good)).await;
    let answer = client.get_person_enrollment(lookup.clone()).await.expect("a good certificate is admitted");
    assert_eq!(answer.get_ref().state(), EnrollmentState::NotEnrolled);
    assert_eq!(answer.get_ref().id_number_masked, "230502********1238");

    // None: the handshake completes, the call is refused with the reason.
    let mut anonymous = connect(&platform, platform.agency_port, None).await;
    assert_refused(anonymous.get_person_enrollment(lookup.clone()).await, Code::Unauthenticated, "certificate_missing");

    // Expired: signed by the platform's own CA, but no longer valid.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&platform.ca.key).expect("ca.key")).expect("key");
    let platform_ca = rcgen::Issuer::from_ca_cert_pem(&ca_pem(&platform), ca_key).expect("the platform CA");
    let expired =
        leaf_signed_by(&platform_ca, "finance-old", (now - time::Duration::days(400), now - time::Duration::days(35)));
    let mut client = connect(&platform, platform.agency_port, Some(&expired)).await;
    assert_refused(client.get_person_enrollment(lookup.clone()).await, Code::Unauthenticated, "certificate_expired");

    // Foreign CA: a CA the platform does not know.
    let foreign_key = rcgen::KeyPair::generate().expect("key");
    let mut foreign_params = rcgen::CertificateParams::new(vec![]).expect("params");
    foreign_params.distinguished_name.push(rcgen::DnType::CommonName, "某外部CA");
    foreign_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_certificate = foreign_params.self_signed(&foreign_key).expect("foreign CA");
    let foreign_ca = rcgen::Issuer::from_ca_cert_der(foreign_certificate.der(), foreign_key).expect("issuer");
    let foreign = leaf_signed_by(
        &foreign_ca,
        "finance-province",
        (now - time::Duration::days(1), now + time::Duration::days(30)),
    );
    let mut client = connect(&platform, platform.agency_port, Some(&foreign)).await;
    assert_refused(client.get_person_enrollment(lookup.clone()).await, Code::Unauthenticated, "certificate_untrusted");

    // Unknown client: a valid certificate of the platform's CA that belongs to a unit operator, not to a client.
    let unit = platform.unit_with_key().await;
    let unit_key = ClientKey { certificate: unit.certificate_pem.clone(), key: unit.key_pem.clone() };
    let mut client = connect(&platform, platform.agency_port, Some(&unit_key)).await;
    assert_refused(client.get_person_enrollment(lookup.clone()).await, Code::Unauthenticated, "client_unknown");

    // Revoked: the same good client, after the admin revokes its certificate.
    let serial = platform
        .identity()
        .list_api_clients(proto::identity::ListApiClientsRequest { caller: system() })
        .await
        .expect("clients")
        .into_inner()
        .clients
        .into_iter()
        .find(|client| client.client_id == "finance-province")
        .and_then(|client| client.certificates.into_iter().next())
        .expect("its certificate")
        .serial;
    platform
        .identity()
        .revoke_api_client_certificate(proto::identity::RevokeApiClientCertificateRequest {
            caller: system(),
            serial,
            reason: "key_compromise".into(),
        })
        .await
        .expect("revoked");
    let mut client = connect(&platform, platform.agency_port, Some(&good)).await;
    eventually(Duration::from_secs(10), "the revocation takes effect", || {
        let mut client = client.clone();
        let lookup = lookup.clone();
        async move {
            matches!(client.get_person_enrollment(lookup).await, Err(status) if reason(&status) == "certificate_revoked")
        }
    })
    .await;
    assert_refused(client.get_person_enrollment(lookup.clone()).await, Code::Unauthenticated, "certificate_revoked");

    // A disabled client is refused too, however good its certificate.
    let other = api_client(&platform, "tax-province", &["persons:read"], 0).await;
    platform
        .identity()
        .update_api_client(proto::identity::UpdateApiClientRequest {
            caller: system(),
            client_id: "tax-province".into(),
            display_name: "省税务局".into(),
            scopes: vec!["persons:read".into()],
            calls_per_minute: 0,
            state: "disabled".into(),
        })
        .await
        .expect("disabled");
    let mut client = connect(&platform, platform.agency_port, Some(&other)).await;
    assert_refused(client.get_person_enrollment(lookup).await, Code::PermissionDenied, "client_disabled");
    platform.stop().await;
}

#[tokio::test]
async fn bad_calls_get_their_status_and_every_call_is_audited_without_an_id_number() {
    let platform = ready_platform().await;
    let key = api_client(&platform, "police-province", &["persons:read", "units:read", "events:read"], 0).await;
    let mut client = connect(&platform, platform.agency_port, Some(&key)).await;

    let malformed = client
        .get_person_enrollment(GetPersonEnrollmentRequest {
            id_number: "230502198001011239".into(),
            name: String::new(),
        })
        .await;
    let status = malformed.expect_err("a wrong check digit is refused");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "id_number_check_digit"));
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|violation| violation.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["id_number"]);
    assert_refused(
        client.list_units(ListUnitsRequest { page_size: 501, ..Default::default() }).await,
        Code::InvalidArgument,
        "page_size_too_large",
    );
    assert_refused(
        client.list_units(ListUnitsRequest { page_token: "not-a-token".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "invalid_page_token",
    );
    assert_refused(
        client.stream_events(StreamEventsRequest { cursor: "%%%".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "invalid_cursor",
    );

    // Rate: a client allowed three calls a minute is told when to come back on the fourth.
    let slow = api_client(&platform, "statistics-province", &["units:read"], 3).await;
    let mut slow_client = connect(&platform, platform.agency_port, Some(&slow)).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(slow_client.list_units(ListUnitsRequest::default()).await);
    }
    // A minute may turn between the calls; then the count starts again and all four pass.
    if let Some(Err(status)) = answers.iter().find(|answer| answer.is_err()) {
        assert_eq!((status.code(), reason(status).as_str()), (Code::ResourceExhausted, "rate_limited"));
        let retry = status.get_details_retry_info().and_then(|info| info.retry_delay).expect("retry info");
        assert!(retry <= Duration::from_secs(60) && retry > Duration::ZERO, "{retry:?}");
    } else {
        panic!("the fourth call within a minute should be refused: {answers:?}");
    }

    // Every call above is in identity's audit log, refusals too, and the clear ID number in none of them.
    let identity_database = &platform.databases[0];
    let pool = sqlx::PgPool::connect(&identity_database.url).await.expect("identity database");
    let audited: Vec<(String, String, String, serde_json::Value)> = sqlx::query_as(
        "select actor, action, outcome, detail from kit_audit where action like 'agency_api.%' order by seq",
    )
    .fetch_all(&pool)
    .await
    .expect("audit rows");
    assert!(audited.len() >= 8, "{audited:?}");
    assert!(audited.iter().any(|(actor, action, outcome, detail)| actor == "police-province"
        && action == "agency_api.GetPersonEnrollment"
        && outcome == "refused"
        && detail["reason"] == "id_number_check_digit"
        && detail["id_number"] == "(malformed)"));
    assert!(audited.iter().any(|(actor, _, outcome, detail)| actor == "statistics-province"
        && outcome == "refused"
        && detail["reason"] == "rate_limited"));
    let text = serde_json::to_string(&audited).expect("json");
    assert!(!text.contains("230502198001011239") && !text.contains("230502198001011238"), "{text}");
    platform.stop().await;
}

#[tokio::test]
async fn answers_follow_a_real_declaration_from_draft_to_approval() {
    let (platform, operator) = crate::people_api::signed_in_unit().await;
    let key = api_client(&platform, "finance-province", &["persons:read", "units:read", "events:read"], 0).await;
    let mut client = connect(&platform, platform.agency_port, Some(&key)).await;
    let (status, saved) = operator
        .call(reqwest::Method::PUT, platform.secure_url("/api/my-unit"), Some(crate::people_api::unit_record()))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{saved}");
    let agency = saved["record"]["agency_code"].as_str().expect("agency").to_owned();
    let person = json!({
        "kind": "staff", "name": "李娜", "id_type": "01", "id_number": "230502199002152344",
        "funding_form": "全额拨款", "work_start": "2012-07-01", "joined_unit": "2015-03-01",
        "personnel_status": "公务员", "establishment": "编制内"
    });
    let (status, _) = operator.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(person)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let ask = |name: &str| GetPersonEnrollmentRequest { id_number: "230502199002152344".into(), name: name.into() };

    let registered = client.get_person_enrollment(ask("李娜")).await.expect("enrollment").into_inner();
    assert_eq!(registered.state(), EnrollmentState::Registered);
    assert_eq!(registered.kind(), PersonKind::Staff);
    assert_eq!(registered.name_matches, Some(true));
    let unit = registered.unit.expect("the unit");
    assert_eq!((unit.institution_code.as_str(), unit.unit_name.as_str()), ("230500001", "双鸭山市财政局"));

    let (status, declared) = operator.call(reqwest::Method::POST, platform.secure_url("/api/declaration"), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{declared}");
    let declared_answer = client.get_person_enrollment(ask("王芳")).await.expect("enrollment").into_inner();
    assert_eq!(declared_answer.state(), EnrollmentState::Declared);
    assert_eq!(declared_answer.name_matches, Some(false), "another name does not match, and none is returned");
    let listed = client
        .list_units(ListUnitsRequest { region_code: "2305".into(), ..Default::default() })
        .await
        .expect("units")
        .into_inner();
    let ours = listed.units.iter().find(|unit| unit.institution_code == "230500001").expect("our unit");
    assert_eq!(ours.state(), UnitState::Declared);
    let latest = ours.latest_declaration.as_ref().expect("its declaration");
    assert_eq!((latest.state(), latest.person_count), (proto::agency::DeclarationState::Declared, 1));

    let reviewer_account = platform.staff("agency_reviewer", "reviewer.agency", &agency).await;
    let reviewer = crate::people_api::Operator::sign_in(&platform, &reviewer_account).await;
    let id = declared["declaration_id"].as_str().expect("id").to_owned();
    for step in ["claim", "approve"] {
        let (status, answer) = reviewer
            .call(reqwest::Method::POST, platform.secure_url(&format!("/api/declarations/{id}/{step}")), None)
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{step}: {answer}");
    }
    eventually(Duration::from_secs(20), "the approval takes effect in personnel", || {
        let mut client = client.clone();
        async move {
            client.get_person_enrollment(ask("")).await.is_ok_and(|answer| {
                let answer = answer.into_inner();
                answer.state() == EnrollmentState::Approved
                    && answer.approved_at.is_some()
                    && answer.name_matches.is_none()
            })
        }
    })
    .await;
    let approved = client
        .list_units(ListUnitsRequest { state: UnitState::Approved.into(), ..Default::default() })
        .await
        .expect("units")
        .into_inner();
    assert_eq!(approved.units.len(), 1);
    assert_eq!(approved.units[0].unit_number.len(), 12);
    assert!(approved.units[0].latest_declaration.as_ref().is_some_and(|d| d.decided_at.is_some()));

    // The stream tells the story in order: the key, the declaration, its approval, the person on the roster.
    let wanted = [EventType::KeyIssued, EventType::UnitDeclared, EventType::UnitApproved, EventType::PersonRegistered];
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually(Duration::from_secs(20), "the events reach the feed", || {
        let (mut client, seen) = (client.clone(), seen.clone());
        async move {
            let events = read_to_end(&mut client, "", &[]).await;
            let kinds: Vec<EventType> = events.iter().map(Event::r#type).filter(|kind| wanted.contains(kind)).collect();
            *seen.lock().expect("lock") = events;
            kinds == wanted
        }
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    let registered = seen.iter().find(|event| event.r#type() == EventType::PersonRegistered).expect("registered");
    let text = format!("{registered:?}");
    assert!(text.contains("230502********2344") && !text.contains("230502199002152344"), "{text}");
    platform.stop().await;
}

/// Every event from `cursor` to the end of the feed (stop_at_end), heartbeats left out.
async fn read_to_end(client: &mut AgencyApiClient<Channel>, cursor: &str, types: &[EventType]) -> Vec<Event> {
    let request = StreamEventsRequest {
        cursor: cursor.into(),
        types: types.iter().map(|kind| (*kind).into()).collect(),
        stop_at_end: true,
    };
    let mut stream = client.stream_events(request).await.expect("stream").into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.expect("event");
        if event.r#type() != EventType::Heartbeat {
            events.push(event);
        }
    }
    events
}

/// A TCP relay to the agency port whose connections the test can cut, as a network failure would.
struct Relay {
    port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay");
        let relay_port = listener.local_addr().expect("addr").port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let tracked = connections.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("lock").push(task);
            }
        });
        Self { port: relay_port, connections, _accepting: accepting }
    }

    fn cut(&self) {
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }
}

#[tokio::test]
async fn the_event_stream_resumed_after_a_forced_disconnect_delivers_every_event_once_in_order() {
    let platform = ready_platform().await;
    let key = api_client(&platform, "establishment-office", &["events:read"], 0).await;
    let make_key = |name: &'static str, kind: &'static str| {
        let platform = &platform;
        async move {
            let mut identity = platform.identity();
            let application = identity
                .apply_for_key(proto::identity::ApplyForKeyRequest {
                    category: "机关事业养老保险密钥注册".into(),
                    unit_type: kind.into(),
                    unit_name: name.into(),
                    applicant_name: "张伟".into(),
                    applicant_id_number: "230502198001011238".into(),
                    phone: "13804691234".into(),
                    password: "Unit2026pass".into(),
                    caller: None,
                })
                .await
                .expect("applied")
                .into_inner();
            identity
                .issue_certificate(proto::identity::IssueCertificateRequest {
                    caller: system(),
                    application_id: application.application_id,
                    csr_pem: String::new(),
                })
                .await
                .expect("made");
        }
    };
    for (name, kind) in
        [("双鸭山市财政局", "机关"), ("双鸭山市教育局", "机关"), ("双鸭山市人力资源和社会保障局", "机关")]
    {
        make_key(name, kind).await;
    }

    let relay = Relay::to(platform.agency_port).await;
    let mut client = connect(&platform, relay.port, Some(&key)).await;
    let mut stream = client
        .stream_events(StreamEventsRequest { types: vec![EventType::KeyIssued.into()], ..Default::default() })
        .await
        .expect("stream")
        .into_inner();
    let mut received: Vec<Event> = Vec::new();
    while received.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("an event in time");
        let event = event.expect("open").expect("event");
        if event.r#type() == EventType::KeyIssued {
            received.push(event);
        }
    }
    relay.cut();
    let broken = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Ok(event)) if event.r#type() == EventType::KeyIssued => received.push(event),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    assert!(broken.is_ok(), "the stream ends when its connection is cut");
    // More happens while the client is away.
    for (name, kind) in [("尖山区人民政府办公室", "机关"), ("双鸭山市第一中学", "事业单位")] {
        make_key(name, kind).await;
    }

    let cursor = received.last().expect("received").cursor.clone();
    let mut client = connect(&platform, relay.port, Some(&key)).await;
    let mut resumed = client
        .stream_events(StreamEventsRequest { cursor, types: vec![EventType::KeyIssued.into()], stop_at_end: false })
        .await
        .expect("resumed")
        .into_inner();
    while received.len() < 5 {
        let event = tokio::time::timeout(Duration::from_secs(20), resumed.next()).await.expect("an event in time");
        let event = event.expect("open").expect("event");
        if event.r#type() == EventType::KeyIssued {
            received.push(event);
        }
    }
    // Nothing more than the five: the stream idles (heartbeats only) until something happens.
    let extra = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(event)) = resumed.next().await {
            if event.r#type() != EventType::Heartbeat {
                return Some(event);
            }
        }
        None
    })
    .await;
    assert!(!matches!(extra, Ok(Some(_))), "an event came twice or out of nowhere: {extra:?}");

    let ids: Vec<&str> = received.iter().map(|event| event.event_id.as_str()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5, "every event once: {ids:?}");
    let whole = read_to_end(&mut client, "", &[EventType::KeyIssued]).await;
    let whole_ids: Vec<&str> = whole.iter().map(|event| event.event_id.as_str()).collect();
    assert_eq!(ids, whole_ids, "in the order of the feed, the same for every reader");
    let institutions: Vec<String> = received
        .iter()
        .filter_map(|event| match &event.payload {
            Some(proto::agency::event::Payload::KeyIssued(issued)) => Some(issued.institution_code.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(institutions, ["230500001", "230500002", "230500003", "230502001", "230500005"]);
    platform.stop().await;
}

#[tokio::test]
async fn the_registry_is_kept_through_the_api_and_a_retired_entry_matches_nothing() {
    let platform = ready_platform().await;
    let key = api_client(&platform, "establishment-office", &["registry:write"], 0).await;
    let mut client = connect(&platform, platform.agency_port, Some(&key)).await;
    let mut entry = demo_entry(&platform, "双鸭山市人力资源和社会保障局").await;
    entry.administrative_posts = Some(40);
    let saved = client.upsert_registry_entry(UpsertRegistryEntryRequest { entry: Some(entry.clone()) }).await;
    assert_eq!(saved.expect("saved").into_inner().administrative_posts, Some(40));
    assert_refused(
        client
            .upsert_registry_entry(UpsertRegistryEntryRequest {
                entry: Some(RegistryEntry { credit_code: "11230500MB0000030X".into(), ..entry.clone() }),
            })
            .await,
        Code::InvalidArgument,
        "credit_code_check_character",
    );
    let retired = client
        .retire_registry_entry(RetireRegistryEntryRequest {
            institution_code: entry.institution_code.clone(),
            reason: "机构改革，职能并入".into(),
        })
        .await
        .expect("retired")
        .into_inner();
    assert!(retired.retired_at.is_some());
    let found = platform
        .identity()
        .verify_unit_name(proto::identity::VerifyUnitNameRequest {
            unit_type: "机关".into(),
            unit_name: entry.unit_name.clone(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(!found.matched, "a retired entry is matched by nothing");
    assert_refused(
        client
            .retire_registry_entry(RetireRegistryEntryRequest {
                institution_code: "999999999".into(),
                reason: "x".into(),
            })
            .await,
        Code::NotFound,
        "registry_entry_not_found",
    );
    let back = client.upsert_registry_entry(UpsertRegistryEntryRequest { entry: Some(entry) }).await.expect("back");
    assert!(back.into_inner().retired_at.is_none(), "an upsert makes a retired entry current again");
    platform.stop().await;
}

/// grpcurl, as scripts/deps.sh installs it: on PATH, or privately under .deps/tools.
fn grpcurl() -> std::path::PathBuf {
    let private = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/tools/bin/grpcurl");
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|dir| dir.join("grpcurl")).find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| private.is_file().then_some(private)).expect("grpcurl is installed (make deps installs it)")
}

/// One documented example: the command, and what it prints (JSON messages, or text lines), or how it fails.
#[derive(Debug)]
struct Example {
    command: String,
    expected: Option<(String, String)>,
}

/// The fenced blocks of a Markdown file, with their info strings.
fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), Vec::new())),
            (Some(_), Some(_)) => {
                let (info, lines) = open.take().expect("open");
                blocks.push((info, lines.join("\n")));
            }
            (Some((_, lines)), None) => lines.push(line),
            (None, None) => {}
        }
    }
    blocks
}

fn examples(markdown: &str) -> Vec<Example> {
    let blocks = fenced_blocks(markdown);
    let mut examples = Vec::new();
    for (at, (info, body)) in blocks.iter().enumerate() {
        if info == "sh" && body.trim_start().starts_with("grpcurl") {
            let expected = blocks
                .get(at + 1)
                .filter(|(info, _)| info == "json" || info == "text")
                .map(|(info, body)| (info.clone(), body.clone()));
            examples.push(Example { command: body.clone(), expected });
        }
    }
    examples
}

/// Whether `actual` holds everything `expected` shows: "…" stands for any value, objects may hold more keys.
fn shows(expected: &serde_json::Value, actual: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (expected, actual) {
        (Value::String(any), _) if any == "…" => !actual.is_null(),
        (Value::Object(expected), Value::Object(actual)) => {
            expected.iter().all(|(key, value)| actual.get(key).is_some_and(|actual| shows(value, actual)))
        }
        (Value::Array(expected), Value::Array(actual)) => {
            expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| shows(e, a))
        }
        _ => expected == actual,
    }
}

fn json_messages(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| panic!("not JSON messages ({error}): {text}"))
}

#[tokio::test]
async fn the_grpcurl_examples_of_the_agency_api_document_run_as_written() {
    let (platform, operator) = crate::people_api::signed_in_unit().await;
    let (status, _) = operator
        .call(reqwest::Method::PUT, platform.secure_url("/api/my-unit"), Some(crate::people_api::unit_record()))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let person = json!({
        "kind": "staff", "name": "张伟", "id_type": "01", "id_number": "230502198001011238",
        "funding_form": "全额拨款", "work_start": "2002-07-01", "joined_unit": "2010-03-01",
        "personnel_status": "公务员", "establishment": "编制内"
    });
    let (status, saved) = operator.call(reqwest::Method::POST, platform.secure_url("/api/persons"), Some(person)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{saved}");
    let key = api_client(&platform, "demo-agency", &SCOPES, 0).await;
    let files = tempfile::tempdir().expect("folder");
    std::fs::write(files.path().join("ca.crt"), ca_pem(&platform)).expect("ca");
    std::fs::write(files.path().join("demo-agency.crt"), &key.certificate).expect("certificate");
    std::fs::write(files.path().join("demo-agency.key"), &key.key).expect("key");

    let document = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/agency-api.md")).expect("doc");
    let examples = examples(&document);
    assert!(examples.len() >= 10, "the document's examples: {examples:#?}");
    let grpcurl = grpcurl();
    let bin = grpcurl.parent().expect("folder").to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // The key issued and the person saved reach the feed through the outbox relays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for example in &examples {
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&example.command)
            .current_dir(files.path())
            .env("PATH", &path)
            .env("PENSION_AGENCY", format!("127.0.0.1:{}", platform.agency_port))
            .env("CA", "ca.crt")
            .env("CERT", "demo-agency.crt")
            .env("KEY", "demo-agency.key")
            .output()
            .await
            .expect("sh runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        let context = format!("{}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}", example.command);
        match &example.expected {
            Some((kind, text)) if kind == "text" && text.starts_with("ERROR:") => {
                assert!(!output.status.success(), "should fail: {context}");
                for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
                    assert!(stderr.contains(line) || stdout.contains(line), "missing {line:?}: {context}");
                }
            }
            Some((kind, text)) if kind == "text" => {
                assert!(output.status.success(), "{context}");
                for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
                    assert!(stdout.lines().any(|printed| printed.trim() == line), "missing {line:?}: {context}");
                }
            }
            Some((_, text)) => {
                assert!(output.status.success(), "{context}");
                let (expected, actual) = (json_messages(text), json_messages(&stdout));
                assert!(actual.len() >= expected.len(), "{context}");
                for (expected, actual) in expected.iter().zip(&actual) {
                    assert!(shows(expected, actual), "expected {expected}\n  got {actual}\n{context}");
                }
            }
            None => assert!(output.status.success(), "{context}"),
        }
    }
    platform.stop().await;
}

/// A self-signed CA that can sign client certificates.
fn agency_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let certificate = params.self_signed(&key).expect("CA");
    let pem = certificate.pem();
    (pem, rcgen::Issuer::from_ca_cert_der(certificate.der(), key).expect("issuer"))
}

#[tokio::test]
async fn a_certificate_of_a_configured_agency_ca_works_once_registered_and_stops_when_revoked() {
    let (ca_pem_text, issuer) = agency_ca("省公安厅证书中心");
    let folder = tempfile::tempdir().expect("folder");
    let ca_file = folder.path().join("police-ca.crt");
    std::fs::write(&ca_file, &ca_pem_text).expect("ca file");
    let platform = crate::helpers::spawn_isolated_tuned(
        |_| {},
        |identity| identity.api_clients.agency_ca_files = vec![ca_file.clone()],
    )
    .await;
    eventually(Duration::from_secs(30), "the gateway trusts the CA", || async {
        platform.https_client(None).get(platform.secure_url("/login")).send().await.is_ok()
    })
    .await;
    let now = time::OffsetDateTime::now_utc();
    let validity = (now - time::Duration::days(1), now + time::Duration::days(365));
    let theirs = leaf_signed_by(&issuer, "police-province", validity);
    let mut identity = platform.identity();
    identity
        .create_api_client(proto::identity::CreateApiClientRequest {
            caller: system(),
            client_id: "police-province".into(),
            display_name: "省公安厅".into(),
            scopes: vec!["persons:read".into()],
            calls_per_minute: 0,
        })
        .await
        .expect("created");
    let lookup = GetPersonEnrollmentRequest { id_number: "230502198001011238".into(), name: String::new() };
    let mut client = connect(&platform, platform.agency_port, Some(&theirs)).await;
    assert_refused(client.get_person_enrollment(lookup.clone()).await, Code::Unauthenticated, "client_unknown");

    // A certificate of a CA nobody configured cannot even be registered.
    let (_, stranger) = agency_ca("某外部CA");
    let foreign = leaf_signed_by(&stranger, "police-province", validity);
    let refused = identity
        .register_api_client_certificate(proto::identity::RegisterApiClientCertificateRequest {
            caller: system(),
            client_id: "police-province".into(),
            certificate_pem: foreign.certificate.clone(),
        })
        .await
        .expect_err("refused");
    assert_eq!(kit::status::violations(&refused)[0].code, "certificate_untrusted");

    let registered = identity
        .register_api_client_certificate(proto::identity::RegisterApiClientCertificateRequest {
            caller: system(),
            client_id: "police-province".into(),
            certificate_pem: theirs.certificate.clone(),
        })
        .await
        .expect("registered")
        .into_inner();
    assert_eq!(registered.origin, "agency_ca");
    // Identity's earlier refusal of this certificate is kept a few seconds; then the registration counts.
    eventually(Duration::from_secs(15), "the registered certificate is admitted", || {
        let (mut client, lookup) = (client.clone(), lookup.clone());
        async move { client.get_person_enrollment(lookup).await.is_ok() }
    })
    .await;
    identity
        .revoke_api_client_certificate(proto::identity::RevokeApiClientCertificateRequest {
            caller: system(),
            serial: registered.serial,
            reason: "affiliation_changed".into(),
        })
        .await
        .expect("revoked");
    eventually(Duration::from_secs(40), "the revocation takes effect", || {
        let (mut client, lookup) = (client.clone(), lookup.clone());
        async move {
            matches!(client.get_person_enrollment(lookup).await, Err(status) if reason(&status) == "certificate_revoked")
        }
    })
    .await;
    platform.stop().await;
}
