//! The province admin's API clients (接口客户端) on 8443: the other agencies' systems that call the agency API,
//! their scopes, rates and certificates. JSON API (`listApiClients`, `createApiClient`, `updateApiClient`,
//! `issueApiClientCertificate`, `revokeApiClientCertificate`) and pages; identity decides and audits.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::context;
use proto::identity::{
    ApiClient, ApiClientCertificate, CreateApiClientRequest, IssueApiClientCertificateRequest,
    IssuedApiClientCertificate, ListApiClientsRequest, RegisterApiClientCertificateRequest,
    RevokeApiClientCertificateRequest, UpdateApiClientRequest,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, json_call};
use crate::keys::{identity, rfc3339};
use crate::session::SignedIn;

const ADMINS: [&str; 1] = ["province_admin"];

/// A client as the API and pages show it.
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub client_id: String,
    pub display_name: String,
    pub scopes: Vec<String>,
    pub state: String,
    pub calls_per_minute: u32,
    pub created_at: String,
    pub created_by: String,
    pub updated_at: String,
    pub certificates: Vec<CertificateView>,
}

#[derive(Debug, Serialize)]
pub struct CertificateView {
    pub serial: String,
    pub fingerprint: String,
    pub origin: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revoked_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revocation_reason: String,
    pub certificate_pem: String,
}

impl From<ApiClientCertificate> for CertificateView {
    fn from(certificate: ApiClientCertificate) -> Self {
        Self {
            not_before: rfc3339(certificate.not_before),
            not_after: rfc3339(certificate.not_after),
            revoked_at: rfc3339(certificate.revoked_at),
            serial: certificate.serial,
            fingerprint: certificate.fingerprint,
            origin: certificate.origin,
            subject: certificate.subject,
            state: certificate.state,
            revocation_reason: certificate.revocation_reason,
            certificate_pem: certificate.pem,
        }
    }
}

impl From<ApiClient> for ClientView {
    fn from(client: ApiClient) -> Self {
        Self {
            created_at: rfc3339(client.created_at),
            updated_at: rfc3339(client.updated_at),
            client_id: client.client_id,
            display_name: client.display_name,
            scopes: client.scopes,
            state: client.state,
            calls_per_minute: client.calls_per_minute,
            created_by: client.created_by,
            certificates: client.certificates.into_iter().map(CertificateView::from).collect(),
        }
    }
}

/// A certificate just issued; with the private key, once, when the platform generated it.
#[derive(Debug, Serialize)]
pub struct IssuedView {
    pub certificate: Option<CertificateView>,
    pub ca_certificate_pem: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub private_key_pem: String,
}

impl From<IssuedApiClientCertificate> for IssuedView {
    fn from(issued: IssuedApiClientCertificate) -> Self {
        Self {
            certificate: issued.certificate.map(CertificateView::from),
            ca_certificate_pem: issued.ca_certificate_pem,
            private_key_pem: issued.private_key_pem,
        }
    }
}

#[derive(Debug, Default, Deserialize, Clone)]
pub struct ClientBody {
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub calls_per_minute: u32,
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct CertificateBody {
    /// A CSR to sign (empty, with no certificate either: a generated key pair).
    #[serde(default)]
    pub csr_pem: String,
    /// A certificate of a configured agency CA to register instead.
    #[serde(default)]
    pub certificate_pem: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RevokeBody {
    #[serde(default)]
    pub reason: String,
}

async fn list(state: &AppState, signed_in: &SignedIn) -> Result<(Vec<ClientView>, Vec<(String, String)>), ApiError> {
    signed_in.require(&ADMINS)?;
    let reply = identity(state)
        .list_api_clients(ListApiClientsRequest { caller: signed_in.caller() })
        .await
        .map_err(ApiError::from)?
        .into_inner();
    let scopes = reply.scopes.into_iter().map(|scope| (scope.scope, scope.description)).collect();
    Ok((reply.clients.into_iter().map(ClientView::from).collect(), scopes))
}

async fn create(state: &AppState, signed_in: &SignedIn, body: ClientBody) -> Result<ClientView, ApiError> {
    signed_in.require(&ADMINS)?;
    let request = CreateApiClientRequest {
        caller: signed_in.caller(),
        client_id: body.client_id,
        display_name: body.display_name,
        scopes: body.scopes,
        calls_per_minute: body.calls_per_minute,
    };
    identity(state).create_api_client(request).await.map(|reply| reply.into_inner().into()).map_err(ApiError::from)
}

async fn update(
    state: &AppState,
    signed_in: &SignedIn,
    client_id: String,
    body: ClientBody,
) -> Result<ClientView, ApiError> {
    signed_in.require(&ADMINS)?;
    let request = UpdateApiClientRequest {
        caller: signed_in.caller(),
        client_id,
        display_name: body.display_name,
        scopes: body.scopes,
        calls_per_minute: body.calls_per_minute,
        state: body.state,
    };
    identity(state).update_api_client(request).await.map(|reply| reply.into_inner().into()).map_err(ApiError::from)
}

/// Issues from a CSR (or a generated key pair), or registers an agency CA's certificate.
async fn add_certificate(
    state: &AppState,
    signed_in: &SignedIn,
    client_id: String,
    body: CertificateBody,
) -> Result<IssuedView, ApiError> {
    signed_in.require(&ADMINS)?;
    if body.certificate_pem.trim().is_empty() {
        let request = IssueApiClientCertificateRequest { caller: signed_in.caller(), client_id, csr_pem: body.csr_pem };
        identity(state)
            .issue_api_client_certificate(request)
            .await
            .map(|reply| reply.into_inner().into())
            .map_err(ApiError::from)
    } else {
        let request = RegisterApiClientCertificateRequest {
            caller: signed_in.caller(),
            client_id,
            certificate_pem: body.certificate_pem,
        };
        let certificate = identity(state).register_api_client_certificate(request).await.map_err(ApiError::from)?;
        Ok(IssuedView {
            certificate: Some(certificate.into_inner().into()),
            ca_certificate_pem: String::new(),
            private_key_pem: String::new(),
        })
    }
}

async fn revoke(
    state: &AppState,
    signed_in: &SignedIn,
    serial: String,
    reason: String,
) -> Result<CertificateView, ApiError> {
    signed_in.require(&ADMINS)?;
    let request = RevokeApiClientCertificateRequest { caller: signed_in.caller(), serial, reason };
    identity(state)
        .revoke_api_client_certificate(request)
        .await
        .map(|reply| reply.into_inner().into())
        .map_err(ApiError::from)
}

pub async fn list_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    match list(&state, &signed_in).await {
        Ok((clients, scopes)) => {
            let scopes: Vec<serde_json::Value> = scopes
                .into_iter()
                .map(|(scope, description)| serde_json::json!({ "scope": scope, "description": description }))
                .collect();
            Json(serde_json::json!({ "clients": clients, "scopes": scopes })).into_response()
        }
        Err(error) => error.into_response(),
    }
}

pub async fn create_api(State(state): State<AppState>, signed_in: SignedIn, body: Bytes) -> Response {
    json_call(&body, StatusCode::CREATED, |body: ClientBody| async {
        create(&state, &signed_in, body).await.map(|client| serde_json::json!({ "client": client }))
    })
    .await
}

pub async fn update_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    json_call(&body, StatusCode::OK, |body: ClientBody| async {
        update(&state, &signed_in, client_id, body).await.map(|client| serde_json::json!({ "client": client }))
    })
    .await
}

pub async fn certificate_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    json_call(&body, StatusCode::CREATED, |body: CertificateBody| add_certificate(&state, &signed_in, client_id, body))
        .await
}

pub async fn revoke_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(serial): Path<String>,
    body: Bytes,
) -> Response {
    json_call(&body, StatusCode::OK, |body: RevokeBody| async {
        revoke(&state, &signed_in, serial, body.reason)
            .await
            .map(|certificate| serde_json::json!({ "certificate": certificate }))
    })
    .await
}

// ---- pages ----

/// The page form: one checkbox per scope, since a form posts a repeated field that a flat struct cannot hold.
#[derive(Debug, Default, Deserialize, Serialize, Clone)]
pub struct ClientForm {
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub scope_persons_read: Option<String>,
    #[serde(default)]
    pub scope_units_read: Option<String>,
    #[serde(default)]
    pub scope_events_read: Option<String>,
    #[serde(default)]
    pub scope_registry_write: Option<String>,
    #[serde(default)]
    pub calls_per_minute: String,
    #[serde(default)]
    pub state: String,
}

impl ClientForm {
    fn into_body(self) -> Result<ClientBody, ApiError> {
        let scopes = [
            (self.scope_persons_read.is_some(), "persons:read"),
            (self.scope_units_read.is_some(), "units:read"),
            (self.scope_events_read.is_some(), "events:read"),
            (self.scope_registry_write.is_some(), "registry:write"),
        ]
        .into_iter()
        .filter(|(checked, _)| *checked)
        .map(|(_, scope)| scope.to_owned())
        .collect();
        let rate = self.calls_per_minute.trim();
        let calls_per_minute = if rate.is_empty() {
            0
        } else {
            rate.parse::<u32>().ok().filter(|rate| *rate > 0).ok_or_else(|| {
                ApiError::from(kit::status::invalid(vec![kit::status::Violation::new(
                    "calls_per_minute",
                    "invalid_rate",
                    "每分钟调用次数应为 1–100000 之间的整数",
                )]))
            })?
        };
        Ok(ClientBody {
            client_id: self.client_id,
            display_name: self.display_name,
            scopes,
            calls_per_minute,
            state: self.state,
        })
    }

    fn of(client: &ClientView) -> Self {
        let has = |scope: &str| client.scopes.iter().any(|granted| granted == scope).then(|| "on".to_owned());
        Self {
            client_id: client.client_id.clone(),
            display_name: client.display_name.clone(),
            scope_persons_read: has("persons:read"),
            scope_units_read: has("units:read"),
            scope_events_read: has("events:read"),
            scope_registry_write: has("registry:write"),
            calls_per_minute: client.calls_per_minute.to_string(),
            state: client.state.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    pub done: String,
}

fn done_message(done: &str) -> &'static str {
    match done {
        "created" => "接口客户端已创建。请为其签发或登记证书。",
        "updated" => "已保存。权限与状态的变更至多 30 秒后对新的调用生效。",
        "registered" => "证书已登记。",
        "revoked" => "证书已吊销，吊销列表（CRL）已更新。",
        _ => "",
    }
}

fn serde<T: Serialize>(value: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

async fn list_view(
    state: &AppState,
    signed_in: &SignedIn,
    form: &ClientForm,
    errors: BTreeMap<String, String>,
    error: String,
) -> Response {
    let (clients, scopes) = match list(state, signed_in).await {
        Ok(listed) => listed,
        Err(error) => return crate::operators::denied(state, signed_in, &error),
    };
    state.pages.render(
        "api_clients.html",
        context! { section => "api_clients", user => crate::enrollment::user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        clients => serde(&clients), scopes => scopes, form => serde(form), errors => errors, error => error },
    )
}

async fn client_view(
    state: &AppState,
    signed_in: &SignedIn,
    client_id: &str,
    form: Option<ClientForm>,
    (errors, error, message): (BTreeMap<String, String>, String, String),
) -> Response {
    let (clients, scopes) = match list(state, signed_in).await {
        Ok(listed) => listed,
        Err(error) => return crate::operators::denied(state, signed_in, &error),
    };
    let Some(client) = clients.into_iter().find(|client| client.client_id == client_id) else {
        let error =
            ApiError::new(StatusCode::NOT_FOUND, "client_not_found", format!("没有标识为 {client_id} 的接口客户端"));
        return crate::operators::denied(state, signed_in, &error);
    };
    let form = form.unwrap_or_else(|| ClientForm::of(&client));
    state.pages.render(
        "api_client.html",
        context! { section => "api_clients", user => crate::enrollment::user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        client => serde(&client), scopes => scopes, form => serde(&form), errors => errors, error => error,
        message => message },
    )
}

pub async fn list_page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    list_view(&state, &signed_in, &ClientForm::default(), BTreeMap::new(), String::new()).await
}

pub async fn create_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(form): Form<ClientForm>,
) -> Response {
    let kept = form.clone();
    let result = match form.into_body() {
        Ok(body) => create(&state, &signed_in, body).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(client) => Redirect::to(&format!("/admin/api-clients/{}?done=created", client.client_id)).into_response(),
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            list_view(&state, &signed_in, &kept, errors, message).await
        }
    }
}

pub async fn client_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(client_id): Path<String>,
    Query(query): Query<DoneQuery>,
) -> Response {
    let message = done_message(&query.done).to_owned();
    client_view(&state, &signed_in, &client_id, None, (BTreeMap::new(), String::new(), message)).await
}

pub async fn update_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(client_id): Path<String>,
    Form(form): Form<ClientForm>,
) -> Response {
    let kept = ClientForm { client_id: client_id.clone(), ..form.clone() };
    let result = match form.into_body() {
        Ok(body) => update(&state, &signed_in, client_id.clone(), body).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(_) => Redirect::to(&format!("/admin/api-clients/{client_id}?done=updated")).into_response(),
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            client_view(&state, &signed_in, &client_id, Some(kept), (errors, message, String::new())).await
        }
    }
}

pub async fn certificate_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(client_id): Path<String>,
    Form(form): Form<CertificateBody>,
) -> Response {
    let registering = !form.certificate_pem.trim().is_empty();
    match add_certificate(&state, &signed_in, client_id.clone(), form).await {
        Ok(_) if registering => {
            Redirect::to(&format!("/admin/api-clients/{client_id}?done=registered")).into_response()
        }
        Ok(issued) => state.pages.render(
            "api_client_issued.html",
            context! { section => "api_clients", user => crate::enrollment::user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
            client_id => client_id, issued => serde(&issued) },
        ),
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            client_view(&state, &signed_in, &client_id, None, (errors, message, String::new())).await
        }
    }
}

pub async fn revoke_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path((client_id, serial)): Path<(String, String)>,
    Form(form): Form<RevokeBody>,
) -> Response {
    match revoke(&state, &signed_in, serial, form.reason).await {
        Ok(_) => Redirect::to(&format!("/admin/api-clients/{client_id}?done=revoked")).into_response(),
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            client_view(&state, &signed_in, &client_id, None, (errors, message, String::new())).await
        }
    }
}
