//! Readiness and failure: each dependency stopped in turn is named by `/readyz`, and calls that need it fail
//! with UNAVAILABLE (503 over HTTP) promptly, never with a 500 or a hang.

use std::time::{Duration, Instant};

use kit::nats::NatsConfig;
use kit::redis::RedisConfig;
use kit::testing::{PrivateNats, PrivatePostgres, PrivateRedis, eventually};
use proto::common::GetStatusRequest;
use proto::units::units_client::UnitsClient;
use secrecy::SecretString;

use crate::helpers::{TestPlatform, check_ok, get_json, spawn_platform};

async fn wait_until_ready(platform: &TestPlatform) {
    eventually(Duration::from_secs(60), "/readyz ready", || async {
        let (status, _) = platform.readyz().await;
        status == 200
    })
    .await;
}

/// `/readyz` is 503 and names exactly `down` among the three dependencies.
async fn assert_only_down(platform: &TestPlatform, down: &str) {
    let (status, report) = platform.readyz().await;
    assert_eq!(status, 503, "{report}");
    for dependency in ["postgres", "nats", "redis"] {
        assert_eq!(check_ok(&report, dependency), dependency != down, "{dependency} in {report}");
    }
    assert!(report["checks"][down]["error"].as_str().is_some_and(|error| !error.is_empty()), "{report}");
}

/// A call that needs `down` fails with UNAVAILABLE over gRPC and 503 over HTTP, within seconds.
async fn assert_calls_unavailable(platform: &TestPlatform) {
    let started = Instant::now();
    let mut units = UnitsClient::connect(format!("http://127.0.0.1:{}", platform.grpc_port)).await.expect("connect");
    let status = units.get_status(GetStatusRequest {}).await.expect_err("the call fails");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let (http_status, body) = get_json(&platform.url("/api/status")).await;
    assert_eq!(http_status, 503, "{body}");
    assert_eq!(body["code"], "service_unavailable");
    assert!(started.elapsed() < Duration::from_secs(10), "failing took {:?}", started.elapsed());
}

#[tokio::test]
async fn readyz_names_each_stopped_dependency_and_calls_fail_with_unavailable() {
    let mut postgres = PrivatePostgres::start();
    let mut nats = PrivateNats::start();
    let mut redis = PrivateRedis::start();
    let nats_config = NatsConfig { url: nats.url(), namespace: "pension".into(), ..NatsConfig::default() };
    let redis_config = RedisConfig { url: SecretString::from(redis.url()), ..RedisConfig::default() };
    let platform = spawn_platform(&postgres.admin_url(), nats_config, redis_config).await;
    wait_until_ready(&platform).await;
    let (_, report) = platform.readyz().await;
    for name in ["postgres", "nats", "redis", "identity", "units", "personnel", "printing"] {
        assert!(check_ok(&report, name), "{name} in {report}");
    }

    postgres.stop();
    assert_only_down(&platform, "postgres").await;
    assert_calls_unavailable(&platform).await;
    postgres.resume();
    wait_until_ready(&platform).await;

    nats.stop();
    assert_only_down(&platform, "nats").await;
    assert_calls_unavailable(&platform).await;
    nats.resume();
    wait_until_ready(&platform).await;

    redis.stop();
    assert_only_down(&platform, "redis").await;
    redis.resume();
    wait_until_ready(&platform).await;

    platform.stop().await;
}
