//! The gateway: the one door of the platform for people and other systems. It serves the public pages and JSON API
//! on HTTP (8080, with the CRL), everything after login on 8443 (client certificate, then password; sessions in
//! Redis), the internal services' gRPC for operators on 127.0.0.1:50051, and (from the agency issue on) the
//! agencies' gRPC; it authenticates and authorizes, and reaches the services only over NATS RPC.
//!
//! **Architecture Invariant:** the gateway has no database. Sessions, throttling and rate limits live in Redis;
//! everything durable belongs to a service.

mod api;
mod auth;
mod bridge;
mod changes;
mod conflicts;
mod declarations;
mod enrollment;
mod error;
mod https;
mod imports;
mod keys;
mod limits;
mod operators;
mod pages;
mod printed;
mod session;
mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kit::process::Process;
use kit::redis::{Redis, RedisConfig};
use kit::service::Platform;
use proto::names::Service;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use https::ClientCertificateMode;

/// The `gateway` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Public HTTP: pages that need no login, the OpenAPI document, health, readiness and metrics.
    pub http_addr: SocketAddr,
    /// Plaintext gRPC with health and reflection, for operators and `grpcurl`; loopback only by default.
    pub grpc_addr: SocketAddr,
    /// The province admin's bootstrap credential for loading the registry until accounts exist (`Authorization:
    /// Bearer …`). Unset: the admin operations are refused.
    pub admin_token: Option<SecretString>,
    /// Public state-changing calls (apply, withdraw, change password) allowed per client address and minute;
    /// 0 turns the limit off.
    pub public_writes_per_minute: u32,
    /// The logged-in port: every page and API call after login.
    pub https_addr: SocketAddr,
    /// `tls`: the gateway terminates mutual TLS on `https_addr` with `tls_certificate_file` and `tls_key_file`.
    /// `header`: an ingress does, and passes the client certificate in `client_certificate_header`.
    pub client_certificates: ClientCertificateMode,
    pub client_certificate_header: String,
    pub tls_certificate_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// How often the CA roots, CRL and revoked serials are fetched from identity (a revocation takes effect
    /// within this time).
    #[serde(with = "kit::config::millis")]
    pub trust_refresh: Duration,
    /// A session ends after this long without a request.
    #[serde(with = "kit::config::millis")]
    pub session_idle: Duration,
    /// Wrong passwords allowed within `login_failure_window` before the account is locked for `lockout`.
    pub login_max_failures: u32,
    #[serde(with = "kit::config::millis")]
    pub login_failure_window: Duration,
    #[serde(with = "kit::config::millis")]
    pub lockout: Duration,
    /// Where the public pages send people to log in; by default the https port on the host they came to.
    pub login_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_token: None,
            public_writes_per_minute: 20,
            https_addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            client_certificates: ClientCertificateMode::Tls,
            client_certificate_header: "ssl-client-cert".into(),
            tls_certificate_file: None,
            tls_key_file: None,
            trust_refresh: Duration::from_secs(30),
            session_idle: Duration::from_secs(30 * 60),
            login_max_failures: 5,
            login_failure_window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            login_url: None,
        }
    }
}

/// What request handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub platform: Platform,
    pub redis: Redis,
    pub admin_token: Option<SecretString>,
    pub public_writes_per_minute: u32,
    pub pages: std::sync::Arc<pages::Pages>,
    pub sessions: session::Sessions,
    pub trust: trust::Trust,
    /// Where the public pages link to log in (`None`: the https port of the host asked).
    pub login_url: Option<String>,
    pub https_port: u16,
}

/// The gateway, bound and ready to run.
#[derive(Debug)]
pub struct App {
    state: AppState,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    https_listener: TcpListener,
    client_certificates: ClientCertificateMode,
    client_certificate_header: String,
    trust_refresh: Duration,
}

/// Binds the gateway's ports and adds its readiness checks: "redis", and one per service, proven by a real
/// `GetStatus` call over NATS RPC.
pub async fn build(config: &Config, platform: &Platform, redis: Redis) -> anyhow::Result<App> {
    let server_identity = match (config.client_certificates, &config.tls_certificate_file, &config.tls_key_file) {
        (ClientCertificateMode::Header, _, _) => None,
        (ClientCertificateMode::Tls, Some(certificate), Some(key)) => {
            Some(trust::ServerIdentity::load(certificate, key)?)
        }
        (ClientCertificateMode::Tls, _, _) => anyhow::bail!(
            "gateway.tls_certificate_file and gateway.tls_key_file are required when gateway.client_certificates is \
             \"tls\" (or set it to \"header\" behind an ingress that checks client certificates)"
        ),
    };
    let https_listener = TcpListener::bind(config.https_addr)
        .await
        .with_context(|| format!("failed to bind HTTPS {}", config.https_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("failed to bind HTTP {}", config.http_addr))?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("failed to bind gRPC {}", config.grpc_addr))?;
    let check_redis = redis.clone();
    platform.readiness.add("redis", move || {
        let redis = check_redis.clone();
        async move { redis.check().await }
    });
    for service in Service::ALL {
        let check_platform = platform.clone();
        platform.readiness.add(service.as_str(), move || {
            let platform = check_platform.clone();
            async move {
                api::service_status(&platform, service).await.map(|_| ()).map_err(|status| status.message().to_owned())
            }
        });
    }
    let trust = trust::Trust::new(server_identity);
    let check_trust = trust.clone();
    platform.readiness.add("trust", move || {
        let loaded = check_trust.is_loaded();
        async move { if loaded { Ok(()) } else { Err("no trust bundle from identity yet".to_owned()) } }
    });
    let sessions = session::Sessions {
        redis: redis.clone(),
        idle: config.session_idle,
        max_failures: config.login_max_failures.max(1),
        failure_window: config.login_failure_window,
        lockout: config.lockout,
    };
    let https_port = https_listener.local_addr().map(|addr| addr.port()).unwrap_or_default();
    let state = AppState {
        platform: platform.clone(),
        redis,
        admin_token: config.admin_token.clone(),
        public_writes_per_minute: config.public_writes_per_minute,
        pages: std::sync::Arc::new(pages::Pages::new()),
        sessions,
        trust,
        login_url: config.login_url.clone(),
        https_port,
    };
    Ok(App {
        state,
        http_listener,
        grpc_listener,
        https_listener,
        client_certificates: config.client_certificates,
        client_certificate_header: config.client_certificate_header.to_ascii_lowercase(),
        trust_refresh: config.trust_refresh,
    })
}

impl App {
    pub fn http_port(&self) -> u16 {
        self.http_listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    pub fn https_port(&self) -> u16 {
        self.state.https_port
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in flight.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = api::router(self.state.clone()).merge(kit::admin::router(self.state.platform.readiness.clone()));
        let http = kit::admin::serve_http(self.http_listener, router, shutdown.clone());
        let grpc = bridge::server(&self.state.platform).serve(self.grpc_listener, shutdown.clone());
        let https = https::serve(
            self.https_listener,
            api::secure_router(self.state.clone()),
            self.client_certificates,
            self.client_certificate_header,
            self.state.trust.clone(),
            shutdown.clone(),
        );
        let refresher = self.state.trust.clone().keep_fresh(self.state.platform.clone(), self.trust_refresh, shutdown);
        let (http, grpc, https, ()) = tokio::join!(http, grpc, https, refresher);
        http.context("gateway HTTP server")?;
        grpc.context("gateway gRPC server")?;
        https.context("gateway HTTPS server")?;
        Ok(())
    }
}

/// Runs the gateway as its own process until shutdown.
pub async fn run(process: Process) -> anyhow::Result<()> {
    let config: Config = process.settings.section("gateway")?;
    let redis_config: RedisConfig = process.settings.section("redis")?;
    let redis = Redis::connect(&redis_config).context("redis configuration")?;
    let platform = Platform::connect(&process, "gateway").await?;
    build(&config, &platform, redis).await?.run(process.shutdown.clone()).await
}
