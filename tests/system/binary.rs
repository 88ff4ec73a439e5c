//! The real `pension` binary, run the way `make run` runs it: it starts, reports every dependency ready, lists the
//! four services and health through reflection, records its start in the event streams, and stops cleanly on
//! SIGTERM. A configuration mistake stops it at once, naming the key.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kit::testing::{TestDatabase, eventually, free_port, shared_nats_url, shared_redis_url, unique_suffix};
use proto::common::GetStatusRequest;
use proto::units::units_client::UnitsClient;
use tokio_stream::StreamExt;

use crate::helpers::{check_ok, get_json};

struct RunningBinary {
    child: Child,
    http_port: u16,
    grpc_port: u16,
    namespace: String,
    environment: Vec<(String, String)>,
    _databases: Vec<TestDatabase>,
    _ca_dir: tempfile::TempDir,
}

impl RunningBinary {
    /// Another invocation of the binary with the same configuration, as an operator would run it beside.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pension"));
        command.current_dir(env!("CARGO_MANIFEST_DIR")).envs(self.environment.iter().cloned());
        command
    }
}

async fn start_binary() -> RunningBinary {
    crate::helpers::install_crypto_provider();
    let (http_port, grpc_port) = (free_port(), free_port());
    let namespace = format!("t_{}", unique_suffix());
    let mut environment = vec![
        ("PENSION__GATEWAY__HTTP_ADDR".to_owned(), format!("127.0.0.1:{http_port}")),
        ("PENSION__GATEWAY__GRPC_ADDR".to_owned(), format!("127.0.0.1:{grpc_port}")),
        ("PENSION__NATS__URL".to_owned(), shared_nats_url()),
        ("PENSION__NATS__NAMESPACE".to_owned(), namespace.clone()),
        ("PENSION__REDIS__URL".to_owned(), shared_redis_url()),
        ("PENSION__REDIS__KEY_PREFIX".to_owned(), format!("{namespace}:")),
        ("PENSION__TELEMETRY__FORMAT".to_owned(), "json".to_owned()),
    ];
    // The CA as an operator makes it: with the binary's own `ca init`.
    let ca_dir = tempfile::tempdir().expect("temporary directory");
    let ca_init = Command::new(env!("CARGO_BIN_EXE_pension"))
        .args(["ca", "init", "--dir"])
        .arg(ca_dir.path())
        .output()
        .expect("pension ca init runs");
    assert!(ca_init.status.success(), "{}", String::from_utf8_lossy(&ca_init.stderr));
    let ca_file = |name: &str| ca_dir.path().join(name).to_string_lossy().into_owned();
    environment.extend([
        ("PENSION__GATEWAY__HTTPS_ADDR".to_owned(), format!("127.0.0.1:{}", free_port())),
        ("PENSION__GATEWAY__AGENCY_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("PENSION__GATEWAY__TLS_CERTIFICATE_FILE".to_owned(), ca_file("server.crt")),
        ("PENSION__GATEWAY__TLS_KEY_FILE".to_owned(), ca_file("server.key")),
        ("PENSION__IDENTITY__CA__CERTIFICATE_FILE".to_owned(), ca_file("ca.crt")),
        ("PENSION__IDENTITY__CA__KEY_FILE".to_owned(), ca_file("ca.key")),
    ]);
    let mut databases = Vec::new();
    for service in ["identity", "units", "personnel", "printing"] {
        let database = TestDatabase::create().await;
        let upper = service.to_uppercase();
        environment.push((format!("PENSION__{upper}__DATABASE__URL"), database.url.clone()));
        environment.push((format!("PENSION__{upper}__GRPC_ADDR"), "127.0.0.1:0".to_owned()));
        databases.push(database);
    }
    let child = Command::new(env!("CARGO_BIN_EXE_pension"))
        .arg("all")
        .envs(environment.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the pension binary starts");
    RunningBinary { child, http_port, grpc_port, namespace, environment, _databases: databases, _ca_dir: ca_dir }
}

async fn channel(grpc_port: u16) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the gateway's gRPC port")
}

async fn reflection_services(grpc_port: u16) -> (BTreeSet<String>, BTreeSet<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = channel(grpc_port).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        client.server_reflection_info(tokio_stream::once(request)).await.expect("v1 reflection").into_inner();
    let v1_names = match replies.next().await.expect("a reply").expect("ok").message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|service| service.name).collect()
        }
        other => panic!("unexpected v1 reflection reply {other:?}"),
    };

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        client.server_reflection_info(tokio_stream::once(request)).await.expect("v1alpha reflection").into_inner();
    let v1alpha_names = match replies.next().await.expect("a reply").expect("ok").message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|service| service.name).collect()
        }
        other => panic!("unexpected v1alpha reflection reply {other:?}"),
    };
    (v1_names, v1alpha_names)
}

#[tokio::test]
async fn pension_all_starts_reports_ready_lists_its_services_and_stops_on_sigterm() {
    let mut binary = start_binary().await;
    let readyz = format!("http://127.0.0.1:{}/readyz", binary.http_port);
    eventually(Duration::from_secs(120), "the binary's /readyz", || async {
        reqwest::get(&readyz).await.is_ok_and(|response| response.status().is_success())
    })
    .await;

    // The operator's commands load the demo registry through the running identity service.
    for (what, file, loaded) in [("agencies", "demo/agencies.csv", 3), ("registry", "demo/registry.csv", 9)] {
        let output = binary.command().args([what, "import", file]).output().expect("the command runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{what} import: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains(&format!("{loaded} rows loaded, 0 refused")), "{stdout}");
    }

    // The earlier systems' roots and keys, and the demo accounts, through the same commands `make run` uses.
    let files = tempfile::tempdir().expect("folder");
    let legacy_key = rcgen::KeyPair::generate().expect("key");
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(files.path().join("roots.pem"), root.self_signed(&legacy_key).expect("root").pem()).expect("write");
    let hash = {
        use argon2::PasswordHasher as _;
        argon2::Argon2::default().hash_password(b"Legacy2019").expect("hash").to_string()
    };
    let list = format!("证书序列号,登录用户名,密码哈希,机构编码\n0A0B,legacy-01,\"{hash}\",230500002\n0A0C,,x,\n");
    std::fs::write(files.path().join("keys.csv"), list).expect("write");
    let output = binary
        .command()
        .args(["keys", "import-legacy", "--roots"])
        .arg(files.path().join("roots.pem"))
        .arg("--keys")
        .arg(files.path().join("keys.csv"))
        .output()
        .expect("the command runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 keys loaded, 1 refused") && stdout.contains("row 3 登录用户名"), "{stdout}");
    let output = binary.command().args(["demo", "seed", "--out"]).arg(files.path()).output().expect("demo seed runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let demo: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files.path().join("demo.json")).expect("demo.json")).expect("json");
    let roles: Vec<&str> =
        demo["accounts"].as_array().expect("accounts").iter().filter_map(|account| account["role"].as_str()).collect();
    assert_eq!(roles, ["unit_operator", "agency_reviewer", "ca_operator", "province_admin"]);
    for account in demo["accounts"].as_array().expect("accounts") {
        for file in ["certificate", "key"] {
            let path = std::path::Path::new(account[file].as_str().expect("path"));
            assert!(path.is_absolute() && path.exists(), "{account}");
        }
    }

    let (_, report) = get_json(&readyz).await;
    for dependency in ["postgres", "nats", "redis"] {
        assert!(check_ok(&report, dependency), "{dependency} in {report}");
    }

    let expected: BTreeSet<String> = [
        "grpc.health.v1.Health",
        "pension.identity.v1.Identity",
        "pension.personnel.v1.Personnel",
        "pension.printing.v1.Printing",
        "pension.units.v1.Units",
    ]
    .map(String::from)
    .into();
    let (v1_names, v1alpha_names) = reflection_services(binary.grpc_port).await;
    assert_eq!(v1_names, expected);
    assert_eq!(v1alpha_names, expected);

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(binary.grpc_port).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "pension.units.v1.Units".into() })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(serving.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    let status = UnitsClient::new(channel(binary.grpc_port).await).get_status(GetStatusRequest {}).await;
    assert_eq!(status.expect("units answers through the gateway").into_inner().service, "units");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", binary.http_port))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"rpc_server_requests_total{service="pension.units.v1.Units",method="GetStatus",code="0"}"#),
        "the NATS RPC server counts calls made before the first scrape: {metrics}"
    );

    // Each service recorded its start through the outbox; the relay published it to the service's stream.
    let jetstream = async_nats::jetstream::new(async_nats::connect(shared_nats_url()).await.expect("nats"));
    let stream_name = format!("{}_UNITS", binary.namespace.to_uppercase());
    eventually(Duration::from_secs(10), "ServiceStarted in the units stream", || {
        let jetstream = jetstream.clone();
        let stream_name = stream_name.clone();
        async move {
            match jetstream.get_stream(&stream_name).await {
                Ok(mut stream) => stream.info().await.is_ok_and(|info| info.state.messages >= 1),
                Err(_) => false,
            }
        }
    })
    .await;

    let pid = binary.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let namespace = binary.namespace.clone();
    let exit = tokio::task::spawn_blocking(move || binary.child.wait()).await.expect("join").expect("wait");
    kit::testing::remove_streams(&jetstream, &namespace).await;
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}");
}

#[tokio::test]
async fn an_invalid_configuration_value_stops_start_up_naming_the_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_pension"))
        .arg("all")
        .env("PENSION__GATEWAY__HTTP_ADDR", "not-an-address")
        .output()
        .expect("the binary runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.http_addr"), "stderr names the key: {stderr}");
}

#[tokio::test]
async fn an_invalid_namespace_stops_start_up_naming_the_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_pension"))
        .arg("units")
        .env("PENSION__NATS__NAMESPACE", "has.dots")
        .env("PENSION__NATS__URL", shared_nats_url())
        .output()
        .expect("the binary runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nats.namespace"), "stderr names the key: {stderr}");
}

#[test]
fn help_lists_every_target() {
    let output = Command::new(env!("CARGO_BIN_EXE_pension")).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for target in ["all", "gateway", "identity", "units", "personnel", "printing"] {
        assert!(help.contains(target), "{target} in {help}");
    }
}
