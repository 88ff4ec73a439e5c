//! The whole platform in one process: every service and the gateway built on one NATS connection and one
//! readiness, the gateway's HTTP port serving the admin endpoints for all of them. `pension all` runs it; the
//! whole-system tests build it on free ports.

pub mod demo;

use anyhow::Context as _;
use kit::config::{ConfigError, Settings};
use kit::redis::{Redis, RedisConfig};
use kit::service::{Platform, ServiceConfig};
use tokio_util::sync::CancellationToken;

/// Every section `pension all` needs, read before anything connects so a mistake stops start-up untouched.
#[derive(Debug, Clone)]
pub struct AllInOneConfig {
    pub identity: identity::Config,
    pub units: ServiceConfig,
    pub personnel: ServiceConfig,
    pub printing: ServiceConfig,
    pub gateway: gateway::Config,
    pub redis: RedisConfig,
}

impl AllInOneConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            identity: settings.section("identity")?,
            units: settings.section("units")?,
            personnel: settings.section("personnel")?,
            printing: settings.section("printing")?,
            gateway: settings.section("gateway")?,
            redis: settings.section("redis")?,
        })
    }
}

/// Every component, bound to its ports.
#[derive(Debug)]
pub struct AllInOne {
    identity: identity::App,
    units: units::App,
    personnel: personnel::App,
    printing: printing::App,
    gateway: gateway::App,
}

impl AllInOne {
    pub async fn build(config: &AllInOneConfig, platform: &Platform) -> anyhow::Result<Self> {
        let redis = Redis::connect(&config.redis).context("redis configuration")?;
        Ok(Self {
            identity: identity::build(&config.identity, platform, false).await?,
            units: units::build(&config.units, platform, false).await?,
            personnel: personnel::build(&config.personnel, platform, false).await?,
            printing: printing::build(&config.printing, platform, false).await?,
            gateway: gateway::build(&config.gateway, platform, redis).await?,
        })
    }

    pub fn http_port(&self) -> u16 {
        self.gateway.http_port()
    }

    pub fn grpc_port(&self) -> u16 {
        self.gateway.grpc_port()
    }

    pub fn https_port(&self) -> u16 {
        self.gateway.https_port()
    }

    /// Runs every component until `shutdown` is cancelled; each stops taking requests, finishes those in flight
    /// and flushes its outbox.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (identity, units, personnel, printing, gateway) = tokio::join!(
            self.identity.run(shutdown.clone()),
            self.units.run(shutdown.clone()),
            self.personnel.run(shutdown.clone()),
            self.printing.run(shutdown.clone()),
            self.gateway.run(shutdown.clone()),
        );
        identity.and(units).and(personnel).and(printing).and(gateway)
    }
}
