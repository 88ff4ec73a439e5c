//! gRPC over NATS request-reply: any tonic-generated server served on NATS subjects, and a channel that lets any
//! tonic-generated client call it.
//!
//! Each method of a service is the subject `<prefix>.<Method>` (the prefix comes from `proto::names`), subscribed
//! in a queue group so that replicas share the load without service discovery. The request body is the protobuf
//! message without gRPC framing; the reply body is the response message, and the reply headers carry `Grpc-Status`,
//! `Grpc-Message` and `Grpc-Status-Details-Bin` exactly as HTTP/2 gRPC carries them in trailers. The deadline travels
//! as `Grpc-Timeout`, the trace as `traceparent`, and other request metadata as headers of the same name.
//!
//! Rather than decode messages itself, the server hands each request to the tonic service as an HTTP/2-shaped
//! request and reads the framed response back, so interceptors, status codes and the codec behave the same over
//! both transports, and the service code never sees the transport. Only unary methods are carried: streaming
//! belongs on real gRPC, at the edge.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use async_nats::{Client, HeaderMap as NatsHeaders, Message};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use crate::trace::{self, TRACEPARENT, TraceContext};

/// Reply header with the numeric `tonic::Code`.
pub const STATUS_HEADER: &str = "Grpc-Status";
/// Reply header with the percent-encoded status message.
pub const MESSAGE_HEADER: &str = "Grpc-Message";
/// Reply header with the encoded `google.rpc.Status` details, when the handler set any.
pub const DETAILS_HEADER: &str = "Grpc-Status-Details-Bin";
/// Request header with the time the caller will wait, in gRPC's `grpc-timeout` format (`250m` is 250 ms).
pub const TIMEOUT_HEADER: &str = "Grpc-Timeout";

/// The gRPC headers of HTTP/2 that describe the transport, not the call; they are not forwarded as metadata.
const TRANSPORT_HEADERS: [&str; 7] =
    ["content-type", "te", "user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout", "content-length"];

/// Serves one tonic-generated service on NATS.
#[derive(Debug, Clone)]
pub struct RpcServer {
    client: Client,
    subject_prefix: String,
    queue_group: String,
    max_in_flight: usize,
}

impl RpcServer {
    /// `subject_prefix` is the service's subject tree (`pension.rpc.units.v1`); `queue_group` is shared by every
    /// replica of the service.
    pub fn new(client: Client, subject_prefix: impl Into<String>, queue_group: impl Into<String>) -> Self {
        Self { client, subject_prefix: subject_prefix.into(), queue_group: queue_group.into(), max_in_flight: 256 }
    }

    /// How many requests one instance handles at once; further requests wait in NATS's buffer for this instance.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Serves `service` (whose gRPC name is `grpc_service`, e.g. `pension.units.v1.Units`) until `shutdown` is
    /// cancelled; then unsubscribes, so new requests go to other replicas, and finishes the requests in flight.
    pub async fn serve<S>(
        self,
        grpc_service: &str,
        service: S,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let subject = format!("{}.*", self.subject_prefix);
        let mut subscriber = self.client.queue_subscribe(subject.clone(), self.queue_group.clone()).await?;
        tracing::info!(%subject, queue_group = %self.queue_group, "serving RPC over NATS");
        let context = Arc::new(HandlerContext {
            client: self.client.clone(),
            grpc_service: grpc_service.to_owned(),
            method_offset: self.subject_prefix.len() + 1,
        });
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                message = subscriber.next() => {
                    let Some(message) = message else { break };
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    let context = context.clone();
                    let service = service.clone();
                    in_flight.spawn(async move {
                        handle_request(&context, service, message).await;
                        drop(permit);
                    });
                }
            }
        }
        if let Err(error) = subscriber.unsubscribe().await {
            tracing::warn!(%error, "cannot unsubscribe from RPC subjects");
        }
        // Requests NATS had already handed to this instance are answered, not dropped.
        while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await {
            let context = context.clone();
            let service = service.clone();
            in_flight.spawn(async move { handle_request(&context, service, message).await });
        }
        while in_flight.join_next().await.is_some() {}
        tracing::info!(%subject, "stopped serving RPC over NATS");
        Ok(())
    }
}

struct HandlerContext {
    client: Client,
    grpc_service: String,
    /// Where the method name starts in a request subject.
    method_offset: usize,
}

async fn handle_request<S>(context: &HandlerContext, service: S, message: Message)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let Some(reply_to) = message.reply.clone() else {
        tracing::debug!(subject = %message.subject, "RPC request without a reply subject ignored");
        return;
    };
    let started = Instant::now();
    let method = message.subject.get(context.method_offset..).unwrap_or_default().to_owned();
    let headers = message.headers.clone().unwrap_or_default();
    let timeout = headers.get(TIMEOUT_HEADER).and_then(|value| parse_grpc_timeout(value.as_str()));
    let trace = trace::continue_or_start(headers.get(TRACEPARENT).map(|value| value.as_str()));
    let span = tracing::info_span!(
        "rpc",
        rpc.service = %context.grpc_service,
        rpc.method = %method,
        trace_id = %trace.trace_id_hex(),
        request_id = %trace::new_request_id(),
    );
    let outcome = async {
        let request = match incoming_request(&context.grpc_service, &method, &headers, message.payload, timeout) {
            Ok(request) => request,
            Err(status) => return status_headers(&status),
        };
        let call = AssertUnwindSafe(trace.scope(service.oneshot(request))).catch_unwind();
        let result = match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => {
                    return status_headers(&Status::deadline_exceeded("the deadline passed before the reply"));
                }
            },
            None => call.await,
        };
        match result {
            Ok(Ok(response)) => reply_from_response(response).await,
            Ok(Err(never)) => match never {},
            Err(_) => {
                tracing::error!("the handler panicked");
                status_headers(&Status::internal("the service failed while handling the request"))
            }
        }
    }
    .instrument(span.clone())
    .await;
    let (headers, body) = outcome;
    let code = headers.get(STATUS_HEADER).map(|value| value.as_str().to_owned()).unwrap_or_default();
    metrics::counter!("rpc_server_requests_total", "service" => context.grpc_service.clone(), "method" => method.clone(), "code" => code.clone()).increment(1);
    metrics::histogram!("rpc_server_duration_seconds", "service" => context.grpc_service.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = context.client.publish_with_headers(reply_to, headers, body).await {
        span.in_scope(|| tracing::warn!(%error, "cannot send the RPC reply"));
    }
}

fn incoming_request(
    grpc_service: &str,
    method: &str,
    headers: &NatsHeaders,
    payload: Bytes,
    timeout: Option<Duration>,
) -> Result<http::Request<Body>, Status> {
    if method.is_empty() || method.contains('.') {
        return Err(Status::unimplemented(format!("no method {method:?}")));
    }
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/{grpc_service}/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Body::new(http_body_util::Full::new(frame(&payload))))
        .map_err(|error| Status::invalid_argument(format!("malformed request: {error}")))?;
    for (name, values) in headers.iter() {
        let name = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        if name.starts_with("nats-") || name == "grpc-timeout" {
            continue;
        }
        let Ok(header_name) = http::HeaderName::try_from(name) else {
            continue;
        };
        for value in values {
            if let Ok(value) = http::HeaderValue::try_from(value.as_str()) {
                request.headers_mut().append(header_name.clone(), value);
            }
        }
    }
    if let Some(timeout) = timeout
        && let Ok(value) = http::HeaderValue::try_from(format_grpc_timeout(timeout))
    {
        request.headers_mut().insert("grpc-timeout", value);
    }
    Ok(request)
}

/// Reads a tonic response into reply headers and the bare response message.
async fn reply_from_response(response: http::Response<Body>) -> (NatsHeaders, Bytes) {
    let (parts, body) = response.into_parts();
    // A trailers-only response (the usual shape of an error) has its status in the headers.
    if parts.headers.contains_key("grpc-status") {
        return (grpc_headers_to_nats(&parts.headers), Bytes::new());
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(status) => return status_headers(&status),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let mut headers = grpc_headers_to_nats(&trailers);
    let message = match unframe(collected.to_bytes()) {
        Ok(message) => message,
        Err(status) => return status_headers(&status),
    };
    if headers.get(STATUS_HEADER).is_none() {
        headers.insert(STATUS_HEADER, "0");
    }
    (headers, message)
}

fn status_headers(status: &Status) -> (NatsHeaders, Bytes) {
    let mut http_headers = http::HeaderMap::new();
    if status.add_header(&mut http_headers).is_err() {
        http_headers.insert("grpc-status", http::HeaderValue::from(i32::from(tonic::Code::Internal)));
    }
    (grpc_headers_to_nats(&http_headers), Bytes::new())
}

fn grpc_headers_to_nats(http_headers: &http::HeaderMap) -> NatsHeaders {
    let mut headers = NatsHeaders::new();
    for (http_name, nats_name) in
        [("grpc-status", STATUS_HEADER), ("grpc-message", MESSAGE_HEADER), ("grpc-status-details-bin", DETAILS_HEADER)]
    {
        if let Some(value) = http_headers.get(http_name).and_then(|value| value.to_str().ok()) {
            headers.insert(nats_name, value);
        }
    }
    headers
}

/// A tonic client channel that sends each call as a NATS request: `UnitsClient::new(channel)` works unchanged.
///
/// Transport failures come back as statuses, never as channel errors, so callers see exact codes: no instance
/// answering or no NATS connection is `UNAVAILABLE`, no reply within the deadline is `DEADLINE_EXCEEDED`.
#[derive(Debug, Clone)]
pub struct NatsChannel {
    client: Client,
    subject_prefix: Arc<str>,
    default_timeout: Duration,
}

impl NatsChannel {
    /// `subject_prefix` names the callee's subject tree; `default_timeout` applies to calls that set no deadline.
    pub fn new(client: Client, subject_prefix: impl Into<String>, default_timeout: Duration) -> Self {
        Self { client, subject_prefix: subject_prefix.into().into(), default_timeout }
    }

    async fn round_trip(self, request: http::Request<Body>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let method = parts.uri.path().rsplit('/').next().unwrap_or_default();
        let subject = format!("{}.{method}", self.subject_prefix);
        let timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(self.default_timeout);
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return status_response(&Status::unavailable("nats is unavailable: not connected"));
        }
        let payload = match body.collect().await.map(|collected| unframe(collected.to_bytes())) {
            Ok(Ok(payload)) => payload,
            Ok(Err(status)) | Err(status) => return status_response(&status),
        };
        let mut headers = NatsHeaders::new();
        for (name, value) in &parts.headers {
            if TRANSPORT_HEADERS.contains(&name.as_str()) {
                continue;
            }
            if let Ok(value) = value.to_str() {
                headers.append(name.as_str(), value);
            }
        }
        headers.insert(TIMEOUT_HEADER, format_grpc_timeout(timeout).as_str());
        if headers.get(TRACEPARENT).is_none() {
            let context = TraceContext::current().map(|context| context.child()).unwrap_or_else(TraceContext::new_root);
            headers.insert(TRACEPARENT, context.to_header().as_str());
        }
        let request = async_nats::Request::new().payload(payload).headers(headers).timeout(Some(timeout));
        match self.client.send_request(subject.clone(), request).await {
            Ok(reply) => response_from_reply(reply),
            Err(error) => match error.kind() {
                RequestErrorKind::NoResponders => {
                    status_response(&Status::unavailable(format!("no instance is answering on {subject}")))
                }
                RequestErrorKind::TimedOut => status_response(&Status::deadline_exceeded(format!(
                    "no reply on {subject} within {} ms",
                    timeout.as_millis()
                ))),
                RequestErrorKind::MaxPayloadExceeded => status_response(&Status::invalid_argument(format!(
                    "the request is larger than the NATS server accepts: {error}"
                ))),
                RequestErrorKind::InvalidSubject => {
                    status_response(&Status::invalid_argument(format!("no valid subject for this method: {subject}")))
                }
                RequestErrorKind::Other => {
                    status_response(&Status::unavailable(format!("nats is unavailable: {error}")))
                }
            },
        }
    }
}

impl Service<http::Request<Body>> for NatsChannel {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.clone();
        Box::pin(async move { Ok(channel.round_trip(request).await) })
    }
}

fn response_from_reply(reply: Message) -> http::Response<Body> {
    let mut grpc_headers = http::HeaderMap::new();
    if let Some(headers) = &reply.headers {
        for (nats_name, http_name) in [
            (STATUS_HEADER, "grpc-status"),
            (MESSAGE_HEADER, "grpc-message"),
            (DETAILS_HEADER, "grpc-status-details-bin"),
        ] {
            if let Some(value) =
                headers.get(nats_name).and_then(|value| http::HeaderValue::try_from(value.as_str()).ok())
            {
                grpc_headers.insert(http_name, value);
            }
        }
    }
    let ok = grpc_headers.get("grpc-status").is_some_and(|value| value == "0");
    if !ok {
        if !grpc_headers.contains_key("grpc-status") {
            return status_response(&Status::internal("the RPC reply carried no status"));
        }
        return trailers_only(grpc_headers);
    }
    let frames = [Ok::<_, Infallible>(Frame::data(frame(&reply.payload))), Ok(Frame::trailers(grpc_headers))];
    let mut response = http::Response::new(Body::new(StreamBody::new(futures::stream::iter(frames))));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

fn status_response(status: &Status) -> http::Response<Body> {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", http::HeaderValue::from(i32::from(tonic::Code::Internal)));
    }
    trailers_only(headers)
}

fn trailers_only(grpc_headers: http::HeaderMap) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    *response.headers_mut() = grpc_headers;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// Wraps a message in gRPC's length-prefixed framing (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.extend_from_slice(message);
    framed.freeze()
}

/// Takes the one message out of a unary call's framed body.
fn unframe(mut body: Bytes) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::internal("a gRPC body shorter than its frame header"));
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented("compressed messages are not carried over NATS"));
    }
    if body.len() != length {
        return Err(Status::internal("a unary gRPC body that is not exactly one message"));
    }
    Ok(body)
}

/// Parses gRPC's `grpc-timeout` (`<digits><unit>`, units H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as `grpc-timeout`, in whole milliseconds (at least 1).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    format!("{}m", timeout.as_millis().clamp(1, 99_999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn framing_round_trips_and_rejects_short_bodies() {
        let framed = frame(b"hello");
        assert_eq!(unframe(framed).expect("one message"), Bytes::from_static(b"hello"));
        assert!(unframe(Bytes::from_static(b"\0\0")).is_err());
        assert!(unframe(Bytes::from_static(b"\0\0\0\0\x09abc")).is_err());
    }
}
