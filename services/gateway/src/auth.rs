//! Logging in on 8443 (certificate, then username and password), activating a legacy key, logging out, and who am
//! I: as JSON API (`login`, `activateKey`, `logout`, `whoAmI`) and as pages. Identity checks the certificate and
//! the password; the gateway keeps the lockout counters and the session.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Extension, Form, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::context;
use proto::common::Caller;
use proto::identity::{ActivateKeyRequest, LoginReply, LoginRequest};
use proto::names::Service;
use proto::units::GetUnitRecordRequest;
use proto::units::units_client::UnitsClient;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, FieldError};
use crate::https::ClientCertificate;
use crate::keys::identity;
use crate::session::{Activating, CSRF_HEADER, PendingActivation, SessionData, SignedIn, fingerprint_hex};

/// The account as the API shows it.
#[derive(Debug, Serialize)]
pub struct AccountView {
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub role_label: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub institution_code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unit_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agency_code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agency_name: String,
    pub certificate_serial: String,
}

impl From<&SessionData> for AccountView {
    fn from(session: &SessionData) -> Self {
        Self {
            username: session.username.clone(),
            display_name: session.display_name.clone(),
            role: session.role.clone(),
            role_label: session.role_label.clone(),
            institution_code: session.institution_code.clone(),
            unit_name: session.unit_name.clone(),
            agency_code: session.agency_code.clone(),
            agency_name: session.agency_name.clone(),
            certificate_serial: session.certificate_serial.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginBody {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
}

fn public(remote: SocketAddr) -> Option<Caller> {
    crate::keys::public_caller(remote)
}

fn field_error(field: &str, code: &str, message: &str) -> ApiError {
    ApiError {
        field: Some(field.to_owned()),
        errors: vec![FieldError { field: field.into(), code: code.into(), message: message.into() }],
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

/// The lockout answer: 423 with `Retry-After`.
fn locked(seconds: u64) -> ApiError {
    let minutes = seconds.div_ceil(60).max(1);
    let mut error = ApiError::new(
        StatusCode::LOCKED,
        "account_locked",
        format!("连续多次密码错误，账户已锁定，请{minutes}分钟后再试"),
    );
    error.retry_after = Some(seconds.max(1));
    error
}

/// Certificate, then username and password; wrong passwords count towards the lockout. On success the session
/// (full, or awaiting activation) is stored and its token returned.
async fn sign_in(
    state: &AppState,
    certificate: Option<Vec<u8>>,
    remote: SocketAddr,
    body: LoginBody,
) -> Result<(SessionData, String), ApiError> {
    let username = body.username.trim().to_owned();
    if username.is_empty() {
        return Err(field_error("username", "required", "请输入用户名"));
    }
    if body.password.is_empty() {
        return Err(field_error("password", "required", "请输入密码"));
    }
    if let Some(seconds) = state.sessions.locked_for(&username).await? {
        return Err(locked(seconds));
    }
    let certificate = certificate.unwrap_or_default();
    let request = LoginRequest {
        caller: public(remote),
        certificate_der: certificate.clone(),
        username: username.clone(),
        password: body.password,
    };
    let reply: LoginReply = match identity(state).login(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            let mut error = ApiError::from(status);
            if error.code == "wrong_credentials" {
                let left = state.sessions.record_failure(&username).await?;
                if left == 0 {
                    return Err(locked(state.sessions.lockout.as_secs()));
                }
                error.message = format!("用户名或密码错误，再错{left}次账户将被锁定");
            }
            return Err(error);
        }
    };
    state.sessions.clear_failures(&username).await;
    let fingerprint = fingerprint_hex(&certificate);
    let session = match (reply.account, reply.certificate) {
        (Some(account), Some(info)) => SessionData::signed_in(account, &info, fingerprint),
        _ => SessionData {
            username: reply.activation_username.clone(),
            certificate_fingerprint: fingerprint,
            csrf_token: crate::session::random_token(),
            activation: Some(PendingActivation {
                ticket: reply.activation_ticket,
                username: reply.activation_username,
                institution_code: reply.activation_institution_code,
            }),
            ..SessionData::default()
        },
    };
    let token = state.sessions.create(&session).await?;
    Ok((session, token))
}

fn with_session_cookies(mut response: Response, token: &str, csrf: &str) -> Response {
    for (name, value) in crate::session::session_cookies(token, csrf) {
        response.headers_mut().append(name, value);
    }
    if let Ok(value) = HeaderValue::from_str(csrf) {
        response.headers_mut().insert(CSRF_HEADER, value);
    }
    response
}

fn signed_in_json(session: &SessionData, token: &str) -> Response {
    let body = match &session.activation {
        None => {
            serde_json::json!({ "status": "signed_in", "account": AccountView::from(session), "csrf_token": session.csrf_token })
        }
        Some(activation) => serde_json::json!({
            "status": "activation_required",
            "activation": { "username": activation.username, "institution_code": activation.institution_code },
            "csrf_token": session.csrf_token,
        }),
    };
    let status = if session.activation.is_some() { StatusCode::ACCEPTED } else { StatusCode::OK };
    with_session_cookies((status, Json(body)).into_response(), token, &session.csrf_token)
}

/// `login`: POST /api/session.
pub async fn login_api(
    State(state): State<AppState>,
    Extension(certificate): Extension<ClientCertificate>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let body: LoginBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return ApiError::bad_json(&error).into_response(),
    };
    match sign_in(&state, certificate.0, remote, body).await {
        Ok((session, token)) => signed_in_json(&session, &token),
        Err(error) => error.into_response(),
    }
}

/// `whoAmI`: GET /api/session.
pub async fn who_am_i(signed_in: SignedIn) -> Response {
    let body = serde_json::json!({ "account": AccountView::from(&signed_in.session), "csrf_token": signed_in.session.csrf_token });
    Json(body).into_response()
}

/// `logout`: DELETE /api/session.
pub async fn logout_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    crate::session::end_session(&state, &signed_in.token, &signed_in.session, &signed_in.remote, "logout").await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    for (name, value) in crate::session::cleared_cookies() {
        response.headers_mut().append(name, value);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
pub struct ActivationBody {
    #[serde(default)]
    pub category: String,
    #[serde(default, deserialize_with = "checkbox")]
    pub agreement_accepted: bool,
    #[serde(default)]
    pub institution_code: String,
    #[serde(default)]
    pub unit_name: String,
    #[serde(default)]
    pub agency_code: String,
}

/// A JSON boolean, or a form checkbox's "on"/"yes"/"true".
fn checkbox<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    Ok(match Flag::deserialize(deserializer)? {
        Flag::Bool(value) => value,
        Flag::Text(text) => matches!(text.as_str(), "on" | "yes" | "true" | "1"),
    })
}

/// Activates the legacy key of an activating session, which becomes a full one (a new token, so the pre-activation
/// token is worth nothing afterwards).
async fn activate(
    state: &AppState,
    activating: &Activating,
    body: ActivationBody,
) -> Result<(SessionData, String), ApiError> {
    let request = ActivateKeyRequest {
        caller: Some(Caller {
            actor: activating.activation.username.clone(),
            role: "public".into(),
            remote_address: activating.remote.clone(),
            ..Caller::default()
        }),
        certificate_der: activating.certificate.clone(),
        activation_ticket: activating.activation.ticket.clone(),
        category: body.category,
        agreement_accepted: body.agreement_accepted,
        institution_code: body.institution_code,
        unit_name: body.unit_name,
        agency_code: body.agency_code,
    };
    let reply = identity(state).activate_key(request).await.map_err(ApiError::from)?.into_inner();
    let (Some(account), Some(info)) = (reply.account, reply.certificate) else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "系统内部错误，请稍后重试"));
    };
    let session = SessionData::signed_in(account, &info, activating.session.certificate_fingerprint.clone());
    let token = state.sessions.create(&session).await?;
    state.sessions.delete(&activating.token).await;
    Ok((session, token))
}

/// `activateKey`: POST /api/key-activation.
pub async fn activate_api(State(state): State<AppState>, activating: Activating, body: Bytes) -> Response {
    let body: ActivationBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return ApiError::bad_json(&error).into_response(),
    };
    match activate(&state, &activating, body).await {
        Ok((session, token)) => signed_in_json(&session, &token),
        Err(error) => error.into_response(),
    }
}

// ---- pages ----

#[derive(Debug, Default, Deserialize)]
pub struct ReasonQuery {
    #[serde(default)]
    reason: String,
}

fn reason_message(reason: &str) -> &'static str {
    match reason {
        "session_expired" => "登录已超时，请重新登录。",
        "certificate_changed" => "检测到的证书与登录时不同，请重新登录。",
        "certificate_revoked" => "您的证书已吊销，不能再使用。",
        "activation_required" => "请先完成密钥激活。",
        "signed_out" => "您已安全退出。",
        _ => "",
    }
}

pub async fn login_page(
    State(state): State<AppState>,
    Extension(certificate): Extension<ClientCertificate>,
    Query(query): Query<ReasonQuery>,
) -> Response {
    state.pages.render(
        "login.html",
        context! { section => "login", has_certificate => certificate.0.is_some(), message => reason_message(&query.reason),
                   errors => BTreeMap::<String, String>::new() },
    )
}

pub async fn login_submit(
    State(state): State<AppState>,
    Extension(certificate): Extension<ClientCertificate>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginBody>,
) -> Response {
    let username = form.username.clone();
    let has_certificate = certificate.0.is_some();
    match sign_in(&state, certificate.0, remote, form).await {
        Ok((session, token)) => {
            let target = if session.activation.is_some() { "/activate" } else { "/" };
            with_session_cookies(Redirect::to(target).into_response(), &token, &session.csrf_token)
        }
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            let mut response = state.pages.render(
                "login.html",
                context! { section => "login", has_certificate => has_certificate, username => username,
                errors => errors, error => message },
            );
            *response.status_mut() = error.status;
            response
        }
    }
}

pub async fn logout_submit(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    crate::session::end_session(&state, &signed_in.token, &signed_in.session, &signed_in.remote, "logout").await;
    let mut response = Redirect::to("/login?reason=signed_out").into_response();
    for (name, value) in crate::session::cleared_cookies() {
        response.headers_mut().append(name, value);
    }
    response
}

async fn render_activation(
    state: &AppState,
    activating: &Activating,
    form: &ActivationBody,
    errors: BTreeMap<String, String>,
    message: String,
) -> Response {
    let agencies = crate::keys::agency_options(state).await;
    let institution_code = if form.institution_code.is_empty() {
        activating.activation.institution_code.clone()
    } else {
        form.institution_code.clone()
    };
    state.pages.render(
        "activate.html",
        context! { section => "login", username => activating.activation.username.clone(), csrf => activating.session.csrf_token.clone(),
                   agencies => agencies, institution_code => institution_code, unit_name => form.unit_name.clone(),
                   agency_code => form.agency_code.clone(), agreement_accepted => form.agreement_accepted,
                   errors => errors, error => message },
    )
}

pub async fn activate_page(State(state): State<AppState>, activating: Activating) -> Response {
    render_activation(&state, &activating, &ActivationBody::default(), BTreeMap::new(), String::new()).await
}

pub async fn activate_submit(
    State(state): State<AppState>,
    activating: Activating,
    Form(form): Form<ActivationBody>,
) -> Response {
    let kept = ActivationBody {
        category: form.category.clone(),
        agreement_accepted: form.agreement_accepted,
        institution_code: form.institution_code.clone(),
        unit_name: form.unit_name.clone(),
        agency_code: form.agency_code.clone(),
    };
    match activate(&state, &activating, form).await {
        Ok((session, token)) => with_session_cookies(Redirect::to("/").into_response(), &token, &session.csrf_token),
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            render_activation(&state, &activating, &kept, errors, message).await
        }
    }
}

/// The main page after login: who is signed in, and what the role can do; a unit operator sees the unit's record.
pub async fn main_page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    let session = &signed_in.session;
    let unit = if session.role == "unit_operator" {
        let request = GetUnitRecordRequest { caller: signed_in.caller(), institution_code: String::new() };
        UnitsClient::new(state.platform.channel(Service::Units)).get_unit_record(request).await.ok().map(|reply| {
            let record = reply.into_inner();
            serde_json::json!({ "institution_code": record.institution_code, "unit_name": record.unit_name,
                                "credit_code": record.credit_code, "unit_type": record.unit_type,
                                "agency_code": record.agency_code, "state_label": record.state_label })
        })
    } else {
        None
    };
    state.pages.render(
        "main.html",
        context! { section => "main", user => minijinja::Value::from(minijinja::value::Serde(AccountView::from(session))),
                   csrf => session.csrf_token.clone(), unit => minijinja::Value::from(minijinja::value::Serde(unit)) },
    )
}
