//! The gateway: the one door of the platform for people and other systems. It serves the web pages and the JSON
//! API on HTTP, the internal services' gRPC for operators on 127.0.0.1:50051, and (from the agency issue on) the
//! agencies' gRPC; it authenticates and authorizes, and reaches the services only over NATS RPC.
//!
//! **Architecture Invariant:** the gateway has no database. Sessions, throttling and rate limits live in Redis;
//! everything durable belongs to a service.

mod api;
mod bridge;
mod error;
mod keys;
mod limits;
mod pages;

use std::net::SocketAddr;

use anyhow::Context as _;
use kit::process::Process;
use kit::redis::{Redis, RedisConfig};
use kit::service::Platform;
use proto::names::Service;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_token: None,
            public_writes_per_minute: 20,
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
}

/// The gateway, bound and ready to run.
#[derive(Debug)]
pub struct App {
    state: AppState,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
}

/// Binds the gateway's ports and adds its readiness checks: "redis", and one per service, proven by a real
/// `GetStatus` call over NATS RPC.
pub async fn build(config: &Config, platform: &Platform, redis: Redis) -> anyhow::Result<App> {
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
    let state = AppState {
        platform: platform.clone(),
        redis,
        admin_token: config.admin_token.clone(),
        public_writes_per_minute: config.public_writes_per_minute,
        pages: std::sync::Arc::new(pages::Pages::new()),
    };
    Ok(App { state, http_listener, grpc_listener })
}

impl App {
    pub fn http_port(&self) -> u16 {
        self.http_listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in flight.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = api::router(self.state.clone()).merge(kit::admin::router(self.state.platform.readiness.clone()));
        let http = kit::admin::serve_http(self.http_listener, router, shutdown.clone());
        let grpc = bridge::server(&self.state.platform).serve(self.grpc_listener, shutdown);
        let (http, grpc) = tokio::join!(http, grpc);
        http.context("gateway HTTP server")?;
        grpc.context("gateway gRPC server")?;
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
