//! W3C trace context (`traceparent`) carried from the gateway through every NATS and gRPC hop.
//!
//! The servers in this crate read the incoming `traceparent` (or start a new trace), open a span with `trace_id`
//! and `request_id`, and run the handler inside [`TraceContext::scope`]; the NATS RPC client reads
//! [`TraceContext::current`] and sends it on. So service code never handles trace headers itself.

/// The header (and NATS header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// One hop of a trace: the trace id shared by every hop and the id of the span that made this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// A new trace with random ids.
    pub fn new_root() -> Self {
        Self { trace_id: rand::random(), parent_id: rand::random() }
    }

    /// The same trace, as seen by a new span of it.
    pub fn child(&self) -> Self {
        Self { trace_id: self.trace_id, parent_id: rand::random() }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else (or all-zero ids, which the spec forbids) is `None`.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let _flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace_id.len() != 32 || parent_id.len() != 16 {
            return None;
        }
        let context = Self { trace_id: decode_hex(trace_id)?, parent_id: decode_hex(parent_id)? };
        if context.trace_id == [0; 16] || context.parent_id == [0; 8] {
            return None;
        }
        Some(context)
    }

    /// The `traceparent` header value (sampled flag set).
    pub fn to_header(&self) -> String {
        format!("00-{}-{}-01", crate::convert::hex(&self.trace_id), crate::convert::hex(&self.parent_id))
    }

    /// The trace id as 32 hex characters, as logged.
    pub fn trace_id_hex(&self) -> String {
        crate::convert::hex(&self.trace_id)
    }

    /// The context of the task, if it runs inside [`TraceContext::scope`].
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|context| *context).ok()
    }

    /// Runs `future` with this context as the current one.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

/// The context from an incoming header, or a new trace when the header is missing or malformed.
pub fn continue_or_start(header: Option<&str>) -> TraceContext {
    header.and_then(TraceContext::parse).map(|parent| parent.child()).unwrap_or_else(TraceContext::new_root)
}

/// A short random id for one request, logged on every line written while handling it.
pub fn new_request_id() -> String {
    crate::convert::hex(&rand::random::<[u8; 8]>())
}

/// A tower layer for HTTP and gRPC servers: continues the caller's trace (or starts one), opens a span with
/// `trace_id` and `request_id`, and makes the context current for the handler, so outgoing calls carry it on.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let header = request.headers().get(TRACEPARENT).and_then(|value| value.to_str().ok());
        let context = continue_or_start(header);
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            trace_id = %context.trace_id_hex(),
            request_id = %new_request_id(),
        );
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(tracing::Instrument::instrument(context.scope(future), span))
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (index, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let context = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&context.to_header()), Some(context));
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in ["", "00-abc-def-01", "00-00000000000000000000000000000000-0000000000000001-01", "zz"] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_id() {
        let parent = TraceContext::new_root();
        let child = continue_or_start(Some(&parent.to_header()));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.parent_id, parent.parent_id);
    }
}
