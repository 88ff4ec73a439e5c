//! The printed registration forms: the JSON API (`listDocuments`, `downloadDocument`, `downloadBundle` on 8443,
//! `verifyDocument` on both ports), the print page after declaring (each form, 一键打印, reprinted at will), the
//! reviewer's copy on the review page, and the public page a form's QR code opens. Printing decides who may read;
//! this module carries the caller, assembles the chunks and renders.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::printing::printing_client::PrintingClient;
use proto::printing::{ListDocumentsReply, ListDocumentsRequest, ReadDocumentRequest, VerifyDocumentRequest};
use serde::Deserialize;

use crate::AppState;
use crate::enrollment::user;
use crate::error::ApiError;
use crate::keys::rfc3339;
use crate::session::SignedIn;

fn printing(state: &AppState) -> PrintingClient<kit::rpc::NatsChannel> {
    PrintingClient::new(state.platform.channel(Service::Printing))
}

pub fn documents_json(reply: &ListDocumentsReply) -> serde_json::Value {
    serde_json::json!({
        "declaration_id": reply.declaration_id, "unit_name": reply.unit_name, "state": reply.state,
        "rendered": reply.rendered,
        "documents": reply.documents.iter().map(|document| serde_json::json!({
            "document_id": document.document_id, "kind": document.kind, "title": document.title,
            "pages": document.pages, "size": document.size, "sha256": document.sha256,
            "rendered_at": rfc3339(document.rendered_at),
            "url": format!("/api/documents/{}", document.document_id),
        })).collect::<Vec<_>>(),
    })
}

/// The documents of the caller's own unit's latest declaration (`declaration_id` empty) or of the one named. The
/// latest is units' word: printing learns of a declaration only when it renders it, and until then an earlier
/// declaration's forms must not pass for the new one's.
pub async fn documents(
    state: &AppState,
    signed_in: &SignedIn,
    declaration_id: &str,
) -> Result<ListDocumentsReply, ApiError> {
    let mut declaration_id = declaration_id.trim().to_owned();
    if declaration_id.is_empty() && signed_in.session.role == "unit_operator" {
        let request = proto::units::GetDeclarationRequest { caller: signed_in.caller(), declaration_id: String::new() };
        let latest = proto::units::units_client::UnitsClient::new(state.platform.channel(Service::Units))
            .get_declaration(request)
            .await
            .map_err(ApiError::from)?
            .into_inner();
        if latest.state == "abandoned" {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "documents_not_found", "本单位尚未申报"));
        }
        declaration_id = latest.declaration_id;
    }
    let request = ListDocumentsRequest { caller: signed_in.caller(), declaration_id: declaration_id.clone() };
    match printing(state).list_documents(request).await {
        Ok(reply) => Ok(reply.into_inner()),
        // Declared, not rendered yet.
        Err(status) if status.code() == tonic::Code::NotFound && !declaration_id.is_empty() => {
            Ok(ListDocumentsReply { declaration_id, rendered: false, ..ListDocumentsReply::default() })
        }
        Err(status) => Err(ApiError::from(status)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DocumentsQuery {
    pub declaration_id: String,
}

/// `listDocuments`: GET /api/documents.
pub async fn list_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<DocumentsQuery>,
) -> Response {
    documents(&state, &signed_in, &query.declaration_id).await.map(|reply| Json(documents_json(&reply))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DownloadQuery {
    /// `inline` opens the PDF in the browser to print it; anything else downloads it.
    pub disposition: String,
}

/// A whole document as a PDF response, read chunk by chunk (a chunk fits in a NATS message).
async fn download(
    state: &AppState,
    signed_in: &SignedIn,
    document_id: &str,
    inline: bool,
) -> Result<Response, ApiError> {
    let mut client = printing(state);
    let mut pdf = Vec::new();
    let mut document = None;
    loop {
        let request = ReadDocumentRequest {
            caller: signed_in.caller(),
            document_id: document_id.to_owned(),
            offset: pdf.len() as u64,
        };
        let chunk = client.read_document(request).await.map_err(ApiError::from)?.into_inner();
        let size = chunk.document.as_ref().map_or(0, |document| document.size);
        document = chunk.document.or(document);
        if chunk.data.is_empty() && (pdf.len() as u64) < size {
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, "document_incomplete", "登记表读取不完整，请重试"));
        }
        pdf.extend(chunk.data);
        if pdf.len() as u64 >= size {
            break;
        }
    }
    let document = document.unwrap_or_default();
    let disposition =
        content_disposition(inline, &format!("{}.pdf", document.kind), &format!("{}.pdf", document.title));
    let mut response = pdf.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pdf"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&document.sha256) {
        headers.insert("x-document-sha256", value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(response)
}

/// `downloadDocument`: GET /api/documents/{document_id}.
pub async fn download_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(document_id): Path<String>,
    Query(query): Query<DownloadQuery>,
) -> Response {
    download(&state, &signed_in, &document_id, query.disposition == "inline").await.into_response()
}

/// `downloadBundle`: GET /api/documents/bundle, 一键打印 of the caller's own unit's latest declaration.
pub async fn bundle_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<DownloadQuery>,
) -> Response {
    let result = async {
        signed_in.require(&["unit_operator"])?;
        let reply = documents(&state, &signed_in, "").await?;
        let Some(bundle) = reply.documents.iter().find(|document| document.kind == "bundle") else {
            return Err(ApiError::new(StatusCode::CONFLICT, "not_rendered", "登记表正在生成，请稍后再试"));
        };
        download(&state, &signed_in, &bundle.document_id, query.disposition == "inline").await
    }
    .await;
    result.into_response()
}

async fn verify(state: &AppState, declaration_id: &str, digest: &str) -> Result<serde_json::Value, ApiError> {
    let request = VerifyDocumentRequest { declaration_id: declaration_id.to_owned(), digest: digest.to_owned() };
    let reply = printing(state).verify_document(request).await.map_err(ApiError::from)?.into_inner();
    Ok(serde_json::json!({
        "matches": reply.matches, "snapshot": reply.snapshot, "unit_name": reply.unit_name,
        "declared_at": rfc3339(reply.declared_at), "state": reply.state,
    }))
}

/// `verifyDocument`: GET /api/verify/{declaration_id}/{digest}, public.
pub async fn verify_api(
    State(state): State<AppState>,
    Path((declaration_id, digest)): Path<(String, String)>,
) -> Response {
    verify(&state, &declaration_id, &digest).await.map(Json).into_response()
}

fn state_label(state: &str) -> &'static str {
    match state {
        "declared" => "已申报，等待审核",
        "claimed" => "审核中",
        "approved" => "审核通过",
        "rejected" => "已退回（此表对应的申报已失效）",
        "withdrawn" => "已撤回（此表对应的申报已失效）",
        _ => "",
    }
}

/// The page a form's QR code opens: whether the printed form is what was declared, and nothing personal.
pub async fn verify_page(
    State(state): State<AppState>,
    Path((declaration_id, digest)): Path<(String, String)>,
) -> Response {
    match verify(&state, &declaration_id, &digest).await {
        Ok(result) => {
            let state_text = state_label(result["state"].as_str().unwrap_or_default());
            state.pages.render(
                "verify.html",
                context! { result => Value::from(Serde(result)), state_label => state_text, declaration_id => declaration_id },
            )
        }
        Err(problem) => {
            let mut response = state.pages.render("verify.html", context! { error => problem.message.clone() });
            *response.status_mut() = problem.status;
            response
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PrintQuery {
    pub done: String,
}

/// The print page of the unit's latest declaration: each form, 一键打印, reprinted at will.
pub async fn print_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<PrintQuery>,
) -> Response {
    if let Err(problem) = signed_in.require(&["unit_operator"]) {
        return crate::operators::denied(&state, &signed_in, &problem);
    }
    let message = if query.done == "declared" {
        "已申报：单位信息和人员信息已锁定，请打印登记表，盖章后报经办机构。"
    } else {
        ""
    };
    let listed = match documents(&state, &signed_in, "").await {
        Ok(reply) => Some(documents_json(&reply)),
        Err(problem) if problem.status == StatusCode::NOT_FOUND => None,
        Err(problem) => return crate::operators::denied(&state, &signed_in, &problem),
    };
    state.pages.render(
        "print.html",
        context! { section => "print", user => user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
        listed => Value::from(Serde(listed)), message => message },
    )
}

/// A Content-Disposition for a file whose name is Chinese: the plain filename is ASCII (`ascii_name`), the RFC 5987
/// one carries the real name.
pub fn content_disposition(inline: bool, ascii_name: &str, file_name: &str) -> String {
    let encoded: String = file_name
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b".-_".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    format!("{}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}", if inline { "inline" } else { "attachment" })
}
