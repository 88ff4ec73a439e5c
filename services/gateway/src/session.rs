//! Sessions, CSRF protection and login lockout, all in Redis.
//!
//! A session is a random token in an HttpOnly, Secure, SameSite=Strict cookie; Redis keeps the session under the
//! token's SHA-256, so a copy of Redis logs nobody in. It lasts while used (idle timeout, 30 minutes by default),
//! is bound to the certificate it logged in with, and ends when that certificate is revoked. Every state-changing
//! call of a session must echo the session's CSRF token in `X-CSRF-Token` (or a form's `csrf_token` field); the
//! token is handed out in the `pension_csrf` cookie, the login answer and each page.
//!
//! After `max_failures` wrong passwords within `failure_window` an account is locked for `lockout`.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use kit::redis::Redis;
use proto::common::Caller;
use proto::identity::{Account, CertificateInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::https::ClientCertificate;

pub const SESSION_COOKIE: &str = "pension_session";
pub const CSRF_COOKIE: &str = "pension_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "csrf_token";

/// What Redis keeps of a session. Never a password or an ID number.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SessionData {
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub role_label: String,
    pub institution_code: String,
    pub unit_name: String,
    pub agency_code: String,
    pub agency_name: String,
    pub certificate_serial: String,
    /// SHA-256 of the certificate's DER, hex: every request must come with the same certificate.
    pub certificate_fingerprint: String,
    pub csrf_token: String,
    /// Set while a legacy key awaits activation: the session can do nothing else.
    pub activation: Option<PendingActivation>,
}

/// A legacy key whose username and password were right, on its way through 密钥激活.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PendingActivation {
    pub ticket: String,
    pub username: String,
    pub institution_code: String,
}

impl SessionData {
    pub fn signed_in(account: Account, certificate: &CertificateInfo, fingerprint: String) -> Self {
        Self {
            username: account.username,
            display_name: account.display_name,
            role: account.role,
            role_label: account.role_label,
            institution_code: account.institution_code,
            unit_name: account.unit_name,
            agency_code: account.agency_code,
            agency_name: account.agency_name,
            certificate_serial: certificate.serial.clone(),
            certificate_fingerprint: fingerprint,
            csrf_token: random_token(),
            activation: None,
        }
    }

    /// The caller as services see it.
    pub fn caller(&self, remote: &str) -> Option<Caller> {
        Some(Caller {
            scopes: Vec::new(),
            actor: self.username.clone(),
            role: self.role.clone(),
            certificate_serial: self.certificate_serial.clone(),
            remote_address: remote.to_owned(),
            institution_code: self.institution_code.clone(),
            agency_code: self.agency_code.clone(),
        })
    }
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn fingerprint_hex(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|byte| format!("{byte:02X}")).collect()
}

/// Equal strings, compared in time independent of where they differ.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given.iter().zip(expected).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
}

/// The session and lockout settings.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub redis: Redis,
    pub idle: Duration,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
}

fn unavailable(error: &redis::RedisError) -> ApiError {
    tracing::warn!(%error, "redis unavailable for sessions");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "session_store_unavailable", "登录服务暂时不可用，请稍后重试")
}

impl Sessions {
    fn session_key(&self, token: &str) -> String {
        self.redis.key(&format!("session:{}", fingerprint_hex(token.as_bytes())))
    }

    /// Stores a new session and returns its token.
    pub async fn create(&self, data: &SessionData) -> Result<String, ApiError> {
        let token = random_token();
        let value = serde_json::to_string(data)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "系统内部错误"))?;
        let mut connection = self.redis.connection.clone();
        redis::cmd("SET")
            .arg(self.session_key(&token))
            .arg(value)
            .arg("EX")
            .arg(self.idle.as_secs().max(1))
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(token)
    }

    /// The session of `token`, its idle timer restarted; `None` when it expired or never was.
    pub async fn load(&self, token: &str) -> Result<Option<SessionData>, ApiError> {
        let mut connection = self.redis.connection.clone();
        let value: Option<String> = redis::cmd("GETEX")
            .arg(self.session_key(token))
            .arg("EX")
            .arg(self.idle.as_secs().max(1))
            .query_async(&mut connection)
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(value.and_then(|value| serde_json::from_str(&value).ok()))
    }

    pub async fn delete(&self, token: &str) {
        let mut connection = self.redis.connection.clone();
        if let Err(error) = redis::cmd("DEL").arg(self.session_key(token)).query_async::<()>(&mut connection).await {
            tracing::warn!(%error, "cannot delete a session");
        }
    }

    // Usernames are counted case-folded, so varying the case of one name does not buy more tries.
    fn lock_key(&self, username: &str) -> String {
        self.redis.key(&format!("login:lock:{}", username.to_lowercase()))
    }

    fn failures_key(&self, username: &str) -> String {
        self.redis.key(&format!("login:failures:{}", username.to_lowercase()))
    }

    /// Seconds the account stays locked, if it is.
    pub async fn locked_for(&self, username: &str) -> Result<Option<u64>, ApiError> {
        let mut connection = self.redis.connection.clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(self.lock_key(username))
            .query_async(&mut connection)
            .await
            .map_err(|error| unavailable(&error))?;
        Ok((ttl > 0).then(|| u64::try_from(ttl).unwrap_or(0).div_ceil(1000)))
    }

    /// Counts a wrong password; answers how many tries are left (0: the account is now locked).
    pub async fn record_failure(&self, username: &str) -> Result<u32, ApiError> {
        let key = self.failures_key(username);
        let mut connection = self.redis.connection.clone();
        let window = u64::try_from(self.failure_window.as_millis()).unwrap_or(u64::MAX).max(1);
        let (count, _): (u32, i32) = redis::pipe()
            .atomic()
            .incr(&key, 1u32)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(window)
            .arg("NX")
            .query_async(&mut connection)
            .await
            .map_err(|error| unavailable(&error))?;
        if count < self.max_failures {
            return Ok(self.max_failures - count);
        }
        let lockout = u64::try_from(self.lockout.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.lock_key(username))
            .arg(1)
            .arg("PX")
            .arg(lockout)
            .del(&key)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(0)
    }

    pub async fn clear_failures(&self, username: &str) {
        let mut connection = self.redis.connection.clone();
        if let Err(error) = redis::cmd("DEL").arg(self.failures_key(username)).query_async::<()>(&mut connection).await
        {
            tracing::warn!(%error, "cannot clear login failures");
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The cookies that start a session: the session token (HttpOnly) and the CSRF token (readable by scripts).
pub fn session_cookies(token: &str, csrf: &str) -> [(header::HeaderName, HeaderValue); 2] {
    let cookie = |value: String| HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""));
    [
        (header::SET_COOKIE, cookie(format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict"))),
        (header::SET_COOKIE, cookie(format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; SameSite=Strict"))),
    ]
}

/// The cookies that end it.
pub fn cleared_cookies() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (
            header::SET_COOKIE,
            HeaderValue::from_static("pension_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
        ),
        (header::SET_COOKIE, HeaderValue::from_static("pension_csrf=; Path=/; Secure; SameSite=Strict; Max-Age=0")),
    ]
}

/// A request of a signed-in account whose certificate is still the one it logged in with and is not revoked.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: SessionData,
    pub token: String,
    pub remote: String,
}

impl SignedIn {
    pub fn caller(&self) -> Option<Caller> {
        self.session.caller(&self.remote)
    }

    /// Refuses roles other than `roles`.
    pub fn require(&self, roles: &[&str]) -> Result<(), ApiError> {
        if roles.contains(&self.session.role.as_str()) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "您的角色无权进行此操作"))
        }
    }
}

/// A session awaiting the activation of its legacy key.
#[derive(Debug, Clone)]
pub struct Activating {
    pub session: SessionData,
    pub activation: PendingActivation,
    pub token: String,
    pub remote: String,
    pub certificate: Vec<u8>,
}

/// Why there is no usable session: pages go to the login page, the API answers 401.
#[derive(Debug)]
pub struct NotSignedIn {
    api: bool,
    error: ApiError,
    clear: bool,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        let mut response = if self.api {
            self.error.into_response()
        } else {
            Redirect::to(&format!("/login?reason={}", self.error.code)).into_response()
        };
        if self.clear {
            for (name, value) in cleared_cookies() {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// Ends a session and has identity audit it; the audit is best effort, since the session is gone either way.
pub async fn end_session(state: &AppState, token: &str, session: &SessionData, remote: &str, reason: &str) {
    state.sessions.delete(token).await;
    let request = proto::identity::LogoutRequest { caller: session.caller(remote), reason: reason.to_owned() };
    if let Err(status) = crate::keys::identity(state).logout(request).await {
        tracing::warn!(code = ?status.code(), "cannot audit the end of a session");
    }
}

/// The session of a request, checked against the certificate the request came with and the revocation list.
async fn session_of(parts: &Parts, state: &AppState) -> Result<(SessionData, String, String, Vec<u8>), NotSignedIn> {
    let api = parts.uri.path().starts_with("/api/");
    let refuse = |code: &str, message: &str, clear: bool| NotSignedIn {
        api,
        error: ApiError::new(StatusCode::UNAUTHORIZED, code, message),
        clear,
    };
    let remote = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_default();
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Err(refuse("not_signed_in", "请先登录", false));
    };
    let session = match state.sessions.load(&token).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(refuse("session_expired", "登录已超时，请重新登录", true)),
        Err(error) => return Err(NotSignedIn { api, error, clear: false }),
    };
    let certificate = parts.extensions.get::<ClientCertificate>().and_then(|certificate| certificate.0.clone());
    let same_certificate = certificate.as_deref().is_some_and(|der| {
        constant_time_eq(fingerprint_hex(der).as_bytes(), session.certificate_fingerprint.as_bytes())
    });
    if !same_certificate {
        end_session(state, &token, &session, &remote, "certificate_changed").await;
        return Err(refuse("certificate_changed", "请使用登录时的密钥（证书）", true));
    }
    if state.trust.is_revoked(&session.certificate_serial) {
        end_session(state, &token, &session, &remote, "certificate_revoked").await;
        return Err(refuse("certificate_revoked", "该证书已吊销，不能再使用", true));
    }
    Ok((session, token, remote, certificate.unwrap_or_default()))
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (session, token, remote, _) = session_of(parts, state).await?;
        if session.activation.is_some() {
            let api = parts.uri.path().starts_with("/api/");
            let error = ApiError::new(StatusCode::UNAUTHORIZED, "activation_required", "请先完成密钥激活");
            return Err(NotSignedIn { api, error, clear: false });
        }
        Ok(Self { session, token, remote })
    }
}

impl FromRequestParts<AppState> for Activating {
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (session, token, remote, certificate) = session_of(parts, state).await?;
        let Some(activation) = session.activation.clone() else {
            let api = parts.uri.path().starts_with("/api/");
            let error = ApiError::new(StatusCode::CONFLICT, "not_activating", "该密钥无需激活");
            return Err(NotSignedIn { api, error, clear: false });
        };
        Ok(Self { session, activation, token, remote, certificate })
    }
}

/// Paths whose state-changing calls need no session (public operations, and login itself), so no CSRF token.
fn exempt_from_csrf(method: &Method, path: &str) -> bool {
    matches!((method, path), (&Method::POST, "/login" | "/api/session"))
        || path.starts_with("/keys/")
        || path == "/api/unit-names/verify"
        || (path.starts_with("/api/key-applications") && !path.ends_with("/certificate"))
}

/// Refuses a state-changing call of a session that does not echo the session's CSRF token.
pub async fn csrf_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let safe = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || exempt_from_csrf(&method, request.uri().path()) {
        return next.run(request).await;
    }
    let Some(token) = cookie(request.headers(), SESSION_COOKIE) else {
        // No session: the handler refuses it as not signed in.
        return next.run(request).await;
    };
    let expected = match state.sessions.load(&token).await {
        Ok(Some(session)) => session.csrf_token,
        Ok(None) => return next.run(request).await,
        Err(error) => return error.into_response(),
    };
    let header_token = request.headers().get(CSRF_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let (request, given) = match (header_token, is_form) {
        (Some(given), _) => (request, Some(given)),
        (None, true) => {
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "提交的内容过大").into_response();
            };
            let given = form_field(&bytes, CSRF_FIELD);
            (Request::from_parts(parts, axum::body::Body::from(bytes)), given)
        }
        // A multipart upload (a spreadsheet from a page) is not read here, whatever its size: its form carries the
        // token in the action's query. The cookie is SameSite=Strict besides.
        (None, false) if is_multipart(&request) => {
            let given = request.uri().query().and_then(|query| form_field(query.as_bytes(), CSRF_FIELD));
            (request, given)
        }
        (None, false) => (request, None),
    };
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => next.run(request).await,
        _ => ApiError::new(StatusCode::FORBIDDEN, "csrf_token_invalid", "页面已过期或请求来源不明，请刷新页面后重试")
            .into_response(),
    }
}

fn is_multipart(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"))
}

/// One field of a URL-encoded form. CSRF tokens are URL-safe base64, so no decoding is needed beyond the split.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}
