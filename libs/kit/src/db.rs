//! PostgreSQL: the connection pool, the migrations every service database carries, the readiness check, and the
//! mapping of database errors onto statuses.
//!
//! Each service has its own database (one server is fine). Kit's own tables (`kit_outbox`, `kit_inbox`) come from
//! `migrations/kit`, recorded in `_kit_migrations` so they never collide with the service's own migrations.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::admin::CheckResult;

/// A `database` section of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`; a secret because it may carry a password. When unset, the
    /// service's own database on the local server (see [`DatabaseConfig::url_or_local`]).
    pub url: Option<SecretString>,
    pub max_connections: u32,
    /// How long a query waits for a free connection before the call fails with `UNAVAILABLE`.
    #[serde(with = "crate::config::millis")]
    pub acquire_timeout: Duration,
    /// Create the database at start-up when it does not exist (development and tests; production creates it with
    /// the chart's migration job).
    pub create_if_missing: bool,
    /// The role a service's queries run as (`SET ROLE` on every pooled connection), so that row-level security
    /// holds even when the login user owns the tables. Empty: the login user's own role, for a deployment whose
    /// login user is itself the restricted role.
    pub application_role: String,
}

impl DatabaseConfig {
    /// The configured URL, or the development default: `database` on the local server as the `postgres` user.
    pub fn url_or_local(&self, database: &str) -> SecretString {
        self.url.clone().unwrap_or_else(|| SecretString::from(format!("postgres://postgres@127.0.0.1:5432/{database}")))
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            create_if_missing: true,
            application_role: APPLICATION_ROLE.to_owned(),
        }
    }
}

/// The role `migrations/kit` makes and grants the service tables to.
pub const APPLICATION_ROLE: &str = "pension_app";

/// The pool a service's queries use: every connection runs as the application role, so row-level security
/// applies to it. Migrations need the owner: [`connect`] and [`migrate`] first.
pub async fn connect_application(config: &DatabaseConfig, default_database: &str) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url_or_local(default_database).expose_secret().parse()?;
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    let role = config.application_role.trim().to_owned();
    if !role.is_empty() && !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(sqlx::Error::Configuration(
            format!("database.application_role {role:?} is not a role name").into(),
        ));
    }
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .after_connect(move |connection, _| {
            let statement = format!("set role {role}");
            Box::pin(async move {
                if statement != "set role " {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(connection).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// Connects as the login user, creating the database first when configured to: for migrations, and for tests that
/// look at the tables as their owner. `default_database` is used when no URL is set.
pub async fn connect(config: &DatabaseConfig, default_database: &str) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url_or_local(default_database).expose_secret().parse()?;
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    if config.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&database)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let statement = format!("create database \"{}\"", database.replace('"', "\"\""));
        match sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await {
            Ok(_) => tracing::info!(%database, "created database"),
            // Two replicas starting together race to create it; the loser finds it made.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(error),
        }
    }
    admin.close().await
}

/// Applies kit's migrations, then the service's.
pub async fn migrate(pool: &PgPool, service: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
    let mut kit = sqlx::migrate!("../../migrations/kit");
    // A table of their own, so kit's versions and the service's never collide.
    kit.dangerous_set_table_name("_kit_migrations");
    kit.run(pool).await?;
    service.run(pool).await
}

/// The newest migration of the service applied to this database.
pub async fn schema_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select coalesce(max(version), 0) from _sqlx_migrations where success").fetch_one(pool).await
}

/// What a transaction may see of the tables under row-level security: every unit (the platform's own work, the
/// province admin), or the units named. Set per transaction, so one transaction may carry a batch of several units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Units(Vec<String>),
    /// The units these handling agencies handle (an agency reviewer's), where a table knows a unit's agency.
    Agencies(Vec<String>),
}

impl Scope {
    pub fn unit(institution_code: &str) -> Self {
        Scope::Units(vec![institution_code.to_owned()])
    }
}

/// Sets the transaction's scope (`pension.scope`, `pension.units`, `pension.agencies`), read by the tables' policies. A connection
/// outside a scoped transaction sees no row of a scoped table.
pub async fn set_scope(transaction: &mut sqlx::PgConnection, scope: &Scope) -> Result<(), sqlx::Error> {
    // Institution and agency codes are digits; a comma cannot be part of one, so the lists need no quoting.
    let list =
        |codes: &[String]| codes.iter().filter(|code| !code.contains(',')).cloned().collect::<Vec<_>>().join(",");
    let (all, units, agencies) = match scope {
        Scope::All => ("all", String::new(), String::new()),
        Scope::Units(units) => ("", list(units), String::new()),
        Scope::Agencies(agencies) => ("", String::new(), list(agencies)),
    };
    sqlx::query(
        "select set_config('pension.scope', $1, true), set_config('pension.units', $2, true), \
         set_config('pension.agencies', $3, true)",
    )
    .bind(all)
    .bind(units)
    .bind(agencies)
    .execute(transaction)
    .await
    .map(|_| ())
}

/// Begins a transaction with its scope set.
pub async fn begin_scoped(
    pool: &PgPool,
    scope: &Scope,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut transaction = pool.begin().await?;
    set_scope(&mut transaction, scope).await?;
    Ok(transaction)
}

/// Whether `error` is a unique violation of the named constraint or unique index.
pub fn violates(error: &sqlx::Error, constraint: &str) -> bool {
    matches!(error, sqlx::Error::Database(database)
        if database.code().as_deref() == Some("23505") && database.constraint() == Some(constraint))
}

/// Readiness: a round trip to the database.
pub async fn check(pool: &PgPool) -> CheckResult {
    sqlx::query("select 1").execute(pool).await.map(|_| ()).map_err(|error| error.to_string())
}

/// Whether an error means the database could not be reached (as opposed to a query the database refused).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_))
        || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08")))
}

/// The status a caller gets for a database error: `UNAVAILABLE` when the database cannot be reached, otherwise
/// `INTERNAL` with no detail (the detail is logged here, once).
pub fn status(error: sqlx::Error) -> tonic::Status {
    if is_unavailable(&error) {
        tracing::warn!(%error, "postgres is unavailable");
        return tonic::Status::unavailable("postgres is unavailable; try again shortly");
    }
    tracing::error!(%error, "unexpected database error");
    tonic::Status::internal("internal error")
}
