//! The JSON API and public pages of the HTTP port. Errors are JSON with a stable machine-readable `code` and a
//! Chinese `message`; a service that cannot be reached is 503 with `Retry-After`, never a 500.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kit::service::Platform;
use proto::common::{GetStatusRequest, ServiceStatus};
use proto::names::Service;
use serde::Serialize;
use tonic::Status;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/api/status", get(platform_status))
        .route("/api/openapi.json", get(openapi))
        .with_state(state)
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

/// The public status page: which services answer, in Chinese, with no personal data.
async fn status_page(State(state): State<AppState>) -> Html<String> {
    let services = service_reports(&state.platform).await;
    let rows: String = services
        .iter()
        .map(|report| {
            let state = if report.ok { "正常" } else { "不可用" };
            format!(
                "<tr><th scope=\"row\">{}</th><td class=\"{}\">{state}</td><td>{}</td></tr>",
                service_label(report.service),
                if report.ok { "ok" } else { "down" },
                escape(report.version.as_deref().unwrap_or("—")),
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>机关事业单位养老保险参保登记平台</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:48rem}}\
         table{{border-collapse:collapse}}th,td{{padding:.4rem 1rem;border-bottom:1px solid #ddd;text-align:left}}\
         .ok{{color:#1a7f37}}.down{{color:#cf222e}}</style></head><body>\
         <h1>机关事业单位养老保险参保登记平台</h1><h2>服务状态</h2>\
         <table><thead><tr><th scope=\"col\">服务</th><th scope=\"col\">状态</th><th scope=\"col\">版本</th></tr></thead>\
         <tbody>{rows}</tbody></table>\
         <p><a href=\"/api/openapi.json\">接口文档（OpenAPI）</a> · <a href=\"/readyz\">就绪检查</a></p>\
         </body></html>"
    ))
}

fn service_label(service: &str) -> &'static str {
    match service {
        "identity" => "身份认证与证书",
        "units" => "参保单位",
        "personnel" => "人员登记",
        "printing" => "表单打印",
        _ => "未知服务",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The OpenAPI document of the JSON API.
async fn openapi() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "机关事业单位养老保险参保登记平台 API",
            "version": kit::service::VERSION,
            "description": "JSON API of the provincial pension enrollment platform. Errors carry a stable `code` and a Chinese `message`."
        },
        "paths": {
            "/api/status": {
                "get": {
                    "operationId": "getPlatformStatus",
                    "summary": "Every service's status, asked over the platform's internal RPC",
                    "responses": {
                        "200": { "description": "Every service answered", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PlatformStatus" } } } },
                        "503": { "description": "A service cannot be reached", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PlatformStatus" } } } }
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": { "type": "string", "description": "Stable machine-readable error code" },
                        "message": { "type": "string", "description": "Chinese message for people" },
                        "field": { "type": "string", "description": "The request field at fault, when one is" }
                    }
                },
                "PlatformStatus": {
                    "type": "object",
                    "required": ["services"],
                    "properties": {
                        "code": { "type": "string" },
                        "message": { "type": "string" },
                        "services": { "type": "array", "items": { "$ref": "#/components/schemas/ServiceStatus" } }
                    }
                },
                "ServiceStatus": {
                    "type": "object",
                    "required": ["service", "ok"],
                    "properties": {
                        "service": { "type": "string", "enum": ["identity", "units", "personnel", "printing"] },
                        "ok": { "type": "boolean" },
                        "version": { "type": "string" },
                        "instance_id": { "type": "string" },
                        "uptime_seconds": { "type": "integer", "minimum": 0 },
                        "outbox_backlog": { "type": "integer", "minimum": 0 },
                        "schema_version": { "type": "integer" },
                        "error": { "type": "string" }
                    }
                }
            }
        }
    }))
}
