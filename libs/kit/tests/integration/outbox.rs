//! The outbox: every committed change yields exactly one event in the stream, whatever happens to the relay or to
//! nats-server in between.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use kit::nats::NatsConfig;
use kit::outbox::{Relay, RelayConfig};
use kit::testing::{PrivateNats, eventually, isolated_nats};
use proto::names::Namespace;
use rand::Rng;
use sqlx::PgPool;

use crate::helpers::database_with_kit_tables;

const CHANGES: i64 = 1_000;

/// Commits `count` changes, each with its event, in transactions of one change each.
async fn commit_changes(pool: PgPool, subject: String, count: i64) {
    for id in 0..count {
        let mut transaction = pool.begin().await.expect("begin");
        sqlx::query("insert into changes (id) values ($1)").bind(id).execute(&mut *transaction).await.expect("change");
        let payload = id.to_string();
        kit::outbox::enqueue(&mut transaction, kit::outbox::new_event_id(), &subject, payload.as_bytes())
            .await
            .expect("event");
        transaction.commit().await.expect("commit");
    }
}

/// Every message in the stream, read with an ephemeral consumer: (count, distinct payloads).
async fn stream_contents(jetstream: &jetstream::Context, stream: &str) -> (u64, HashSet<String>) {
    let mut stream = jetstream.get_stream(stream).await.expect("stream exists");
    let count = stream.info().await.expect("stream info").state.messages;
    let consumer =
        stream.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut payloads = HashSet::new();
    for _ in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("message");
        payloads.insert(String::from_utf8_lossy(&message.payload).into_owned());
    }
    (count, payloads)
}

async fn setup(config: &NatsConfig) -> (jetstream::Context, String, String, String) {
    let namespace = Namespace::new(config.namespace.clone()).expect("namespace");
    let nats = kit::nats::connect(config, "outbox-test").await.expect("nats");
    let jetstream = jetstream::new(nats);
    let stream = namespace.events_stream("test");
    kit::nats::ensure_stream(&jetstream, &stream, &namespace.events_filter("test")).await.expect("stream");
    (jetstream, stream, namespace.event_subject("test", "changed"), config.namespace.clone())
}

fn quick_relay(pool: &PgPool, jetstream: &jetstream::Context) -> Relay {
    let config = RelayConfig { batch_size: 50, idle_poll: Duration::from_millis(5), ..RelayConfig::default() };
    Relay::new(pool.clone(), jetstream.clone(), config)
}

#[tokio::test]
async fn a_relay_aborted_at_random_points_publishes_every_event_exactly_once() {
    let (_database, pool) = database_with_kit_tables().await;
    let (jetstream, stream, subject, namespace) = setup(&isolated_nats()).await;
    let writer = tokio::spawn(commit_changes(pool.clone(), subject, CHANGES));

    let mut aborts = 0;
    while !writer.is_finished() || kit::outbox::backlog(&pool).await.expect("backlog") > 0 {
        let relay = tokio::spawn(quick_relay(&pool, &jetstream).run(tokio_util::sync::CancellationToken::new()));
        let lifetime = rand::rng().random_range(2..40);
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        // Abort is a crash: the relay's transaction is dropped mid-way, whatever it had published.
        relay.abort();
        let _ = relay.await;
        aborts += 1;
    }
    writer.await.expect("writer");

    let (count, payloads) = stream_contents(&jetstream, &stream).await;
    kit::testing::remove_streams(&jetstream, &namespace).await;
    assert!(aborts > 5, "the relay was aborted {aborts} times");
    assert_eq!(count, CHANGES as u64, "exactly one message per change");
    assert_eq!(payloads.len(), CHANGES as usize, "no change missing, none doubled");
}

#[tokio::test]
async fn a_nats_server_restart_mid_run_loses_and_doubles_nothing() {
    let (_database, pool) = database_with_kit_tables().await;
    let mut server = PrivateNats::start();
    let config = NatsConfig { url: server.url(), namespace: "outbox".into(), ..NatsConfig::default() };
    let (jetstream, stream, subject, _) = setup(&config).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(quick_relay(&pool, &jetstream).run(shutdown.clone()));
    let writer = tokio::spawn(commit_changes(pool.clone(), subject, CHANGES));

    let backlog_pool = pool.clone();
    eventually(Duration::from_secs(30), "some events published", || {
        let pool = backlog_pool.clone();
        async move {
            let published: i64 = sqlx::query_scalar("select count(*) from kit_outbox where published_at is not null")
                .fetch_one(&pool)
                .await
                .expect("count");
            published >= 100
        }
    })
    .await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.resume();
    writer.await.expect("writer");
    eventually(Duration::from_secs(60), "the outbox drained after the restart", || {
        let pool = pool.clone();
        async move { kit::outbox::backlog(&pool).await.expect("backlog") == 0 }
    })
    .await;
    shutdown.cancel();
    relay.await.expect("relay stops");

    let (count, payloads) = stream_contents(&jetstream, &stream).await;
    assert_eq!(count, CHANGES as u64, "exactly one message per change");
    assert_eq!(payloads.len(), CHANGES as usize, "no change missing, none doubled");
}

#[tokio::test]
async fn a_relay_creates_its_missing_stream_and_publishes() {
    let (_database, pool) = database_with_kit_tables().await;
    let config = isolated_nats();
    let namespace = Namespace::new(config.namespace.clone()).expect("namespace");
    let jetstream = jetstream::new(kit::nats::connect(&config, "outbox-test").await.expect("nats"));
    let (stream, subjects) = (namespace.events_stream("late"), namespace.events_filter("late"));
    commit_changes(pool.clone(), namespace.event_subject("late", "changed"), 10).await;
    assert!(jetstream.get_stream(&stream).await.is_err(), "no stream before the relay runs");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = quick_relay(&pool, &jetstream).with_stream(stream.clone(), subjects);
    let task = tokio::spawn(relay.run(shutdown.clone()));
    eventually(Duration::from_secs(20), "the outbox drained", || {
        let pool = pool.clone();
        async move { kit::outbox::backlog(&pool).await.expect("backlog") == 0 }
    })
    .await;
    shutdown.cancel();
    task.await.expect("relay stops");

    let (count, payloads) = stream_contents(&jetstream, &stream).await;
    kit::testing::remove_streams(&jetstream, namespace.as_str()).await;
    assert_eq!((count, payloads.len()), (10, 10));
}
