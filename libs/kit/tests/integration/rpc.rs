//! NATS RPC: tonic services served in a queue group and called through `NatsChannel`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kit::rpc::{NatsChannel, RpcServer, STATUS_HEADER};
use kit::testing::isolated_nats;
use kit::trace::TraceContext;
use proto::names::Namespace;
use proto::testing::SayRequest;
use proto::testing::echo_client::EchoClient;
use proto::testing::echo_server::EchoServer;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

use crate::helpers::EchoReplica;

struct EchoCluster {
    nats: async_nats::Client,
    prefix: String,
    shutdown: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl EchoCluster {
    async fn start(replicas: usize) -> Self {
        let config = isolated_nats();
        let namespace = Namespace::new(config.namespace.clone()).expect("namespace");
        let nats = kit::nats::connect(&config, "rpc-test").await.expect("nats");
        let prefix = namespace.rpc_prefix("echo");
        let shutdown = CancellationToken::new();
        let mut servers = Vec::new();
        for index in 0..replicas {
            let server = RpcServer::new(nats.clone(), prefix.clone(), "echo");
            let service = EchoServer::new(EchoReplica { name: format!("replica-{index}") });
            let token = shutdown.clone();
            servers.push(tokio::spawn(async move {
                server.serve(EchoServer::<EchoReplica>::NAME, service, token).await.expect("serve");
            }));
        }
        // Subscriptions are registered once the server has processed them; a flush round trip guarantees that.
        tokio::time::sleep(Duration::from_millis(100)).await;
        nats.flush().await.expect("flush");
        Self { nats, prefix, shutdown, servers }
    }

    fn client(&self, default_timeout: Duration) -> EchoClient<NatsChannel> {
        EchoClient::new(NatsChannel::new(self.nats.clone(), self.prefix.clone(), default_timeout))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for server in self.servers {
            server.await.expect("server task ends cleanly");
        }
    }
}

fn say(message: &str) -> SayRequest {
    SayRequest { message: message.into(), ..SayRequest::default() }
}

#[tokio::test]
async fn calls_spread_across_the_replicas_of_a_queue_group() {
    let cluster = EchoCluster::start(3).await;
    let client = cluster.client(Duration::from_secs(5));

    let mut replies_by_replica: HashMap<String, usize> = HashMap::new();
    for index in 0..90 {
        let reply = client.clone().say(say(&format!("call {index}"))).await.expect("call succeeds").into_inner();
        assert_eq!(reply.message, format!("call {index}"));
        *replies_by_replica.entry(reply.replica).or_default() += 1;
    }

    assert_eq!(replies_by_replica.len(), 3, "every replica answered some calls: {replies_by_replica:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn an_error_status_and_its_message_reach_the_caller_intact() {
    let cluster = EchoCluster::start(1).await;
    let request = SayRequest {
        fail_code: tonic::Code::FailedPrecondition as i32,
        fail_message: "申报审核中，不能修改人员信息 (declared: roster frozen)".into(),
        ..say("x")
    };

    let status = cluster.client(Duration::from_secs(5)).say(request).await.expect_err("the call fails");

    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "申报审核中，不能修改人员信息 (declared: roster frozen)");
    cluster.stop().await;
}

#[tokio::test]
async fn an_expired_deadline_gives_deadline_exceeded_promptly() {
    let cluster = EchoCluster::start(1).await;
    let mut request = tonic::Request::new(SayRequest { delay_ms: 3_000, ..say("slow") });
    request.set_timeout(Duration::from_millis(200));

    let started = Instant::now();
    let status = cluster.client(Duration::from_secs(30)).say(request).await.expect_err("the deadline passes");

    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    cluster.stop().await;
}

#[tokio::test]
async fn no_replica_gives_unavailable_within_the_deadline() {
    let cluster = EchoCluster::start(0).await;
    let started = Instant::now();

    let status = cluster.client(Duration::from_secs(5)).say(say("anyone?")).await.expect_err("nobody answers");

    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    cluster.stop().await;
}

#[tokio::test]
async fn a_malformed_protobuf_body_gets_invalid_argument_and_the_server_keeps_serving() {
    let cluster = EchoCluster::start(1).await;

    // 0xff 0xff … is not a valid protobuf encoding of anything (an unterminated varint field key).
    let reply = cluster
        .nats
        .request(format!("{}.Say", cluster.prefix), bytes::Bytes::from_static(&[0xff; 12]))
        .await
        .expect("a reply, not silence");
    let code = reply.headers.as_ref().and_then(|headers| headers.get(STATUS_HEADER)).map(|value| value.to_string());
    assert_eq!(code.as_deref(), Some("3"), "INVALID_ARGUMENT is code 3");

    let after = cluster.client(Duration::from_secs(5)).say(say("still here")).await.expect("still serving");
    assert_eq!(after.into_inner().message, "still here");
    cluster.stop().await;
}

#[tokio::test]
async fn an_unknown_method_gets_unimplemented() {
    let cluster = EchoCluster::start(1).await;

    let reply =
        cluster.nats.request(format!("{}.NoSuchMethod", cluster.prefix), bytes::Bytes::new()).await.expect("a reply");

    let code = reply.headers.as_ref().and_then(|headers| headers.get(STATUS_HEADER)).map(|value| value.to_string());
    assert_eq!(code.as_deref(), Some("12"), "UNIMPLEMENTED is code 12");
    cluster.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_gives_internal_and_the_server_keeps_serving() {
    let cluster = EchoCluster::start(1).await;
    let client = cluster.client(Duration::from_secs(5));

    let status = client.clone().say(SayRequest { panic: true, ..say("boom") }).await.expect_err("the handler panics");
    assert_eq!(status.code(), tonic::Code::Internal);

    let after = client.clone().say(say("after the panic")).await.expect("still serving");
    assert_eq!(after.into_inner().message, "after the panic");
    cluster.stop().await;
}

#[tokio::test]
async fn the_trace_id_travels_with_the_call() {
    let cluster = EchoCluster::start(1).await;
    let client = cluster.client(Duration::from_secs(5));
    let context = TraceContext::new_root();

    let reply = context.scope(async move { client.clone().say(say("traced")).await }).await.expect("call succeeds");

    assert_eq!(reply.into_inner().trace_id, context.trace_id_hex());
    cluster.stop().await;
}

#[tokio::test]
async fn a_shut_down_server_finishes_the_call_in_flight() {
    let cluster = EchoCluster::start(1).await;
    let client = cluster.client(Duration::from_secs(5));
    let in_flight = tokio::spawn(async move { client.clone().say(SayRequest { delay_ms: 300, ..say("last") }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    cluster.stop().await;

    let reply = in_flight.await.expect("task").expect("the call in flight is answered");
    assert_eq!(reply.into_inner().message, "last");
}
