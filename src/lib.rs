//! The whole platform in one process: every service and the gateway built on one NATS connection and one
//! readiness, the gateway's HTTP port serving the admin endpoints for all of them. `pension all` runs it; the
//! whole-system tests build it on free ports.

pub mod demo;

use anyhow::Context as _;
use kit::config::{ConfigError, Settings};
use kit::redis::{Redis, RedisConfig};
use kit::service::Platform;
use tokio_util::sync::CancellationToken;

/// Every section `pension all` needs, read before anything connects so a mistake stops start-up untouched.
#[derive(Debug, Clone)]
pub struct AllInOneConfig {
    pub identity: identity::Config,
    pub units: units::Config,
    pub personnel: personnel::Config,
    pub printing: printing::Config,
    pub gateway: gateway::Config,
    pub redis: RedisConfig,
    /// The development population registry (公安库 stand-in), off unless `population.enabled`.
    pub population: personnel::population::DevelopmentConfig,
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
            population: settings.section("population")?,
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
    population: Option<personnel::population::DevelopmentServer>,
}

impl AllInOne {
    pub async fn build(config: &AllInOneConfig, platform: &Platform) -> anyhow::Result<Self> {
        let redis = Redis::connect(&config.redis).context("redis configuration")?;
        // The stand-in registry first, so personnel's first checks find it.
        let population = personnel::population::DevelopmentServer::build(&config.population).await?;
        Ok(Self {
            population,
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

    /// The agencies' gRPC port, when the gateway has a TLS certificate for it.
    pub fn agency_port(&self) -> Option<u16> {
        self.gateway.agency_port()
    }

    /// Runs every component until `shutdown` is cancelled; each stops taking requests, finishes those in flight
    /// and flushes its outbox.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let population = async {
            match self.population {
                Some(server) => server.run(shutdown.clone()).await,
                None => Ok(()),
            }
        };
        let (identity, units, personnel, printing, gateway, population) = tokio::join!(
            self.identity.run(shutdown.clone()),
            self.units.run(shutdown.clone()),
            self.personnel.run(shutdown.clone()),
            self.printing.run(shutdown.clone()),
            self.gateway.run(shutdown.clone()),
            population,
        );
        identity.and(units).and(personnel).and(printing).and(gateway).and(population)
    }
}
