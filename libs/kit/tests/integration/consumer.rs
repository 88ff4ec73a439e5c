//! Consumers apply each event exactly once, through restarts, redeliveries, panics and poison.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use kit::consumer::{ConsumerSpec, Event, Handler, HandlerError};
use kit::testing::{eventually, isolated_nats};
use proto::names::Namespace;
use rand::Rng;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::helpers::database_with_kit_tables;

const EVENTS: usize = 300;

/// Records each event as one row in `effects`; panics on the first delivery of every tenth event; refuses
/// "poison" for good.
#[derive(Default)]
struct RecordingHandler {
    panics: AtomicUsize,
    redelivered_calls: AtomicUsize,
}

impl Handler for RecordingHandler {
    async fn handle(&self, transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if event.payload.as_ref() == b"poison" {
            return Err(HandlerError::Poison("not a number".into()));
        }
        let number: usize =
            String::from_utf8_lossy(&event.payload).parse().map_err(|_| HandlerError::Poison("nan".into()))?;
        if event.delivered > 1 {
            self.redelivered_calls.fetch_add(1, Ordering::SeqCst);
        }
        if number.is_multiple_of(10) && event.delivered == 1 {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("the test handler panics on the first delivery of event {number}");
        }
        sqlx::query("insert into effects (event_id) values ($1)").bind(&event.id).execute(transaction).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_restarted_mid_stream_with_redeliveries_applies_each_event_once() {
    let (_database, pool) = database_with_kit_tables().await;
    let config = isolated_nats();
    let namespace = Namespace::new(config.namespace.clone()).expect("namespace");
    let jetstream = jetstream::new(kit::nats::connect(&config, "consumer-test").await.expect("nats"));
    let (stream, filter) = (namespace.events_stream("test"), namespace.events_filter("test"));
    kit::nats::ensure_stream(&jetstream, &stream, &filter).await.expect("stream");
    for number in 0..EVENTS {
        let publish = jetstream::message::PublishMessage::build()
            .payload(number.to_string().into())
            .message_id(format!("event-{number}"));
        jetstream
            .send_publish(namespace.event_subject("test", "changed"), publish)
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let poison = jetstream::message::PublishMessage::build().payload("poison".into()).message_id("event-poison");
    jetstream
        .send_publish(namespace.event_subject("test", "changed"), poison)
        .await
        .expect("publish")
        .await
        .expect("ack");

    let mut spec = ConsumerSpec::new(
        stream.clone(),
        filter,
        namespace.consumer("test", "recorder"),
        namespace.events_filter("test"),
    );
    // A short ack wait makes a message whose ack was lost in an abort come back quickly.
    spec.ack_wait = Duration::from_secs(1);
    let handler = Arc::new(RecordingHandler::default());
    let count_pool = pool.clone();
    let applied = || {
        let pool = count_pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(distinct event_id) from effects")
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };

    // Restart the consumer at random points until everything is applied.
    let mut restarts = 0;
    while applied().await < EVENTS as i64 {
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(kit::consumer::run(pool.clone(), jetstream.clone(), spec.clone(), handler.clone(), shutdown));
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(50..400))).await;
        task.abort();
        let _ = task.await;
        restarts += 1;
        assert!(restarts < 400, "the consumer makes progress");
    }
    // Let every outstanding redelivery arrive and be recognised as a duplicate.
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kit::consumer::run(
        pool.clone(),
        jetstream.clone(),
        spec.clone(),
        handler.clone(),
        shutdown.clone(),
    ));
    let consumer: jetstream::consumer::PullConsumer =
        jetstream.get_stream(&stream).await.expect("stream").get_consumer(&spec.durable).await.expect("consumer");
    eventually(Duration::from_secs(60), "nothing left pending or unacknowledged", || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.expect("consumer info");
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
    shutdown.cancel();
    task.await.expect("consumer stops");

    kit::testing::remove_streams(&jetstream, namespace.as_str()).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from effects").fetch_one(&pool).await.expect("rows");
    assert_eq!(rows, EVENTS as i64, "each event applied exactly once");
    assert!(restarts > 1, "the consumer was restarted mid-stream ({restarts} runs)");
    // An event whose first delivery was cut short by an abort comes back as delivery 2 and does not panic, so
    // fewer than one in ten may have panicked; each that did was delivered again and applied.
    let panics = handler.panics.load(Ordering::SeqCst);
    assert!(panics > 0 && panics <= EVENTS / 10, "{panics} handler panics");
    assert!(handler.redelivered_calls.load(Ordering::SeqCst) >= panics, "every panicked event was redelivered");
    let poisoned: i64 = sqlx::query_scalar("select count(*) from kit_inbox where message_id = 'event-poison'")
        .fetch_one(&pool)
        .await
        .expect("inbox");
    assert_eq!(poisoned, 0, "the poison event was terminated, not applied");
}
