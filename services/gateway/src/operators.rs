//! The staff's work on 8443: the CA operator makes (制作), renews and revokes certificates; the province and
//! security admins create staff accounts, each with its certificate. JSON API (`issueCertificate`,
//! `renewCertificate`, `revokeCertificate`, `listKeyApplications`, `listCertificates`, `createAccount`,
//! `listAccounts`) and pages; identity decides who may do what, the gateway refuses early for clear pages.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use bytes::Bytes;
use minijinja::context;
use proto::identity::{
    CertificateInfo, CreateAccountRequest, IssueCertificateRequest, IssuedCertificate, ListAccountsRequest,
    ListCertificatesRequest, ListKeyApplicationsRequest, RenewCertificateRequest, RevokeCertificateRequest,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::enrollment::user;
use crate::error::{ApiError, parse_or_default as parse};
use crate::keys::{ApplicationView, identity, rfc3339};
use crate::session::SignedIn;

const CA_ROLES: [&str; 1] = ["ca_operator"];
const CA_READERS: [&str; 2] = ["ca_operator", "province_admin"];
const ACCOUNT_ADMINS: [&str; 2] = ["province_admin", "security_admin"];

/// A certificate as the API shows it.
#[derive(Debug, Serialize)]
pub struct CertificateView {
    pub serial: String,
    pub username: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    pub state: String,
    pub state_label: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub application_id: String,
    pub origin: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revoked_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revocation_reason: String,
    pub fingerprint: String,
    pub certificate_pem: String,
}

impl From<CertificateInfo> for CertificateView {
    fn from(info: CertificateInfo) -> Self {
        Self {
            not_before: rfc3339(info.not_before),
            not_after: rfc3339(info.not_after),
            revoked_at: rfc3339(info.revoked_at),
            serial: info.serial,
            username: info.username,
            subject: info.subject,
            state: info.state,
            state_label: info.state_label,
            application_id: info.application_id,
            origin: info.origin,
            revocation_reason: info.revocation_reason,
            fingerprint: info.fingerprint,
            certificate_pem: info.certificate_pem,
        }
    }
}

/// A certificate just made; with the private key, once, when the platform generated it.
#[derive(Debug, Serialize)]
pub struct IssuedView {
    pub certificate: Option<CertificateView>,
    pub ca_certificate_pem: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub private_key_pem: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pkcs12_base64: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pkcs12_password: String,
}

impl From<IssuedCertificate> for IssuedView {
    fn from(issued: IssuedCertificate) -> Self {
        Self {
            certificate: issued.certificate.map(CertificateView::from),
            ca_certificate_pem: issued.ca_certificate_pem,
            private_key_pem: issued.private_key_pem,
            pkcs12_base64: if issued.pkcs12.is_empty() {
                String::new()
            } else {
                base64::engine::general_purpose::STANDARD.encode(&issued.pkcs12)
            },
            pkcs12_password: issued.pkcs12_password,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CsrBody {
    #[serde(default)]
    pub csr_pem: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RevokeBody {
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub done: String,
}

#[derive(Debug, Default, Deserialize, Clone)]
pub struct AccountBody {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub agency_code: String,
    #[serde(default)]
    pub password: String,
}

async fn issue(
    state: &AppState,
    signed_in: &SignedIn,
    application_id: String,
    csr_pem: String,
) -> Result<IssuedView, ApiError> {
    signed_in.require(&CA_ROLES)?;
    let request = IssueCertificateRequest { caller: signed_in.caller(), application_id, csr_pem };
    Ok(identity(state).issue_certificate(request).await.map_err(ApiError::from)?.into_inner().into())
}

async fn renew(
    state: &AppState,
    signed_in: &SignedIn,
    serial: String,
    csr_pem: String,
) -> Result<IssuedView, ApiError> {
    signed_in.require(&CA_ROLES)?;
    let request = RenewCertificateRequest { caller: signed_in.caller(), serial, csr_pem };
    Ok(identity(state).renew_certificate(request).await.map_err(ApiError::from)?.into_inner().into())
}

async fn revoke(
    state: &AppState,
    signed_in: &SignedIn,
    serial: String,
    reason: String,
) -> Result<CertificateView, ApiError> {
    signed_in.require(&CA_ROLES)?;
    let request = RevokeCertificateRequest { caller: signed_in.caller(), serial, reason };
    Ok(identity(state).revoke_certificate(request).await.map_err(ApiError::from)?.into_inner().into())
}

async fn applications(state: &AppState, signed_in: &SignedIn, wanted: &str) -> Result<Vec<ApplicationView>, ApiError> {
    signed_in.require(&CA_READERS)?;
    let request = ListKeyApplicationsRequest { caller: signed_in.caller(), state: wanted.to_owned(), limit: 0 };
    let reply = identity(state).list_key_applications(request).await.map_err(ApiError::from)?.into_inner();
    Ok(reply.applications.into_iter().map(ApplicationView::from).collect())
}

async fn certificates(
    state: &AppState,
    signed_in: &SignedIn,
    username: &str,
) -> Result<Vec<CertificateView>, ApiError> {
    signed_in.require(&CA_READERS)?;
    let request = ListCertificatesRequest { caller: signed_in.caller(), username: username.to_owned(), limit: 0 };
    let reply = identity(state).list_certificates(request).await.map_err(ApiError::from)?.into_inner();
    Ok(reply.certificates.into_iter().map(CertificateView::from).collect())
}

async fn create_account(
    state: &AppState,
    signed_in: &SignedIn,
    body: AccountBody,
) -> Result<(serde_json::Value, IssuedView), ApiError> {
    signed_in.require(&ACCOUNT_ADMINS)?;
    let request = CreateAccountRequest {
        caller: signed_in.caller(),
        username: body.username,
        display_name: body.display_name,
        role: body.role,
        agency_code: body.agency_code,
        password: body.password,
    };
    let created = identity(state).create_account(request).await.map_err(ApiError::from)?.into_inner();
    let account = created.account.unwrap_or_default();
    let account = serde_json::json!({ "username": account.username, "display_name": account.display_name,
        "role": account.role, "role_label": account.role_label, "agency_code": account.agency_code,
        "agency_name": account.agency_name });
    Ok((account, created.certificate.unwrap_or_default().into()))
}

// ---- API ----

pub async fn issue_certificate_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(application_id): Path<String>,
    body: Bytes,
) -> Response {
    let result = match parse::<CsrBody>(&body) {
        Ok(body) => issue(&state, &signed_in, application_id, body.csr_pem).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(issued) => (StatusCode::CREATED, Json(issued)).into_response(),
        Err(error) => error.into_response(),
    }
}

pub async fn renew_certificate_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(serial): Path<String>,
    body: Bytes,
) -> Response {
    let result = match parse::<CsrBody>(&body) {
        Ok(body) => renew(&state, &signed_in, serial, body.csr_pem).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(issued) => (StatusCode::CREATED, Json(issued)).into_response(),
        Err(error) => error.into_response(),
    }
}

pub async fn revoke_certificate_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(serial): Path<String>,
    body: Bytes,
) -> Response {
    let result = match parse::<RevokeBody>(&body) {
        Ok(body) => revoke(&state, &signed_in, serial, body.reason).await,
        Err(error) => Err(error),
    };
    result.map(Json).into_response()
}

pub async fn list_applications_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ListQuery>,
) -> Response {
    applications(&state, &signed_in, &query.state)
        .await
        .map(|applications| Json(serde_json::json!({ "applications": applications })))
        .into_response()
}

pub async fn list_certificates_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ListQuery>,
) -> Response {
    certificates(&state, &signed_in, &query.username)
        .await
        .map(|certificates| Json(serde_json::json!({ "certificates": certificates })))
        .into_response()
}

pub async fn create_account_api(State(state): State<AppState>, signed_in: SignedIn, body: Bytes) -> Response {
    let result = match parse::<AccountBody>(&body) {
        Ok(body) => create_account(&state, &signed_in, body).await,
        Err(error) => Err(error),
    };
    match result {
        Ok((account, certificate)) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "account": account, "certificate": certificate })))
                .into_response()
        }
        Err(error) => error.into_response(),
    }
}

pub async fn list_accounts_api(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    let result = async {
        signed_in.require(&ACCOUNT_ADMINS)?;
        let reply = identity(&state)
            .list_accounts(ListAccountsRequest { caller: signed_in.caller() })
            .await
            .map_err(ApiError::from)?
            .into_inner();
        let accounts: Vec<serde_json::Value> = reply
            .accounts
            .into_iter()
            .map(|account| {
                serde_json::json!({ "username": account.username, "display_name": account.display_name,
                    "role": account.role, "role_label": account.role_label, "institution_code": account.institution_code,
                    "unit_name": account.unit_name, "agency_code": account.agency_code, "agency_name": account.agency_name,
                    "last_login_at": rfc3339(account.last_login_at) })
            })
            .collect();
        Ok::<_, ApiError>(Json(serde_json::json!({ "accounts": accounts })))
    }
    .await;
    result.into_response()
}

// ---- pages ----

pub fn denied(state: &AppState, signed_in: &SignedIn, error: &ApiError) -> Response {
    let mut response = state.pages.render(
        "main.html",
        context! { section => "main", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(), error => error.message.clone() },
    );
    *response.status_mut() = error.status;
    response
}

fn done_message(done: &str) -> &'static str {
    match done {
        "revoked" => "证书已吊销，吊销列表（CRL）已更新。",
        _ => "",
    }
}

async fn ca_view(state: &AppState, signed_in: &SignedIn, message: String, error: String) -> Response {
    let applied = applications(state, signed_in, "applied").await;
    let issued = certificates(state, signed_in, "").await;
    match (applied, issued) {
        (Ok(applied), Ok(issued)) => state.pages.render(
            "ca.html",
            context! { section => "ca", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
                       applications => minijinja::Value::from(minijinja::value::Serde(&applied)), certificates => minijinja::Value::from(minijinja::value::Serde(&issued)),
                       message => message, error => error },
        ),
        (Err(error), _) | (_, Err(error)) => denied(state, signed_in, &error),
    }
}

pub async fn ca_page(State(state): State<AppState>, signed_in: SignedIn, Query(query): Query<ListQuery>) -> Response {
    ca_view(&state, &signed_in, done_message(&query.done).to_owned(), String::new()).await
}

fn issued_page(
    state: &AppState,
    signed_in: &SignedIn,
    heading: &str,
    issued: IssuedView,
    account: Option<serde_json::Value>,
) -> Response {
    state.pages.render(
        "issued.html",
        context! { section => "ca", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(), heading => heading,
                   issued => minijinja::Value::from(minijinja::value::Serde(&issued)), account => account.map(|account| minijinja::Value::from(minijinja::value::Serde(account))) },
    )
}

pub async fn make_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(application_id): Path<String>,
    Form(form): Form<CsrBody>,
) -> Response {
    match issue(&state, &signed_in, application_id, form.csr_pem).await {
        Ok(issued) => issued_page(&state, &signed_in, "证书已制作", issued, None),
        Err(error) => ca_view(&state, &signed_in, String::new(), error.message).await,
    }
}

pub async fn renew_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(serial): Path<String>,
    Form(form): Form<CsrBody>,
) -> Response {
    match renew(&state, &signed_in, serial, form.csr_pem).await {
        Ok(issued) => issued_page(&state, &signed_in, "证书已更新", issued, None),
        Err(error) => ca_view(&state, &signed_in, String::new(), error.message).await,
    }
}

pub async fn revoke_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(serial): Path<String>,
    Form(form): Form<RevokeBody>,
) -> Response {
    match revoke(&state, &signed_in, serial, form.reason).await {
        Ok(_) => Redirect::to("/ca?done=revoked").into_response(),
        Err(error) => ca_view(&state, &signed_in, String::new(), error.message).await,
    }
}

async fn accounts_view(
    state: &AppState,
    signed_in: &SignedIn,
    form: &AccountBody,
    errors: BTreeMap<String, String>,
    error: String,
) -> Response {
    if let Err(error) = signed_in.require(&ACCOUNT_ADMINS) {
        return denied(state, signed_in, &error);
    }
    let agencies = crate::keys::agency_options(state).await;
    let accounts = identity(state)
        .list_accounts(ListAccountsRequest { caller: signed_in.caller() })
        .await
        .map(|reply| reply.into_inner().accounts)
        .unwrap_or_default();
    let accounts: Vec<serde_json::Value> = accounts
        .into_iter()
        .map(|account| {
            serde_json::json!({ "username": account.username, "display_name": account.display_name,
                "role_label": account.role_label, "unit_name": account.unit_name, "agency_name": account.agency_name,
                "last_login_at": rfc3339(account.last_login_at) })
        })
        .collect();
    state.pages.render(
        "accounts.html",
        context! { section => "accounts", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        agencies => agencies, accounts => minijinja::Value::from(minijinja::value::Serde(&accounts)),
        form => context! { username => form.username.clone(), display_name => form.display_name.clone(),
                           role => form.role.clone(), agency_code => form.agency_code.clone() },
        errors => errors, error => error },
    )
}

pub async fn accounts_page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    accounts_view(&state, &signed_in, &AccountBody::default(), BTreeMap::new(), String::new()).await
}

pub async fn account_submit(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Form(form): Form<AccountBody>,
) -> Response {
    let kept = AccountBody { password: String::new(), ..form.clone() };
    match create_account(&state, &signed_in, form).await {
        Ok((account, issued)) => issued_page(&state, &signed_in, "账户已创建", issued, Some(account)),
        Err(error) => {
            let (errors, message) = crate::pages::page_errors(&error);
            accounts_view(&state, &signed_in, &kept, errors, message).await
        }
    }
}
