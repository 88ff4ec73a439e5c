//! The agencies' port (50443): the public `pension.agency.v1.AgencyApi` over mutual TLS, with health and reflection
//! of that package alone.
//!
//! The TLS handshake asks for a client certificate and checks that the client holds its key, but takes any
//! certificate, or none: identity then decides (`AuthenticateApiClient`) whether it chains to the platform's or a
//! configured agency CA, is valid, unrevoked and registered to an active client. So a refused certificate gets a
//! gRPC status that says why (`UNAUTHENTICATED`, reason `certificate_expired`, …) instead of a bare TLS alert. No
//! call is served before that answer: each method admits the caller (certificate, scope, rate limit in Redis),
//! does its work through the services over NATS within the caller's deadline, and audits the outcome in identity
//! before answering. Identity's answers are cached per certificate for `agency_auth_cache`; the revoked client
//! certificates of the trust bundle (by SHA-256) are checked on every call, so a revocation takes effect within one
//! trust refresh.
//!
//! The event stream reads one JetStream stream that sources the services' event streams: an event's sequence there
//! is its cursor, the same for every reader and every resume, so a resumed stream neither skips nor repeats.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine as _;
use futures::{Stream, StreamExt as _};
use kit::grpc::GrpcServer;
use kit::redis::Redis;
use kit::service::Platform;
use prost::Message as _;
use proto::agency::agency_api_server::{AgencyApi, AgencyApiServer};
use proto::agency::{
    Declaration, DeclarationChanged, DeclarationKind, DeclarationState, EnrollmentState, Event, EventType,
    GetPersonEnrollmentRequest, KeyIssued, ListUnitsRequest, ListUnitsResponse, PersonEnrollment, PersonKind,
    PersonRegistered, PersonRegistrationEnded, RegistryEntry, RetireRegistryEntryRequest, StreamEventsRequest, Unit,
    UnitState, UpsertRegistryEntryRequest, event,
};
use proto::common::Caller;
use proto::identity::identity_client::IdentityClient;
use proto::identity::{AuthenticateApiClientRequest, AuthenticatedApiClient, RecordApiCallRequest};
use proto::names::{Namespace, Service};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetail, ErrorInfo, RetryInfo, StatusExt as _};

use crate::trust::{ServerIdentity, Trust};

/// The most units one page of ListUnits may hold.
pub const MAX_PAGE_SIZE: u32 = 500;
const DEFAULT_PAGE_SIZE: u32 = 100;
/// How long a call may take when its caller set no deadline, and at most.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a refused certificate's answer is kept, so that a client retrying in a loop does not load identity.
const REFUSAL_CACHE: Duration = Duration::from_secs(5);
/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The four scopes, as identity grants them.
pub const PERSONS_READ: &str = "persons:read";
pub const UNITS_READ: &str = "units:read";
pub const EVENTS_READ: &str = "events:read";
pub const REGISTRY_WRITE: &str = "registry:write";

/// What each method needs.
pub const METHOD_SCOPES: [(&str, &str); 6] = [
    ("GetPersonEnrollment", PERSONS_READ),
    ("ListUnits", UNITS_READ),
    ("GetEnrollmentProgress", UNITS_READ),
    ("StreamEvents", EVENTS_READ),
    ("UpsertRegistryEntry", REGISTRY_WRITE),
    ("RetireRegistryEntry", REGISTRY_WRITE),
];

/// The connection a call came on: the client certificate of the handshake (DER) and the address.
#[derive(Debug, Clone)]
pub struct AgencyPeer {
    pub certificate: Option<Arc<Vec<u8>>>,
    pub remote: SocketAddr,
}

/// A TLS connection on the agencies' port, carrying what its handshake established to every call.
struct AgencyConnection {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: AgencyPeer,
}

impl Connected for AgencyConnection {
    type ConnectInfo = AgencyPeer;

    fn connect_info(&self) -> AgencyPeer {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for AgencyConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for AgencyConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Asks every client for its certificate and checks its signature over the handshake (so the client holds the
/// key), but leaves the certificate's trust to identity, per call: a refusal then reaches the client as a status
/// with a reason rather than a TLS alert.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client then sends the certificate it has, and hears why it is refused.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS configuration of the agencies' port: the gateway's certificate, HTTP/2 only (gRPC).
pub fn server_config(server: &ServerIdentity) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyClientCertificate { algorithms: provider.signature_verification_algorithms });
    let (chain, key) = server.parts();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| anyhow::anyhow!("TLS versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| anyhow::anyhow!("the agency port's TLS certificate and key do not match: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Identity's answer for a certificate (by its SHA-256), and when it was given.
type CachedAnswer = (Instant, Result<AuthenticatedApiClient, Status>);

/// What the agency API's calls share.
#[derive(Debug, Clone)]
pub struct AgencyService {
    pub platform: Platform,
    pub redis: Redis,
    pub trust: Trust,
    /// How long identity's answer for a certificate is reused.
    pub auth_cache: Duration,
    /// How long an event stream may stay silent before a heartbeat carries its cursor.
    pub heartbeat: Duration,
    /// Ends the open event streams when the gateway stops, so the graceful shutdown is not held up by them.
    pub shutdown: CancellationToken,
    authenticated: Arc<Mutex<HashMap<Vec<u8>, CachedAnswer>>>,
}

/// The agencies' port, bound.
#[derive(Debug)]
pub struct AgencyPort {
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    service: AgencyService,
}

impl AgencyPort {
    pub fn new(
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        platform: Platform,
        redis: Redis,
        trust: Trust,
        (auth_cache, heartbeat): (Duration, Duration),
    ) -> Self {
        let service = AgencyService {
            platform,
            redis,
            trust,
            auth_cache,
            heartbeat,
            shutdown: CancellationToken::new(),
            authenticated: Arc::default(),
        };
        Self { listener, tls, service }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|addr| addr.port()).unwrap_or_default()
    }

    /// Serves until `shutdown`, handshaking each connection on its own task so a slow client holds up nobody.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        ensure_feed(&self.service.platform).await;
        let streams = self.service.shutdown.clone();
        let ending = shutdown.clone();
        tokio::spawn(async move {
            ending.cancelled().await;
            streams.cancel();
        });
        let (connections, incoming) = tokio::sync::mpsc::channel::<Result<AgencyConnection, std::io::Error>>(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls);
        let listener = self.listener;
        let accept_shutdown = shutdown.clone();
        let accepting = async move {
            loop {
                let accepted = tokio::select! {
                    () = accept_shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection on the agency port");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, connections) = (acceptor.clone(), connections.clone());
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::info!(%error, %remote, "TLS handshake refused on the agency port");
                            return;
                        }
                        Err(_) => return,
                    };
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| Arc::new(c.to_vec()));
                    let _ =
                        connections.send(Ok(AgencyConnection { tls, peer: AgencyPeer { certificate, remote } })).await;
                });
            }
        };
        let server = GrpcServer {
            routes: tonic::service::Routes::new(AgencyApiServer::new(self.service)),
            service_names: vec![proto::agency::agency_api_server::SERVICE_NAME.to_owned()],
            descriptor_sets: vec![proto::AGENCY_FILE_DESCRIPTOR_SET],
        };
        let serving = server.serve_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming), shutdown);
        let ((), served) = tokio::join!(accepting, serving);
        served.map_err(|error| anyhow::anyhow!("agency gRPC server: {error}"))
    }
}

/// Creates the feed stream (and the streams it sources, so their order of creation does not matter).
async fn ensure_feed(platform: &Platform) {
    let namespace = &platform.namespace;
    let jetstream = jetstream::new(platform.nats.clone());
    let mut sources = Vec::new();
    for service in ["identity", "units", "personnel"] {
        let name = namespace.events_stream(service);
        if let Err(error) = kit::nats::ensure_stream(&jetstream, &name, &namespace.events_filter(service)).await {
            tracing::warn!(%error, stream = name, "cannot create an event stream for the agency feed");
        }
        let filter = if service == "identity" {
            namespace.event_subject("identity", "certificate_issued")
        } else {
            namespace.events_filter(service)
        };
        sources.push(jetstream::stream::Source { name, filter_subject: Some(filter), ..Default::default() });
    }
    let config = jetstream::stream::Config {
        name: namespace.agency_feed_stream(),
        sources: Some(sources),
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    if let Err(error) = jetstream.get_or_create_stream(config).await {
        tracing::warn!(%error, "cannot create the agency feed stream; StreamEvents answers UNAVAILABLE until it exists");
    }
}

/// A caller that passed the door: who, and by when the call must be answered.
struct Admitted {
    caller: Caller,
    deadline: Duration,
}

/// The refusals and failures a caller can act on, as statuses with a stable reason.
fn refusal(code: Code, reason: &str, message: impl Into<String>) -> Status {
    kit::status::refuse(code, reason, message)
}

fn unavailable(what: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %what, "agency API: a platform dependency failed");
    refusal(Code::Unavailable, "unavailable", "平台暂时无法应答，请稍后重试")
}

fn outcome_of(result: Result<(), &Status>) -> &'static str {
    match result {
        Ok(()) => "success",
        Err(status) => match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::AlreadyExists => "refused",
            _ => "failed",
        },
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

impl AgencyService {
    fn identity(&self) -> IdentityClient<kit::rpc::NatsChannel> {
        IdentityClient::new(self.platform.channel(Service::Identity))
    }

    /// Identity's answer for a certificate, from the cache while fresh.
    async fn authenticate(&self, certificate: Option<&Arc<Vec<u8>>>) -> Result<AuthenticatedApiClient, Status> {
        let Some(certificate) = certificate else {
            return Err(refusal(
                Code::Unauthenticated,
                "certificate_missing",
                "未出示客户端证书：请以本平台为贵单位签发的证书进行双向 TLS 连接",
            ));
        };
        let fingerprint = Sha256::digest(certificate.as_slice()).to_vec();
        let cached = self.authenticated.lock().ok().and_then(|cache| cache.get(&fingerprint).cloned());
        let outcome = match cached {
            Some((at, outcome)) if at.elapsed() < if outcome.is_ok() { self.auth_cache } else { REFUSAL_CACHE } => {
                outcome
            }
            _ => {
                let request = AuthenticateApiClientRequest { certificate_der: certificate.to_vec() };
                let outcome = match self.identity().authenticate_api_client(request).await {
                    Ok(reply) => Ok(reply.into_inner()),
                    Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                        Err(status)
                    }
                    // Not the client's fault: not cached, and said plainly.
                    Err(status) => return Err(unavailable(status.message())),
                };
                if let Ok(mut cache) = self.authenticated.lock() {
                    // A bound on what floods of different certificates can make the cache hold.
                    if cache.len() > 10_000 {
                        cache.clear();
                    }
                    cache.insert(fingerprint.clone(), (Instant::now(), outcome.clone()));
                }
                outcome
            }
        };
        let client = outcome?;
        if self.trust.is_fingerprint_revoked(&fingerprint) {
            return Err(refusal(
                Code::Unauthenticated,
                "certificate_revoked",
                "客户端证书已吊销，请联系省级管理员重新签发",
            ));
        }
        let expired = client
            .not_after
            .as_ref()
            .is_some_and(|not_after| not_after.seconds < time::OffsetDateTime::now_utc().unix_timestamp());
        if expired {
            return Err(refusal(
                Code::Unauthenticated,
                "certificate_expired",
                "客户端证书已过期或尚未生效，请联系省级管理员更换",
            ));
        }
        Ok(client)
    }

    /// Counts one call of the client in this minute; refuses it past the client's rate, saying when to retry.
    async fn rate_limit(&self, client: &AuthenticatedApiClient) -> Result<(), Status> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let key = self.redis.key(&format!("ratelimit:agency:{}:{}", client.client_id, now / 60));
        let mut connection = self.redis.connection.clone();
        let counted: Result<(u32, i32), redis::RedisError> =
            redis::pipe().atomic().incr(&key, 1u32).expire(&key, 120).query_async(&mut connection).await;
        match counted {
            Ok((count, _)) if count > client.calls_per_minute.max(1) => {
                let retry_after = Duration::from_secs(u64::try_from(60 - now % 60).unwrap_or(60));
                Err(Status::with_error_details_vec(
                    Code::ResourceExhausted,
                    format!(
                        "调用过于频繁：此客户端每分钟至多 {} 次，请 {} 秒后重试",
                        client.calls_per_minute,
                        retry_after.as_secs()
                    ),
                    vec![
                        ErrorDetail::ErrorInfo(ErrorInfo::new("rate_limited", "pension", [])),
                        ErrorDetail::RetryInfo(RetryInfo::new(Some(retry_after))),
                    ],
                ))
            }
            Ok(_) => Ok(()),
            Err(error) => {
                // Losing Redis must not stop the agencies' work; it is logged and shows on the Redis readiness.
                tracing::warn!(%error, "redis unavailable: agency rate limit not enforced");
                Ok(())
            }
        }
    }

    /// Admits a call: certificate, scope, rate. The caller to audit is returned either way.
    async fn admit<T>(&self, request: &Request<T>, scope: &str, method: &str) -> (Caller, Result<Admitted, Status>) {
        let peer = request.extensions().get::<AgencyPeer>().cloned();
        let deadline = deadline_of(request.metadata());
        let mut caller = Caller {
            actor: "unknown".into(),
            role: "api_client".into(),
            remote_address: peer.as_ref().map(|peer| peer.remote.ip().to_string()).unwrap_or_default(),
            ..Caller::default()
        };
        let client = match self.authenticate(peer.as_ref().and_then(|peer| peer.certificate.as_ref())).await {
            Ok(client) => client,
            Err(status) => return (caller, Err(status)),
        };
        caller.actor = client.client_id.clone();
        caller.certificate_serial = client.serial.clone();
        caller.scopes = client.scopes.clone();
        if !client.scopes.iter().any(|granted| granted == scope) {
            let status = refusal(
                Code::PermissionDenied,
                "scope_missing",
                format!("此接口客户端未被授予 {scope} 权限，不能调用 {method}；请联系省级管理员授权"),
            );
            return (caller, Err(status));
        }
        if let Err(status) = self.rate_limit(&client).await {
            return (caller, Err(status));
        }
        let admitted = Admitted { caller: caller.clone(), deadline };
        (caller, Ok(admitted))
    }

    /// Audits a call's outcome in identity. An audit that cannot be written fails the call: no unaudited answer.
    async fn audit(
        &self,
        caller: Caller,
        method: &str,
        result: Result<(), &Status>,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        let (code, reason) = match result {
            Ok(()) => ("OK".to_owned(), String::new()),
            Err(status) => (code_name(status.code()), kit::status::reason(status).unwrap_or_default()),
        };
        let request = RecordApiCallRequest {
            caller: Some(caller),
            method: format!("/{}/{method}", proto::agency::agency_api_server::SERVICE_NAME),
            outcome: outcome_of(result).to_owned(),
            code,
            reason,
            detail_json: detail.to_string(),
        };
        self.identity().record_api_call(request).await.map(|_| ()).map_err(|status| {
            tracing::error!(error = status.message(), method, "cannot audit an agency API call: refusing it");
            refusal(Code::Unavailable, "audit_unavailable", "审计日志暂不可写，本次调用未完成，请稍后重试")
        })
    }

    /// One unary call: admit, work within the deadline, audit, answer.
    async fn unary<T, R, F, Fut>(
        &self,
        request: Request<T>,
        method: &str,
        detail: serde_json::Value,
        work: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Admitted, T) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let scope = scope_of(method);
        let (caller, admitted) = self.admit(&request, scope, method).await;
        let result = match admitted {
            Ok(admitted) => within(admitted.deadline, work(admitted, request.into_inner())).await,
            Err(status) => Err(status),
        };
        self.audit(caller, method, result.as_ref().map(|_| ()), detail).await?;
        result.map(Response::new)
    }
}

/// The time a call has: the caller's `grpc-timeout`, at most [`DEFAULT_DEADLINE`], which also applies when the
/// caller set none.
fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(kit::rpc::parse_grpc_timeout)
        .unwrap_or(DEFAULT_DEADLINE)
        .min(DEFAULT_DEADLINE)
}

/// The work's answer, or DEADLINE_EXCEEDED once `deadline` has passed (the work is dropped then: its NATS calls
/// carry the same deadline and give up too).
async fn within<R>(
    deadline: Duration,
    work: impl std::future::Future<Output = Result<R, Status>>,
) -> Result<R, Status> {
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(refusal(Code::DeadlineExceeded, "deadline_exceeded", "调用超过了截止时间")),
    }
}

fn scope_of(method: &str) -> &'static str {
    METHOD_SCOPES.iter().find(|(name, _)| *name == method).map(|(_, scope)| *scope).unwrap_or("none")
}

/// An outgoing request to a service, carrying the caller's remaining deadline.
fn outgoing<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// The dashboards' figures in the public package's terms.
fn public_progress(progress: proto::units::EnrollmentProgress) -> proto::agency::EnrollmentProgress {
    use proto::agency::UnitProgressState;
    let state = |state: &str| match state {
        "not_applied" => UnitProgressState::NotApplied,
        "key_applied" => UnitProgressState::KeyApplied,
        "key_made" => UnitProgressState::KeyMade,
        "activated" => UnitProgressState::Activated,
        "record_filled" => UnitProgressState::RecordFilled,
        "declared" => UnitProgressState::Declared,
        "under_review" => UnitProgressState::UnderReview,
        "rejected" => UnitProgressState::Rejected,
        "approved" => UnitProgressState::Approved,
        _ => UnitProgressState::Unspecified,
    };
    let people = |count: proto::units::PeopleCount| proto::agency::PeopleCount {
        start: count.start,
        staff: count.staff,
        retiree_pre_reform: count.retiree_pre_reform,
        retiree_post_reform: count.retiree_post_reform,
        deleted: count.deleted,
    };
    proto::agency::EnrollmentProgress {
        as_of: progress.as_of,
        unit_states: progress
            .unit_states
            .into_iter()
            .map(|row| proto::agency::UnitStateCount {
                state: state(&row.state).into(),
                region_code: row.region_code,
                agency_code: row.agency_code,
                units: row.units,
            })
            .collect(),
        people_by_day: progress.people_by_day.into_iter().map(people).collect(),
        people_by_hour: progress.people_by_hour.into_iter().map(people).collect(),
        review_queue: progress
            .queue
            .into_iter()
            .map(|queue| proto::agency::AgencyQueue {
                agency_code: queue.agency_code,
                declared: queue.declared,
                under_review: queue.under_review,
                oldest_declared_at: queue.oldest_declared_at,
                approved: queue.approved,
                rejected: queue.rejected,
            })
            .collect(),
        rejection_reasons: progress
            .rejection_reasons
            .into_iter()
            .map(|reason| proto::agency::RejectionReason { reason: reason.reason, declarations: reason.declarations })
            .collect(),
    }
}

/// A service's refusal passes through; anything else is the platform's trouble, said without its details.
fn from_service(status: Status) -> Status {
    match status.code() {
        Code::Internal | Code::Unknown | Code::DataLoss => unavailable(status.message()),
        _ => status,
    }
}

fn masked_id_number(raw: &str) -> String {
    match validators::IdNumber::parse(raw.trim(), time::OffsetDateTime::now_utc().date()) {
        Ok(number) => number.masked(),
        Err(_) => "(malformed)".to_owned(),
    }
}

fn person_kind(kind: &str) -> PersonKind {
    match kind {
        "staff" => PersonKind::Staff,
        "retiree_pre_reform" => PersonKind::RetireePreReform,
        "retiree_post_reform" => PersonKind::RetireePostReform,
        _ => PersonKind::Unspecified,
    }
}

fn unit_state(state: &str) -> UnitState {
    match state {
        "draft" => UnitState::Draft,
        "declaring" | "declared" | "under_review" => UnitState::Declared,
        "approved" => UnitState::Approved,
        _ => UnitState::Unspecified,
    }
}

fn declaration_state(state: &str) -> DeclarationState {
    match state {
        "declared" => DeclarationState::Declared,
        "claimed" => DeclarationState::UnderReview,
        "approved" => DeclarationState::Approved,
        "rejected" => DeclarationState::Rejected,
        "withdrawn" => DeclarationState::Withdrawn,
        _ => DeclarationState::Unspecified,
    }
}

fn declaration_kind(kind: &str) -> DeclarationKind {
    match kind {
        "change" => DeclarationKind::Change,
        "initial" | "" => DeclarationKind::Initial,
        _ => DeclarationKind::Unspecified,
    }
}

/// What a page token carries: where the next page starts, and a digest of the filters it belongs to.
#[derive(serde::Serialize, serde::Deserialize)]
struct PageToken {
    after: String,
    filter: String,
}

fn filter_digest(request: &ListUnitsRequest) -> String {
    let filter = format!("{}|{}|{}", request.region_code.trim(), request.agency_code.trim(), request.state);
    let digest = Sha256::digest(filter.as_bytes());
    digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

fn encode_token<T: serde::Serialize>(token: &T) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).unwrap_or_default())
}

fn decode_token<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn invalid(field: &str, reason: &str, message: impl Into<String>) -> Status {
    kit::status::invalid(vec![kit::status::Violation::new(field, reason, message)])
}

/// A cursor: the position of an event in the feed stream.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    v: u8,
    seq: u64,
}

pub fn encode_cursor(seq: u64) -> String {
    encode_token(&Cursor { v: 1, seq })
}

fn decode_cursor(cursor: &str) -> Result<u64, Status> {
    if cursor.trim().is_empty() {
        return Ok(0);
    }
    decode_token::<Cursor>(cursor).filter(|cursor| cursor.v == 1).map(|cursor| cursor.seq).ok_or_else(|| {
        invalid("cursor", "invalid_cursor", "cursor 无效：请原样传回上一次收到的事件的 cursor，或留空从头读取")
    })
}

fn heartbeat(position: u64) -> Event {
    Event { cursor: encode_cursor(position), r#type: EventType::Heartbeat.into(), ..Event::default() }
}

/// The public event of one feed message, or `None` for the internal events agencies do not see.
fn translate(namespace: &Namespace, subject: &str, payload: &[u8], position: u64) -> Option<Event> {
    let prefix = format!("{}.events.", namespace.as_str());
    let name = subject.strip_prefix(&prefix)?;
    let (meta, kind, payload) = match name {
        "identity.certificate_issued" => {
            let issued = proto::events::CertificateIssued::decode(payload).ok()?;
            // Staff accounts' certificates are the platform's business; agencies hear of units' keys.
            if issued.institution_code.is_empty() {
                return None;
            }
            let payload = event::Payload::KeyIssued(KeyIssued {
                institution_code: issued.institution_code,
                serial: issued.serial,
                not_after: issued.not_after,
            });
            (issued.meta, EventType::KeyIssued, payload)
        }
        "units.declaration.declared"
        | "units.declaration.withdrawn"
        | "units.declaration.approved"
        | "units.declaration.rejected" => {
            let changed = proto::events::DeclarationChanged::decode(payload).ok()?;
            let kind = match name {
                "units.declaration.declared" => EventType::UnitDeclared,
                "units.declaration.withdrawn" => EventType::UnitWithdrawn,
                "units.declaration.approved" => EventType::UnitApproved,
                _ => EventType::UnitRejected,
            };
            let payload = event::Payload::DeclarationChanged(DeclarationChanged {
                institution_code: changed.institution_code,
                unit_name: changed.unit_name,
                agency_code: changed.agency_code,
                declaration_id: changed.declaration_id,
                kind: declaration_kind(&changed.kind).into(),
                state: declaration_state(&changed.state).into(),
                unit_number: changed.unit_number,
                rejection_reason: if kind == EventType::UnitRejected { changed.reason } else { String::new() },
            });
            (changed.meta, kind, payload)
        }
        "personnel.person_enrolled" => {
            let enrolled = proto::events::PersonEnrolled::decode(payload).ok()?;
            let payload = event::Payload::PersonRegistered(PersonRegistered {
                institution_code: enrolled.institution_code,
                registration_id: enrolled.person_id,
                id_number_masked: enrolled.id_number_masked,
                kind: person_kind(&enrolled.kind).into(),
                declaration_id: enrolled.declaration_id,
            });
            (enrolled.meta, EventType::PersonRegistered, payload)
        }
        "personnel.person_registration_ended" => {
            let ended = proto::events::PersonRegistrationEnded::decode(payload).ok()?;
            let payload = event::Payload::PersonRegistrationEnded(PersonRegistrationEnded {
                institution_code: ended.institution_code,
                registration_id: ended.person_id,
                id_number_masked: ended.id_number_masked,
                reason: ended.reason,
            });
            (ended.meta, EventType::PersonRegistrationEnded, payload)
        }
        _ => return None,
    };
    let meta = meta.unwrap_or_default();
    Some(Event {
        cursor: encode_cursor(position),
        event_id: meta.event_id,
        occurred_at: meta.occurred_at,
        r#type: kind.into(),
        payload: Some(payload),
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

impl AgencyService {
    /// Reads the feed from after `after`, translating and filtering, into a stream that ends when the client goes.
    async fn open_feed(&self, after: u64, types: Vec<i32>, stop_at_end: bool) -> Result<EventStream, Status> {
        let namespace = self.platform.namespace.clone();
        let jetstream = jetstream::new(self.platform.nats.clone());
        let mut stream = jetstream.get_stream(namespace.agency_feed_stream()).await.map_err(unavailable)?;
        let last = stream.info().await.map_err(unavailable)?.state.last_sequence;
        let deliver_policy = if after == 0 {
            jetstream::consumer::DeliverPolicy::All
        } else {
            jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 }
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let (events, receiver) = tokio::sync::mpsc::channel::<Result<Event, Status>>(64);
        let heartbeat_every = self.heartbeat;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut position = after;
            if stop_at_end && last <= after {
                let _ = events.send(Ok(heartbeat(position))).await;
                return;
            }
            loop {
                let next = tokio::select! {
                    () = events.closed() => return,
                    () = shutdown.cancelled() => {
                        let status = refusal(
                            Code::Unavailable,
                            "shutting_down",
                            "平台正在重启：请稍后以收到的最后一个 cursor 续读",
                        );
                        let _ = events.send(Err(status)).await;
                        return;
                    }
                    next = tokio::time::timeout(heartbeat_every, messages.next()) => next,
                };
                let message = match next {
                    Err(_) => {
                        if events.send(Ok(heartbeat(position))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(error))) => {
                        let _ = events.send(Err(unavailable(error))).await;
                        return;
                    }
                    Ok(None) => {
                        let _ = events.send(Err(unavailable("the feed consumer ended"))).await;
                        return;
                    }
                };
                let Ok(info) = message.info() else { continue };
                position = info.stream_sequence;
                let translated = translate(&namespace, message.subject.as_str(), &message.payload, position);
                if let Some(event) = translated.filter(|event| types.is_empty() || types.contains(&event.r#type))
                    && events.send(Ok(event)).await.is_err()
                {
                    return;
                }
                if stop_at_end && position >= last {
                    let _ = events.send(Ok(heartbeat(position))).await;
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)))
    }
}

#[tonic::async_trait]
impl AgencyApi for AgencyService {
    async fn get_person_enrollment(
        &self,
        request: Request<GetPersonEnrollmentRequest>,
    ) -> Result<Response<PersonEnrollment>, Status> {
        let detail = serde_json::json!({ "id_number": masked_id_number(&request.get_ref().id_number),
            "name_given": !request.get_ref().name.trim().is_empty() });
        self.unary(request, "GetPersonEnrollment", detail, |admitted, request| async move {
            let mut personnel =
                proto::personnel::personnel_client::PersonnelClient::new(self.platform.channel(Service::Personnel));
            let ask = proto::personnel::GetEnrollmentRequest {
                caller: Some(admitted.caller),
                id_number: request.id_number,
                name: request.name,
            };
            let enrollment =
                personnel.get_enrollment(outgoing(ask, admitted.deadline)).await.map_err(from_service)?.into_inner();
            if !enrollment.enrolled {
                return Ok(PersonEnrollment {
                    id_number_masked: enrollment.id_number_masked,
                    state: EnrollmentState::NotEnrolled.into(),
                    ..PersonEnrollment::default()
                });
            }
            let state = match enrollment.state.as_str() {
                "approved" => EnrollmentState::Approved,
                "declared" => EnrollmentState::Declared,
                _ => EnrollmentState::Registered,
            };
            Ok(PersonEnrollment {
                id_number_masked: enrollment.id_number_masked,
                state: state.into(),
                unit: Some(Unit {
                    institution_code: enrollment.institution_code,
                    unit_name: enrollment.unit_name,
                    agency_code: enrollment.agency_code,
                    ..Unit::default()
                }),
                kind: person_kind(&enrollment.kind).into(),
                registered_at: enrollment.registered_at,
                approved_at: enrollment.approved_at,
                name_matches: enrollment.name_matches,
            })
        })
        .await
    }

    async fn list_units(&self, request: Request<ListUnitsRequest>) -> Result<Response<ListUnitsResponse>, Status> {
        let body = request.get_ref();
        let detail = serde_json::json!({ "region_code": body.region_code, "agency_code": body.agency_code,
            "state": body.state, "page_size": body.page_size, "page": !body.page_token.is_empty() });
        self.unary(request, "ListUnits", detail, |admitted, request| async move {
            let page_size = match request.page_size {
                0 => DEFAULT_PAGE_SIZE,
                size if size <= MAX_PAGE_SIZE => size,
                size => {
                    return Err(invalid(
                        "page_size",
                        "page_size_too_large",
                        format!("page_size 为 {size}，每页至多 {MAX_PAGE_SIZE} 个单位"),
                    ));
                }
            };
            let filter = filter_digest(&request);
            let after = if request.page_token.is_empty() {
                String::new()
            } else {
                match decode_token::<PageToken>(&request.page_token) {
                    Some(token) if token.filter == filter => token.after,
                    Some(_) => {
                        return Err(invalid(
                            "page_token",
                            "invalid_page_token",
                            "page_token 属于另一组查询条件：翻页时请保持 region_code、agency_code、state 不变",
                        ));
                    }
                    None => {
                        return Err(invalid(
                            "page_token",
                            "invalid_page_token",
                            "page_token 无效：请原样传回上一页的 next_page_token",
                        ));
                    }
                }
            };
            let state = match UnitState::try_from(request.state) {
                Ok(UnitState::Unspecified) => "",
                Ok(UnitState::Draft) => "draft",
                Ok(UnitState::Declared) => "declared",
                Ok(UnitState::Approved) => "approved",
                Err(_) => return Err(invalid("state", "invalid_state", "state 不是已定义的单位状态")),
            };
            let mut units = proto::units::units_client::UnitsClient::new(self.platform.channel(Service::Units));
            let ask = proto::units::ListUnitsRequest {
                caller: Some(admitted.caller),
                region_prefix: request.region_code.trim().to_owned(),
                agency_code: request.agency_code.trim().to_owned(),
                state: state.to_owned(),
                // One more than the page, to know whether another page follows.
                limit: page_size + 1,
                after_institution_code: after,
            };
            let mut found =
                units.list_units(outgoing(ask, admitted.deadline)).await.map_err(from_service)?.into_inner().units;
            let more = found.len() > page_size as usize;
            found.truncate(page_size as usize);
            let next_page_token = match (more, found.last()) {
                (true, Some(last)) => encode_token(&PageToken { after: last.institution_code.clone(), filter }),
                _ => String::new(),
            };
            let units = found
                .into_iter()
                .map(|unit| {
                    let latest_declaration = (!unit.latest_declaration_id.is_empty()).then(|| Declaration {
                        declaration_id: unit.latest_declaration_id,
                        kind: declaration_kind(&unit.latest_kind).into(),
                        state: declaration_state(&unit.latest_state).into(),
                        declared_at: unit.latest_declared_at,
                        decided_at: unit.latest_decided_at,
                        rejection_reason: if unit.latest_state == "rejected" {
                            unit.latest_reason
                        } else {
                            String::new()
                        },
                        person_count: unit.latest_person_count,
                    });
                    Unit {
                        institution_code: unit.institution_code,
                        unit_name: unit.unit_name,
                        credit_code: unit.credit_code,
                        region_code: unit.region_code,
                        agency_code: unit.agency_code,
                        unit_number: unit.unit_number,
                        state: unit_state(&unit.state).into(),
                        latest_declaration,
                    }
                })
                .collect();
            Ok(ListUnitsResponse { units, next_page_token })
        })
        .await
    }

    async fn get_enrollment_progress(
        &self,
        request: Request<proto::agency::GetEnrollmentProgressRequest>,
    ) -> Result<Response<proto::agency::EnrollmentProgress>, Status> {
        let body = request.get_ref();
        let detail = serde_json::json!({ "agency_code": body.agency_code, "region_code": body.region_code });
        self.unary(request, "GetEnrollmentProgress", detail, |admitted, request| async move {
            let mut units = proto::units::units_client::UnitsClient::new(self.platform.channel(Service::Units));
            let ask = proto::units::GetEnrollmentProgressRequest {
                caller: Some(admitted.caller),
                agency_code: request.agency_code,
                region_code: request.region_code,
            };
            let progress = units
                .get_enrollment_progress(outgoing(ask, admitted.deadline))
                .await
                .map_err(from_service)?
                .into_inner();
            Ok(public_progress(progress))
        })
        .await
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let body = request.get_ref();
        let from = decode_cursor(&body.cursor).unwrap_or_default();
        let detail = serde_json::json!({ "after": from, "types": body.types, "stop_at_end": body.stop_at_end });
        self.unary(request, "StreamEvents", detail, |_admitted, request| async move {
            let after = decode_cursor(&request.cursor)?;
            if let Some(unknown) = request.types.iter().find(|kind| EventType::try_from(**kind).is_err()) {
                return Err(invalid(
                    "types",
                    "invalid_event_type",
                    format!("types 中的 {unknown} 不是已定义的事件类型"),
                ));
            }
            self.open_feed(after, request.types, request.stop_at_end).await
        })
        .await
    }

    async fn upsert_registry_entry(
        &self,
        request: Request<UpsertRegistryEntryRequest>,
    ) -> Result<Response<RegistryEntry>, Status> {
        let code = request.get_ref().entry.as_ref().map(|entry| entry.institution_code.clone()).unwrap_or_default();
        let detail = serde_json::json!({ "institution_code": code });
        self.unary(request, "UpsertRegistryEntry", detail, |admitted, request| async move {
            let entry = request.entry.unwrap_or_default();
            let ask = proto::identity::UpsertRegistryEntryRequest {
                caller: Some(admitted.caller),
                entry: Some(proto::identity::RegistryEntry {
                    institution_code: entry.institution_code,
                    unit_name: entry.unit_name,
                    credit_code: entry.credit_code,
                    unit_type: entry.unit_type,
                    region_code: entry.region_code,
                    agency_code: entry.agency_code,
                    administrative_posts: entry.administrative_posts,
                    institutional_posts: entry.institutional_posts,
                    logistics_posts: entry.logistics_posts,
                    ..Default::default()
                }),
            };
            let saved =
                self.identity().upsert_registry_entry(outgoing(ask, admitted.deadline)).await.map_err(from_service)?;
            Ok(public_entry(saved.into_inner()))
        })
        .await
    }

    async fn retire_registry_entry(
        &self,
        request: Request<RetireRegistryEntryRequest>,
    ) -> Result<Response<RegistryEntry>, Status> {
        let detail = serde_json::json!({ "institution_code": request.get_ref().institution_code,
            "reason": request.get_ref().reason });
        self.unary(request, "RetireRegistryEntry", detail, |admitted, request| async move {
            let ask = proto::identity::RetireRegistryEntryRequest {
                caller: Some(admitted.caller),
                institution_code: request.institution_code,
                reason: request.reason,
            };
            let retired =
                self.identity().retire_registry_entry(outgoing(ask, admitted.deadline)).await.map_err(from_service)?;
            Ok(public_entry(retired.into_inner()))
        })
        .await
    }
}

fn public_entry(entry: proto::identity::RegistryEntry) -> RegistryEntry {
    RegistryEntry {
        institution_code: entry.institution_code,
        unit_name: entry.unit_name,
        credit_code: entry.credit_code,
        unit_type: entry.unit_type,
        region_code: entry.region_code,
        agency_code: entry.agency_code,
        administrative_posts: entry.administrative_posts,
        institutional_posts: entry.institutional_posts,
        logistics_posts: entry.logistics_posts,
        retired_at: entry.retired_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(timeout: Option<&'static str>) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(timeout) = timeout {
            metadata.insert("grpc-timeout", tonic::metadata::MetadataValue::from_static(timeout));
        }
        metadata
    }

    #[test]
    fn a_call_has_the_deadline_its_caller_set_and_at_most_ten_seconds() {
        assert_eq!(deadline_of(&metadata(Some("250m"))), Duration::from_millis(250));
        assert_eq!(deadline_of(&metadata(Some("3S"))), Duration::from_secs(3));
        assert_eq!(deadline_of(&metadata(Some("1M"))), DEFAULT_DEADLINE);
        assert_eq!(deadline_of(&metadata(None)), DEFAULT_DEADLINE);
        assert_eq!(deadline_of(&metadata(Some("soon"))), DEFAULT_DEADLINE);
    }

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert_eq!(decode_cursor("").ok(), Some(0));
        let refused = decode_cursor("eyJ2Ijo5LCJzZXEiOjF9").expect_err("a cursor of another version");
        assert_eq!(kit::status::reason(&refused).as_deref(), Some("invalid_cursor"));
        assert!(decode_cursor("%%%").is_err());
    }

    #[tokio::test]
    async fn work_past_its_deadline_is_deadline_exceeded() {
        let work = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), Status>(())
        };
        let late = within(deadline_of(&metadata(Some("20m"))), work).await.expect_err("late");
        assert_eq!(
            (late.code(), kit::status::reason(&late).as_deref()),
            (Code::DeadlineExceeded, Some("deadline_exceeded"))
        );
        let quick = within(deadline_of(&metadata(Some("20m"))), async { Ok::<u8, Status>(7) }).await;
        assert_eq!(quick.ok(), Some(7));
    }
}
