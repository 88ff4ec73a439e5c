//! The JSON API and public pages of the HTTP port. Errors are JSON with a stable machine-readable `code` and a
//! Chinese `message`; a service that cannot be reached is 503 with `Retry-After`, never a 500.

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use kit::service::Platform;
use proto::common::{GetStatusRequest, ServiceStatus};
use proto::names::Service;
use serde::Serialize;
use tonic::Status;

use crate::{AppState, keys};

/// Files larger than this are refused before they are read: above the NATS message limit they could not reach
/// the service anyway.
pub const MAX_UPLOAD_BYTES: usize = 20 * 1024 * 1024;

/// The public port: the public pages and API, the CA certificate and CRL.
pub fn router(state: AppState) -> Router {
    public_routes().route("/", get(crate::pages::home)).with_state(state)
}

/// What both ports serve: the pages and calls that need no login.
fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/api/status", get(platform_status))
        .route("/api/openapi.json", get(openapi))
        .route("/api/unit-names/verify", post(keys::verify_unit_name))
        .route("/api/key-applications", post(keys::apply_for_key))
        .route("/api/key-applications/{application_id}", get(keys::get_key_application))
        .route("/api/key-applications/{application_id}/withdraw", post(keys::withdraw_key_application))
        .route("/api/key-applications/{application_id}/password", post(keys::change_key_password))
        .route("/api/registry/import", post(keys::import_registry).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)))
        .route("/api/agencies/import", post(keys::import_agencies).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)))
        .route("/api/verify/{declaration_id}/{digest}", get(crate::printed::verify_api))
        .route("/verify/{declaration_id}/{digest}", get(crate::printed::verify_page))
        .route("/ca/crl", get(crl))
        .route("/ca/ca.crt", get(ca_certificate))
        .merge(crate::pages::router())
}

/// The logged-in port: login, activation, the main page, the operators' work, and the public pages again (so the
/// site is whole on either port). Every state-changing call of a session needs its CSRF token.
pub fn secure_router(state: AppState) -> Router {
    use crate::{auth, declarations, enrollment, operators};
    Router::new()
        .route("/api/session", post(auth::login_api).get(auth::who_am_i).delete(auth::logout_api))
        .route("/api/key-activation", post(auth::activate_api))
        .route("/api/key-applications", get(operators::list_applications_api))
        .route("/api/key-applications/{application_id}/certificate", post(operators::issue_certificate_api))
        .route("/api/certificates", get(operators::list_certificates_api))
        .route("/api/certificates/{serial}/renew", post(operators::renew_certificate_api))
        .route("/api/certificates/{serial}/revoke", post(operators::revoke_certificate_api))
        .route("/api/accounts", get(operators::list_accounts_api).post(operators::create_account_api))
        .route("/api/api-clients", get(crate::api_clients::list_api).post(crate::api_clients::create_api))
        .route("/api/api-clients/{client_id}", put(crate::api_clients::update_api))
        .route("/api/api-clients/{client_id}/certificates", post(crate::api_clients::certificate_api))
        .route("/api/api-client-certificates/{serial}/revoke", post(crate::api_clients::revoke_api))
        .route("/api/my-unit", get(enrollment::get_my_unit_api).put(enrollment::update_my_unit_api))
        .route("/api/persons", get(enrollment::list_persons_api).post(enrollment::create_person_api))
        .route("/api/persons/check", post(enrollment::check_person_api))
        .route(
            "/api/persons/{person_id}",
            get(enrollment::get_person_api).put(enrollment::update_person_api).delete(enrollment::delete_person_api),
        )
        .route("/api/declaration", get(declarations::get_api).post(declarations::declare_api))
        .route("/api/declaration/withdraw", post(declarations::withdraw_api))
        .route("/api/review-queue", get(declarations::queue_api))
        .route("/api/declarations/{declaration_id}", get(declarations::review_get_api))
        .route("/api/declarations/{declaration_id}/claim", post(declarations::claim_api))
        .route("/api/declarations/{declaration_id}/approve", post(declarations::approve_api))
        .route("/api/declarations/{declaration_id}/reject", post(declarations::reject_api))
        .route("/api/documents", get(crate::printed::list_api))
        .route("/api/documents/bundle", get(crate::printed::bundle_api))
        .route("/api/documents/{document_id}", get(crate::printed::download_api))
        .route("/print", get(crate::printed::print_page))
        .route("/declaration", get(declarations::declaration_page))
        .route("/declaration/declare", post(declarations::declare_submit))
        .route("/declaration/withdraw", post(declarations::withdraw_submit))
        .route("/api/persons/import-template", get(crate::imports::template_api))
        .route(
            "/api/persons/import",
            post(crate::imports::import_api).layer(DefaultBodyLimit::max(crate::imports::MAX_IMPORT_BYTES)),
        )
        .route("/api/persons/export", get(crate::imports::export_api))
        .route("/api/imports/{job_id}", get(crate::imports::job_api))
        .route("/api/imports/{job_id}/report", get(crate::imports::report_api))
        .route(
            "/persons/import",
            get(crate::imports::form_page)
                .post(crate::imports::form_submit)
                .layer(DefaultBodyLimit::max(crate::imports::MAX_IMPORT_BYTES + 64 * 1024)),
        )
        .route("/persons/import/{job_id}", get(crate::imports::job_page))
        .route("/api/roster-changes", get(crate::changes::list_api).post(crate::changes::save_api))
        .route("/api/roster-changes/{change_id}", delete(crate::changes::delete_api))
        .route("/api/change-declaration", post(crate::changes::declare_api))
        .route("/changes", get(crate::changes::page))
        .route("/changes/add", get(crate::changes::add_page).post(crate::changes::add_submit))
        .route("/changes/add/{person_id}", get(crate::changes::edit_add_page).post(crate::changes::edit_add_submit))
        .route("/changes/update/{person_id}", get(crate::changes::update_page).post(crate::changes::update_submit))
        .route("/changes/remove/{person_id}", get(crate::changes::remove_page).post(crate::changes::remove_submit))
        .route("/changes/{change_id}/delete", post(crate::changes::delete_submit))
        .route("/changes/declare", post(crate::changes::declare_submit))
        .route("/changes/withdraw", post(crate::changes::withdraw_submit))
        .route("/api/registration-conflicts", get(crate::conflicts::list_api))
        .route("/api/registration-conflicts/{conflict_id}/end", post(crate::conflicts::end_api))
        .route("/api/persons/{person_id}/history", get(crate::conflicts::history_api))
        .route("/review/conflicts", get(crate::conflicts::page))
        .route("/review/persons/{person_id}/history", get(crate::conflicts::history_page))
        .route("/review/conflicts/{conflict_id}/end", post(crate::conflicts::end_submit))
        .route("/review", get(declarations::queue_page))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/xlsx/{table}", get(crate::dashboard::xlsx))
        .route("/api/enrollment-progress", get(crate::dashboard::api))
        .route("/review/{declaration_id}", get(declarations::review_page))
        .route("/review/{declaration_id}/claim", post(declarations::claim_submit))
        .route("/review/{declaration_id}/approve", post(declarations::approve_submit))
        .route("/review/{declaration_id}/reject", post(declarations::reject_submit))
        .route("/unit", get(enrollment::unit_page).post(enrollment::unit_submit))
        .route("/persons", get(enrollment::persons_page))
        .route("/persons/new", get(enrollment::new_person_page).post(enrollment::new_person_submit))
        .route("/persons/{person_id}", get(enrollment::edit_person_page).post(enrollment::edit_person_submit))
        .route("/persons/{person_id}/delete", post(enrollment::delete_person_submit))
        .route("/login", get(auth::login_page).post(auth::login_submit))
        .route("/logout", post(auth::logout_submit))
        .route("/activate", get(auth::activate_page).post(auth::activate_submit))
        .route("/ca", get(operators::ca_page))
        .route("/ca/applications/{application_id}/make", post(operators::make_submit))
        .route("/ca/certificates/{serial}/renew", post(operators::renew_submit))
        .route("/ca/certificates/{serial}/revoke", post(operators::revoke_submit))
        .route("/admin/accounts", get(operators::accounts_page).post(operators::account_submit))
        .route("/admin/api-clients", get(crate::api_clients::list_page).post(crate::api_clients::create_submit))
        .route(
            "/admin/api-clients/{client_id}",
            get(crate::api_clients::client_page).post(crate::api_clients::update_submit),
        )
        .route("/admin/api-clients/{client_id}/certificates", post(crate::api_clients::certificate_submit))
        .route("/admin/api-clients/{client_id}/certificates/{serial}/revoke", post(crate::api_clients::revoke_submit))
        .route("/", get(auth::main_page))
        .merge(public_routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::session::csrf_guard))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// Logged-in answers carry personal data and, once, private keys: no cache may keep them.
async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `getCrl`: the CA's current CRL (DER), as identity last signed it.
async fn crl(State(state): State<AppState>) -> Response {
    match state.trust.published() {
        Some((der, _)) if !der.is_empty() => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        _ => crate::error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "crl_unavailable",
            "吊销列表暂不可用，请稍后重试",
        )
        .into_response(),
    }
}

/// `getCaCertificate`: the CA certificate (PEM), to trust in a browser or client.
async fn ca_certificate(State(state): State<AppState>) -> Response {
    match state.trust.published() {
        Some((_, pem)) if !pem.is_empty() => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        _ => {
            crate::error::ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ca_unavailable", "CA证书暂不可用，请稍后重试")
                .into_response()
        }
    }
}

/// Calls one service's `GetStatus` over NATS RPC.
pub async fn service_status(platform: &Platform, service: Service) -> Result<ServiceStatus, Status> {
    use proto::identity::identity_client::IdentityClient;
    use proto::personnel::personnel_client::PersonnelClient;
    use proto::printing::printing_client::PrintingClient;
    use proto::units::units_client::UnitsClient;
    let channel = platform.channel(service);
    let reply = match service {
        Service::Identity => IdentityClient::new(channel).get_status(GetStatusRequest {}).await,
        Service::Units => UnitsClient::new(channel).get_status(GetStatusRequest {}).await,
        Service::Personnel => PersonnelClient::new(channel).get_status(GetStatusRequest {}).await,
        Service::Printing => PrintingClient::new(channel).get_status(GetStatusRequest {}).await,
    };
    reply.map(tonic::Response::into_inner)
}

/// One service in `/api/status`.
#[derive(Debug, Serialize)]
struct ServiceReport {
    service: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_backlog: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn service_reports(platform: &Platform) -> Vec<ServiceReport> {
    let calls = Service::ALL.map(|service| async move { (service, service_status(platform, service).await) });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|(service, result)| match result {
            Ok(status) => ServiceReport {
                service: service.as_str(),
                ok: true,
                version: Some(status.version),
                instance_id: Some(status.instance_id),
                uptime_seconds: Some(status.uptime_seconds),
                outbox_backlog: Some(status.outbox_backlog),
                schema_version: Some(status.schema_version),
                error: None,
            },
            Err(status) => ServiceReport {
                service: service.as_str(),
                ok: false,
                version: None,
                instance_id: None,
                uptime_seconds: None,
                outbox_backlog: None,
                schema_version: None,
                error: Some(format!("{:?}: {}", status.code(), status.message())),
            },
        })
        .collect()
}

/// `getPlatformStatus`: every service's status; 503 when any service cannot answer.
async fn platform_status(State(state): State<AppState>) -> Response {
    let services = service_reports(&state.platform).await;
    if let Some(down) = services.iter().find(|report| !report.ok) {
        let message = format!("服务 {} 暂时不可用，请稍后重试", down.service);
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "code": "service_unavailable", "message": message, "services": services })),
        )
            .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    Json(serde_json::json!({ "services": services })).into_response()
}

/// The OpenAPI document of the JSON API, kept as a file beside the code it describes.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}
