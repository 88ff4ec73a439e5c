//! The gateway: the one door of the platform for people and other systems. It serves the public pages and JSON API
//! on HTTP (8080, with the CRL), everything after login on 8443 (client certificate, then password; sessions in
//! Redis), the internal services' gRPC for operators on 127.0.0.1:50051, and the agencies' gRPC (the public
//! `pension.agency.v1`, mutual TLS) on 50443; it authenticates and authorizes, and reaches the services only over
//! NATS RPC.
//!
//! **Architecture Invariant:** the gateway has no database. Sessions, throttling and rate limits live in Redis;
//! everything durable belongs to a service.

mod agency;
mod api;
mod api_clients;
mod auth;
mod bridge;
mod changes;
mod charts;
mod conflicts;
mod dashboard;
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

pub use agency::METHOD_SCOPES as AGENCY_METHOD_SCOPES;
pub use dashboard::province_page_html as dashboard_page_html;
pub use https::ClientCertificateMode;
pub use pages::Pages;

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
    /// The agencies' gRPC port (mutual TLS). It uses `tls_certificate_file` and `tls_key_file` unless
    /// `agency_tls_certificate_file` and `agency_tls_key_file` are set; with neither it stays closed.
    pub agency_grpc_addr: SocketAddr,
    pub agency_tls_certificate_file: Option<PathBuf>,
    pub agency_tls_key_file: Option<PathBuf>,
    /// How long identity's answer for an API client's certificate is reused.
    #[serde(with = "kit::config::millis")]
    pub agency_auth_cache: Duration,
    /// How long an agency's event stream stays silent before a heartbeat carries its cursor.
    #[serde(with = "kit::config::millis")]
    pub agency_stream_heartbeat: Duration,
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
            agency_grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50443)),
            agency_tls_certificate_file: None,
            agency_tls_key_file: None,
            agency_auth_cache: Duration::from_secs(30),
            agency_stream_heartbeat: Duration::from_secs(30),
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
    agency: Option<agency::AgencyPort>,
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
    let agency_identity = match (&config.agency_tls_certificate_file, &config.agency_tls_key_file) {
        (Some(certificate), Some(key)) => Some(trust::ServerIdentity::load(certificate, key)?),
        (None, None) => match (&config.tls_certificate_file, &config.tls_key_file) {
            (Some(certificate), Some(key)) => Some(trust::ServerIdentity::load(certificate, key)?),
            _ => None,
        },
        _ => anyhow::bail!("gateway.agency_tls_certificate_file and gateway.agency_tls_key_file go together"),
    };
    let agency_tls = agency_identity.as_ref().map(agency::server_config).transpose()?;
    let trust = trust::Trust::new(server_identity);
    let agency = match agency_tls {
        Some(tls) => {
            let listener = TcpListener::bind(config.agency_grpc_addr)
                .await
                .with_context(|| format!("failed to bind the agency gRPC port {}", config.agency_grpc_addr))?;
            let timings = (config.agency_auth_cache, config.agency_stream_heartbeat);
            Some(agency::AgencyPort::new(listener, tls, platform.clone(), redis.clone(), trust.clone(), timings))
        }
        None => {
            tracing::warn!("no TLS certificate for the agency port: 50443 stays closed (set gateway.agency_tls_*)");
            None
        }
    };
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
        agency,
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

    /// The agencies' gRPC port, when it is open.
    pub fn agency_port(&self) -> Option<u16> {
        self.agency.as_ref().map(agency::AgencyPort::port)
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
        let agency = async {
            match self.agency {
                Some(agency) => agency.serve(shutdown.clone()).await,
                None => Ok(()),
            }
        };
        let refresher =
            self.state.trust.clone().keep_fresh(self.state.platform.clone(), self.trust_refresh, shutdown.clone());
        let (http, grpc, https, agency, ()) = tokio::join!(http, grpc, https, agency, refresher);
        agency.context("gateway agency gRPC server")?;
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
