//! What the tests share: an Echo service to carry over NATS RPC, and a migrated test database.

use std::time::Duration;

use kit::testing::TestDatabase;
use proto::testing::echo_server::Echo;
use proto::testing::{SayReply, SayRequest};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};

/// An Echo replica that says who it is.
#[derive(Debug, Clone)]
pub struct EchoReplica {
    pub name: String,
}

#[tonic::async_trait]
impl Echo for EchoReplica {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let request = request.into_inner();
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
        }
        if request.panic {
            panic!("the test asked this handler to panic");
        }
        if request.fail_code != 0 {
            return Err(Status::new(tonic::Code::from_i32(request.fail_code), request.fail_message));
        }
        Ok(Response::new(SayReply {
            message: request.message,
            replica: self.name.clone(),
            trace_id: kit::trace::TraceContext::current().map(|context| context.trace_id_hex()).unwrap_or_default(),
        }))
    }
}

/// A test database with kit's tables and a `changes` table standing in for a service's own data.
pub async fn database_with_kit_tables() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create().await;
    let pool = kit::db::connect(&database.config(), "unused").await.expect("connect the test database");
    kit::db::migrate(&pool, &Migrator::with_migrations(Vec::new())).await.expect("kit migrations");
    sqlx::query("create table changes (id bigint primary key)").execute(&pool).await.expect("changes table");
    sqlx::query("create table effects (event_id text not null)").execute(&pool).await.expect("effects table");
    (database, pool)
}
