//! The Redis connection. Redis holds only what may be lost (sessions, throttling, rate limits, caches): losing it
//! logs people out, never loses data.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::admin::CheckResult;

/// The `redis` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db`; a secret because it may carry a password.
    pub url: SecretString,
    /// Prepended to every key, so tests (and several platforms on one Redis) never share keys.
    pub key_prefix: String,
    #[serde(with = "crate::config::millis")]
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            key_prefix: "pension:".into(),
            response_timeout: Duration::from_millis(500),
        }
    }
}

/// A Redis handle that reconnects by itself and prefixes keys.
#[derive(Clone)]
pub struct Redis {
    pub connection: ConnectionManager,
    pub key_prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("key_prefix", &self.key_prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects lazily: the process starts while Redis is down, and commands fail fast until it is back.
    pub fn connect(config: &RedisConfig) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(config.url.expose_secret())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self { connection, key_prefix: config.key_prefix.clone() })
    }

    /// A key under this platform's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// Readiness: PING answers PONG.
    pub async fn check(&self) -> CheckResult {
        let mut connection = self.connection.clone();
        redis::cmd("PING").query_async::<String>(&mut connection).await.map(|_| ()).map_err(|error| error.to_string())
    }
}
