//! Test helpers: isolation on the shared servers (a database, a NATS namespace and a Redis key prefix of the test's
//! own), and private server instances for tests that stop or restart a server.
//!
//! The shared servers are found through `PENSION_TEST_DATABASE_URL`, `PENSION_TEST_NATS_URL` and
//! `PENSION_TEST_REDIS_URL` (set by `make test`), defaulting to the local ports.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::{ConnectOptions, Connection};

use crate::db::DatabaseConfig;
use crate::nats::NatsConfig;

/// The shared PostgreSQL server's admin URL.
pub fn shared_database_url() -> String {
    std::env::var("PENSION_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The shared nats-server's URL.
pub fn shared_nats_url() -> String {
    std::env::var("PENSION_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The shared Redis URL.
pub fn shared_redis_url() -> String {
    std::env::var("PENSION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A short random suffix for names a test owns.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A NATS namespace no other test uses, on the shared server.
pub fn isolated_nats() -> NatsConfig {
    NatsConfig { url: shared_nats_url(), namespace: format!("t_{}", unique_suffix()), ..NatsConfig::default() }
}

/// Deletes the JetStream streams of a test's namespace, so the shared server does not collect them run after run.
pub async fn remove_streams(jetstream: &async_nats::jetstream::Context, namespace: &str) {
    use futures::TryStreamExt;
    let prefix = format!("{}_", namespace.to_ascii_uppercase());
    let names: Vec<String> = jetstream.stream_names().try_collect().await.unwrap_or_default();
    for name in names.into_iter().filter(|name| name.starts_with(&prefix)) {
        let _ = jetstream.delete_stream(&name).await;
    }
}

/// Deletes test streams (namespace `t_…`) created more than 30 minutes ago, left by tests that ended before cleaning
/// up. No test runs that long, so streams of tests running now are never touched.
pub async fn sweep_stale_test_streams(jetstream: &async_nats::jetstream::Context) {
    use futures::TryStreamExt;
    let cutoff = time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(30 * 60);
    let Ok(streams) = jetstream.streams().try_collect::<Vec<_>>().await else { return };
    for info in streams {
        if info.config.name.starts_with("T_") && info.created < cutoff {
            let _ = jetstream.delete_stream(&info.config.name).await;
        }
    }
}

/// A database of the test's own on the shared server, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates an empty database on the shared server.
    pub async fn create() -> Self {
        Self::create_on(&shared_database_url()).await
    }

    /// Creates an empty database on the server of `admin_url`.
    pub async fn create_on(admin_url: &str) -> Self {
        let name = format!("t_{}", unique_suffix());
        let options: sqlx::postgres::PgConnectOptions = admin_url.parse().expect("a valid admin database URL");
        let mut admin = options.connect().await.expect("the test PostgreSQL server is reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let url = options.database(&name).to_url_lossy().to_string();
        Self { name, url, admin_url: admin_url.to_owned() }
    }

    /// A configuration pointing at this database.
    pub fn config(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: Some(SecretString::from(self.url.clone())),
            create_if_missing: false,
            ..DatabaseConfig::default()
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop cannot be async, and the test's runtime may be shutting down: use a runtime of our own.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(options) = admin_url.parse::<sqlx::postgres::PgConnectOptions>() else {
                    return;
                };
                if let Ok(mut admin) = options.connect().await {
                    let statement = format!("drop database if exists {name} with (force)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Waits until `condition` holds, polling; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn wait_for_port(port: u16, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn wait_for_port_closed(port: u16, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A program found on PATH or in the usual Debian locations.
fn program(name: &str) -> PathBuf {
    let candidates = [format!("/usr/sbin/{name}"), format!("/usr/bin/{name}"), format!("/usr/local/bin/{name}")];
    candidates.iter().map(PathBuf::from).find(|path| path.exists()).unwrap_or_else(|| PathBuf::from(name))
}

/// A server program run as a child process on a port of its own, stopped with SIGKILL (the harshest way a server
/// goes away) and started again on the same port.
#[derive(Debug)]
struct ChildServer {
    port: u16,
    child: Option<Child>,
}

impl ChildServer {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            wait_for_port_closed(self.port, Duration::from_secs(5));
        }
    }

    fn spawn(&mut self, mut command: Command, what: &str) {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{what} runs (install it from Debian's packages): {error}"));
        self.child = Some(child);
        assert!(wait_for_port(self.port, Duration::from_secs(10)), "private {what} did not start");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private nats-server with JetStream, on its own port and store, for tests that stop or restart it.
#[derive(Debug)]
pub struct PrivateNats {
    server: ChildServer,
    store: tempfile::TempDir,
}

impl PrivateNats {
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("a temporary directory");
        let mut nats = Self { server: ChildServer { port: free_port(), child: None }, store };
        nats.resume();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.server.port)
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same port with the same store.
    pub fn resume(&mut self) {
        let mut command = Command::new(program("nats-server"));
        command.args(["-a", "127.0.0.1", "-p", &self.server.port.to_string(), "-js", "-sd"]).arg(self.store.path());
        self.server.spawn(command, "nats-server");
    }
}

/// A private redis-server that keeps nothing on disk.
#[derive(Debug)]
pub struct PrivateRedis {
    server: ChildServer,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self { server: ChildServer { port: free_port(), child: None } };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.server.port)
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    pub fn resume(&mut self) {
        let mut command = Command::new(program("redis-server"));
        let port = self.server.port.to_string();
        command.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        self.server.spawn(command, "redis-server");
    }
}

/// A private PostgreSQL cluster (initdb in a temporary directory), for tests that stop the database. When the
/// tests run as root, the cluster runs as the `postgres` user, since PostgreSQL refuses to run as root.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    data: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = postgres_bin_dir();
        let data = tempfile::tempdir().expect("a temporary directory");
        let as_root = is_root();
        if as_root {
            run_checked(Command::new("chown").args(["-R", "postgres:postgres"]).arg(data.path()));
        }
        let initdb = bin.join("initdb");
        let mut command = postgres_command(as_root, &initdb);
        command.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"]).arg(data.path().join("pg"));
        run_checked(&mut command);
        let mut server = Self { port: free_port(), data, bin, running: false };
        server.resume();
        server
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it in immediate mode (like a crash: no checkpoint, connections cut).
    pub fn stop(&mut self) {
        if self.running {
            let mut command = postgres_command(is_root(), &self.bin.join("pg_ctl"));
            command.args(["stop", "-m", "immediate", "-w", "-D"]).arg(self.data.path().join("pg"));
            run_checked(&mut command);
            self.running = false;
            wait_for_port_closed(self.port, Duration::from_secs(10));
        }
    }

    pub fn resume(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.data.path().display()
        );
        let mut command = postgres_command(is_root(), &self.bin.join("pg_ctl"));
        command
            .args(["start", "-w", "-t", "30", "-o", &options, "-l"])
            .arg(self.data.path().join("log"))
            .arg("-D")
            .arg(self.data.path().join("pg"));
        run_checked(&mut command);
        self.running = true;
        assert!(wait_for_port(self.port, Duration::from_secs(20)), "private PostgreSQL did not start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|out| out.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn postgres_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect("PostgreSQL server binaries under /usr/lib/postgresql (install Debian's postgresql)")
}

fn run_checked(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
