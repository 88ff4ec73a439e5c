//! The JSON API of the public key journey (密钥申请) and of loading the registry: each handler turns JSON into an
//! identity request, calls identity over NATS RPC, and answers JSON.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use proto::common::Caller;
use proto::identity::identity_client::IdentityClient;
use proto::identity::{
    ApplyForKeyRequest, ChangeKeyPasswordRequest, GetKeyApplicationRequest, ImportFileRequest, ImportReport,
    KeyApplication, VerifyUnitNameReply, VerifyUnitNameRequest, WithdrawKeyApplicationRequest,
};
use proto::names::Service;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

pub fn identity(state: &AppState) -> IdentityClient<kit::rpc::NatsChannel> {
    IdentityClient::new(state.platform.channel(Service::Identity))
}

/// The handling agencies as (code, name), for a page's choice list; empty when identity cannot answer, and the
/// form's submission then says what is wrong.
pub async fn agency_options(state: &AppState) -> Vec<(String, String)> {
    identity(state)
        .list_agencies(proto::identity::ListAgenciesRequest {})
        .await
        .map(|reply| reply.into_inner().agencies.into_iter().map(|agency| (agency.code, agency.name)).collect())
        .unwrap_or_default()
}

/// The caller of a public page or API call.
pub fn public_caller(remote: SocketAddr) -> Option<Caller> {
    Some(Caller {
        actor: "anonymous".into(),
        role: "public".into(),
        remote_address: remote.ip().to_string(),
        ..Caller::default()
    })
}

/// Until accounts exist, the province admin proves itself with the configured bootstrap token
/// (`Authorization: Bearer …`), compared in constant time.
fn admin_caller(state: &AppState, headers: &HeaderMap, remote: SocketAddr) -> Result<Option<Caller>, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    admin_caller_from_token(state, given, remote)
}

/// The province admin, when `given` is the configured bootstrap token.
pub fn admin_caller_from_token(state: &AppState, given: &str, remote: SocketAddr) -> Result<Option<Caller>, ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "admin_disabled", "未配置管理员凭据，无法进行此操作"));
    };
    let expected = expected.expose_secret().as_bytes();
    let equal = given.len() == expected.len()
        && given.as_bytes().iter().zip(expected).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0;
    if !equal {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "管理员凭据无效"));
    }
    Ok(Some(Caller {
        actor: "province-admin".into(),
        role: "province_admin".into(),
        remote_address: remote.ip().to_string(),
        ..Caller::default()
    }))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::bad_json(&error))
}

/// `unit_type` as the API takes it: the code (`organ`, `institution`) or the exact label.
pub fn unit_type_label(given: &str) -> String {
    match given.trim() {
        "organ" => "机关".into(),
        "institution" => "事业单位".into(),
        other => other.to_owned(),
    }
}

/// A key application as the API shows it.
#[derive(Debug, Serialize)]
pub struct ApplicationView {
    pub application_id: String,
    pub username: String,
    pub category: String,
    pub institution_code: String,
    pub unit_name: String,
    pub applicant_name: String,
    pub applicant_id_number_masked: String,
    pub state: String,
    pub state_label: String,
    pub applied_at: String,
    pub updated_at: String,
}

pub fn rfc3339(timestamp: Option<prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|timestamp| time::OffsetDateTime::from_unix_timestamp(timestamp.seconds).ok())
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

impl From<KeyApplication> for ApplicationView {
    fn from(application: KeyApplication) -> Self {
        Self {
            state_label: application.state_label,
            applied_at: rfc3339(application.applied_at),
            updated_at: rfc3339(application.updated_at),
            application_id: application.application_id,
            username: application.username,
            category: application.category,
            institution_code: application.institution_code,
            unit_name: application.unit_name,
            applicant_name: application.applicant_name,
            applicant_id_number_masked: application.applicant_id_number_masked,
            state: application.state,
        }
    }
}

/// The answer to `verifyUnitName`.
#[derive(Debug, Serialize)]
pub struct VerifyView {
    pub matched: bool,
    pub candidates: Vec<String>,
    pub keys: Vec<KeyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitView>,
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub application_id: String,
    pub state: String,
    pub state_label: String,
    pub applied_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub made_at: String,
}

#[derive(Debug, Serialize)]
pub struct UnitView {
    pub institution_code: String,
    pub unit_name: String,
    pub unit_type: String,
    pub credit_code: String,
    pub region_code: String,
    pub agency_code: String,
}

impl From<VerifyUnitNameReply> for VerifyView {
    fn from(reply: VerifyUnitNameReply) -> Self {
        Self {
            matched: reply.matched,
            candidates: reply.candidates,
            keys: reply
                .keys
                .into_iter()
                .map(|key| KeyView {
                    state_label: key.state_label,
                    application_id: key.application_id,
                    state: key.state,
                    applied_at: rfc3339(key.applied_at),
                    made_at: rfc3339(key.made_at),
                })
                .collect(),
            unit: reply.entry.map(|entry| UnitView {
                institution_code: entry.institution_code,
                unit_name: entry.unit_name,
                unit_type: entry.unit_type,
                credit_code: entry.credit_code,
                region_code: entry.region_code,
                agency_code: entry.agency_code,
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
struct VerifyBody {
    #[serde(default)]
    unit_type: String,
    #[serde(default)]
    unit_name: String,
}

/// `verifyUnitName`.
pub async fn verify_unit_name(State(state): State<AppState>, body: Bytes) -> Result<Json<VerifyView>, ApiError> {
    let body: VerifyBody = parse(&body)?;
    let request = VerifyUnitNameRequest { unit_type: unit_type_label(&body.unit_type), unit_name: body.unit_name };
    let reply = identity(&state).verify_unit_name(request).await?.into_inner();
    Ok(Json(reply.into()))
}

/// The fields of a key application, as the JSON API and the page's form both send them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApplyBody {
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub unit_type: String,
    #[serde(default)]
    pub unit_name: String,
    #[serde(default)]
    pub applicant_name: String,
    #[serde(default)]
    pub applicant_id_number: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub password: String,
}

impl ApplyBody {
    pub fn into_request(self, caller: Option<Caller>) -> ApplyForKeyRequest {
        ApplyForKeyRequest {
            caller,
            category: self.category,
            unit_type: unit_type_label(&self.unit_type),
            unit_name: self.unit_name,
            applicant_name: self.applicant_name,
            applicant_id_number: self.applicant_id_number,
            phone: self.phone,
            password: self.password,
        }
    }
}

/// `applyForKey`: 201 with the application id and the username.
pub async fn apply_for_key(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ApplyBody = parse(&body)?;
    crate::limits::public_write(&state, "apply", remote.ip()).await?;
    let application = identity(&state).apply_for_key(body.into_request(public_caller(remote))).await?.into_inner();
    Ok((StatusCode::CREATED, Json(ApplicationView::from(application))).into_response())
}

/// `getKeyApplication`.
pub async fn get_key_application(
    State(state): State<AppState>,
    Path(application_id): Path<String>,
) -> Result<Json<ApplicationView>, ApiError> {
    let application =
        identity(&state).get_key_application(GetKeyApplicationRequest { application_id }).await?.into_inner();
    Ok(Json(application.into()))
}

#[derive(Debug, Deserialize)]
struct WithdrawBody {
    #[serde(default)]
    applicant_id_number: String,
}

/// `withdrawKeyApplication`.
pub async fn withdraw_key_application(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(application_id): Path<String>,
    body: Bytes,
) -> Result<Json<ApplicationView>, ApiError> {
    let body: WithdrawBody = parse(&body)?;
    crate::limits::public_write(&state, "application", remote.ip()).await?;
    let request = WithdrawKeyApplicationRequest {
        caller: public_caller(remote),
        application_id,
        applicant_id_number: body.applicant_id_number,
    };
    Ok(Json(identity(&state).withdraw_key_application(request).await?.into_inner().into()))
}

#[derive(Debug, Deserialize)]
struct PasswordBody {
    #[serde(default)]
    applicant_id_number: String,
    #[serde(default)]
    new_password: String,
}

/// `changeKeyPassword`.
pub async fn change_key_password(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(application_id): Path<String>,
    body: Bytes,
) -> Result<Json<ApplicationView>, ApiError> {
    let body: PasswordBody = parse(&body)?;
    crate::limits::public_write(&state, "application", remote.ip()).await?;
    let request = ChangeKeyPasswordRequest {
        caller: public_caller(remote),
        application_id,
        applicant_id_number: body.applicant_id_number,
        new_password: body.new_password,
    };
    Ok(Json(identity(&state).change_key_password(request).await?.into_inner().into()))
}

/// The answer of the import operations.
#[derive(Debug, Serialize)]
pub struct ImportView {
    pub loaded: u32,
    pub errors: Vec<RowErrorView>,
}

#[derive(Debug, Serialize)]
pub struct RowErrorView {
    pub row: u32,
    pub column: String,
    pub code: String,
    pub message: String,
}

impl From<ImportReport> for ImportView {
    fn from(report: ImportReport) -> Self {
        Self {
            loaded: report.loaded,
            errors: report
                .errors
                .into_iter()
                .map(|error| RowErrorView {
                    row: error.row,
                    column: error.column,
                    code: error.code,
                    message: error.message,
                })
                .collect(),
        }
    }
}

/// What an import loads.
#[derive(Debug, Clone, Copy)]
pub enum ImportKind {
    Registry,
    Agencies,
}

/// Calls identity's import of `kind` with `file`.
pub async fn import(
    state: &AppState,
    kind: ImportKind,
    caller: Option<Caller>,
    file: Vec<u8>,
) -> Result<ImportView, ApiError> {
    // The file travels to identity in one NATS message; say so plainly rather than fail in the transport.
    let limit = state.platform.nats.server_info().max_payload.saturating_sub(64 * 1024);
    if file.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("文件过大（{} KB，上限约 {} KB），请拆分为多个文件分批导入", file.len() / 1024, limit / 1024),
        ));
    }
    if file.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "empty_file", "文件为空"));
    }
    let request = ImportFileRequest { caller, file };
    let reply = match kind {
        ImportKind::Registry => identity(state).import_registry(request).await?,
        ImportKind::Agencies => identity(state).import_agencies(request).await?,
    };
    Ok(reply.into_inner().into())
}

/// `importRegistry`: the raw CSV or xlsx file as the body.
pub async fn import_registry(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    file: Bytes,
) -> Result<Json<ImportView>, ApiError> {
    let caller = admin_caller(&state, &headers, remote)?;
    import(&state, ImportKind::Registry, caller, file.to_vec()).await.map(Json)
}

/// `importAgencies`: the raw CSV or xlsx file as the body.
pub async fn import_agencies(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    file: Bytes,
) -> Result<Json<ImportView>, ApiError> {
    let caller = admin_caller(&state, &headers, remote)?;
    import(&state, ImportKind::Agencies, caller, file.to_vec()).await.map(Json)
}
