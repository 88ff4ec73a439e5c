//! Spreadsheet imports and exports of people on 8443: the JSON API (`downloadImportTemplate`, `importPersons` with the
//! raw file as body, `getImportJob`, `downloadImportReport`, `exportPersons`) and the pages: the upload form, and the
//! job's page, which refreshes itself while the job waits or runs and then shows the report. The file goes to
//! personnel in chunks under NATS's message size; personnel checks, queues and runs the job.

use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{
    CreateImportJobRequest, ExportPersonsRequest, GetImportJobRequest, GetImportTemplateRequest, ImportJob,
    PutImportChunkRequest, SpreadsheetFile,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::enrollment::user;
use crate::error::ApiError;
use crate::keys::rfc3339;
use crate::session::SignedIn;

/// The largest upload taken: personnel refuses a larger file anyway; the gateway does before reading it whole.
pub const MAX_IMPORT_BYTES: usize = crate::api::MAX_UPLOAD_BYTES;

/// The bytes of one chunk sent to personnel.
const CHUNK: usize = 512 * 1024;

/// Warning codes a page's "accept the file's warnings" box accepts: the population registry's doubts and the
/// rules' plausibility checks, never an error.
const PAGE_ACCEPTABLE_WARNINGS: [&str; 6] = [
    "population_not_found",
    "population_name_mismatch",
    "work_start_under_16",
    "wage_base_out_of_range",
    "retired_below_normal_age",
    "population_unavailable",
];

fn personnel(state: &AppState) -> PersonnelClient<kit::rpc::NatsChannel> {
    PersonnelClient::new(state.platform.channel(Service::Personnel))
}

fn operator(signed_in: &SignedIn) -> Result<(), ApiError> {
    signed_in.require(&["unit_operator"])
}

/// A job as the API shows it.
pub fn job_json(job: &ImportJob) -> serde_json::Value {
    serde_json::json!({
        "job_id": job.job_id, "kind": job.kind, "mode": job.mode, "state": job.state, "state_label": job.state_label,
        "file_name": job.file_name, "file_size": job.file_size, "rows_total": job.rows_total,
        "rows_done": job.rows_done, "rows_saved": job.rows_saved, "rows_failed": job.rows_failed,
        "rows_per_second": job.rows_per_second, "seconds_left": job.seconds_left,
        "place_in_line": job.place_in_line, "error_code": job.error_code, "error": job.error,
        "created_at": rfc3339(job.created_at), "finished_at": rfc3339(job.finished_at),
        "rows": job.rows.iter().map(|row| serde_json::json!({
            "row_number": row.row_number, "outcome": row.outcome, "name": row.name, "person_id": row.person_id,
            "findings": row.findings.iter().map(|finding| serde_json::json!({
                "field": finding.field, "column": finding.column, "code": finding.code, "message": finding.message,
                "warning": finding.warning,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A workbook as a download named `file.file_name` (`ascii_name` for clients that cannot take the UTF-8 name).
pub(crate) fn xlsx(file: SpreadsheetFile, ascii_name: &str) -> Response {
    let disposition = crate::printed::content_disposition(false, ascii_name, &file.file_name);
    let mut response = file.content.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// What an import is asked to do.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ImportQuery {
    pub kind: String,
    pub mode: String,
    /// Warning codes accepted for every row, comma-separated.
    pub accept: String,
    pub file_name: String,
}

/// Sends `file` to personnel as a new job and queues it.
async fn start(
    state: &AppState,
    signed_in: &SignedIn,
    query: &ImportQuery,
    file: &[u8],
) -> Result<ImportJob, ApiError> {
    operator(signed_in)?;
    if file.len() > MAX_IMPORT_BYTES {
        return Err(too_large());
    }
    let mut client = personnel(state);
    let accepted = query.accept.split(',').map(str::trim).filter(|code| !code.is_empty()).map(str::to_owned).collect();
    let created = client
        .create_import_job(CreateImportJobRequest {
            caller: signed_in.caller(),
            kind: query.kind.clone(),
            mode: query.mode.clone(),
            file_name: query.file_name.clone(),
            file_size: file.len() as u64,
            file_sha256: kit::convert::hex(&Sha256::digest(file)),
            accepted_warnings: accepted,
        })
        .await
        .map_err(ApiError::from)?
        .into_inner();
    for (at, chunk) in file.chunks(CHUNK).enumerate() {
        let put = PutImportChunkRequest {
            caller: signed_in.caller(),
            job_id: created.job_id.clone(),
            offset: (at * CHUNK) as u64,
            data: chunk.to_vec(),
        };
        client.put_import_chunk(put).await.map_err(ApiError::from)?;
    }
    let submit = GetImportJobRequest { caller: signed_in.caller(), job_id: created.job_id };
    Ok(client.submit_import_job(submit).await.map_err(ApiError::from)?.into_inner())
}

async fn job(state: &AppState, signed_in: &SignedIn, job_id: String) -> Result<ImportJob, ApiError> {
    operator(signed_in)?;
    let request = GetImportJobRequest { caller: signed_in.caller(), job_id };
    Ok(personnel(state).get_import_job(request).await.map_err(ApiError::from)?.into_inner())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KindQuery {
    pub kind: String,
}

/// `downloadImportTemplate`: GET /api/persons/import-template?kind=.
pub async fn template_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<KindQuery>,
) -> Response {
    if let Err(problem) = operator(&signed_in) {
        return problem.into_response();
    }
    let request = GetImportTemplateRequest { caller: signed_in.caller(), kind: query.kind };
    match personnel(&state).get_import_template(request).await {
        Ok(reply) => xlsx(reply.into_inner(), "import-template.xlsx"),
        Err(status) => ApiError::from(status).into_response(),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("文件超过{}MB，请拆分后分批导入", MAX_IMPORT_BYTES / (1024 * 1024)),
    )
}

/// `importPersons`: POST /api/persons/import?kind=&mode=&accept= with the file as the body; 202 with the job. A
/// declared length over the limit is refused before the body is read.
pub async fn import_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ImportQuery>,
    request: axum::extract::Request,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_IMPORT_BYTES) {
        return too_large().into_response();
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_IMPORT_BYTES).await else {
        return too_large().into_response();
    };
    match start(&state, &signed_in, &query, &body).await {
        Ok(job) => (StatusCode::ACCEPTED, Json(job_json(&job))).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `getImportJob`: GET /api/imports/{job_id}.
pub async fn job_api(State(state): State<AppState>, signed_in: SignedIn, Path(job_id): Path<String>) -> Response {
    job(&state, &signed_in, job_id).await.map(|job| Json(job_json(&job))).into_response()
}

/// `downloadImportReport`: GET /api/imports/{job_id}/report.
pub async fn report_api(State(state): State<AppState>, signed_in: SignedIn, Path(job_id): Path<String>) -> Response {
    if let Err(problem) = operator(&signed_in) {
        return problem.into_response();
    }
    let request = GetImportJobRequest { caller: signed_in.caller(), job_id };
    match personnel(&state).get_import_report(request).await {
        Ok(reply) => xlsx(reply.into_inner(), "import-report.xlsx"),
        Err(status) => ApiError::from(status).into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ExportQuery {
    pub kind: String,
    pub declaration_id: String,
}

/// `exportPersons`: GET /api/persons/export?kind=&declaration_id=: the unit operator's people, or a declared roster
/// for the unit or its agency's reviewer.
pub async fn export_api(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(query): Query<ExportQuery>,
) -> Response {
    let roles: &[&str] = if query.declaration_id.is_empty() {
        &["unit_operator"]
    } else {
        &["unit_operator", "agency_reviewer", "province_admin"]
    };
    if let Err(problem) = signed_in.require(roles) {
        return problem.into_response();
    }
    let request =
        ExportPersonsRequest { caller: signed_in.caller(), kind: query.kind, declaration_id: query.declaration_id };
    match personnel(&state).export_persons(request).await {
        Ok(reply) => xlsx(reply.into_inner(), "persons.xlsx"),
        Err(status) => ApiError::from(status).into_response(),
    }
}

// ---- pages ----

async fn render_form(state: &AppState, signed_in: &SignedIn, error: &str) -> Response {
    if let Err(problem) = operator(signed_in) {
        return crate::operators::denied(state, signed_in, &problem);
    }
    state.pages.render(
        "import.html",
        context! { section => "persons", user => user(signed_in), csrf => signed_in.session.csrf_token.clone(),
        kinds => crate::enrollment::PAGE_KINDS.to_vec(), error => error,
        max_mb => MAX_IMPORT_BYTES / (1024 * 1024) },
    )
}

/// 批量导入: the template links and the upload form.
pub async fn form_page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    render_form(&state, &signed_in, "").await
}

/// The upload: kind, mode, whether the file's warnings are accepted, and the file.
pub async fn form_submit(State(state): State<AppState>, signed_in: SignedIn, mut multipart: Multipart) -> Response {
    let mut query = ImportQuery::default();
    let mut file = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                let message = if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("文件超过{}MB，请拆分后分批导入", MAX_IMPORT_BYTES / (1024 * 1024))
                } else {
                    "上传未完成，请重新选择文件上传".to_owned()
                };
                return render_form(&state, &signed_in, &message).await;
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            query.file_name = field.file_name().unwrap_or_default().to_owned();
        }
        let Ok(bytes) = field.bytes().await else {
            return render_form(&state, &signed_in, "上传未完成，请重新选择文件上传").await;
        };
        match name.as_str() {
            "file" => file = bytes.to_vec(),
            "kind" => query.kind = String::from_utf8_lossy(&bytes).into_owned(),
            "mode" => query.mode = String::from_utf8_lossy(&bytes).into_owned(),
            "accept_warnings" => query.accept = PAGE_ACCEPTABLE_WARNINGS.join(","),
            _ => {}
        }
    }
    if file.is_empty() {
        return render_form(&state, &signed_in, "请选择要导入的文件").await;
    }
    match start(&state, &signed_in, &query, &file).await {
        Ok(job) => Redirect::to(&format!("/persons/import/{}", job.job_id)).into_response(),
        Err(problem) => {
            let message = problem.errors.first().map_or(problem.message.clone(), |error| error.message.clone());
            render_form(&state, &signed_in, &message).await
        }
    }
}

/// A job's page: progress while it waits or runs (the page refreshes itself), then the report.
pub async fn job_page(State(state): State<AppState>, signed_in: SignedIn, Path(job_id): Path<String>) -> Response {
    match job(&state, &signed_in, job_id).await {
        Ok(job) => {
            let running = matches!(job.state.as_str(), "uploading" | "queued" | "running");
            let percent = (job.rows_done * 100).checked_div(job.rows_total).unwrap_or(0);
            state.pages.render(
                "import_job.html",
                context! { section => "persons", user => user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
                job => Value::from(Serde(job_json(&job))), running => running, percent => percent },
            )
        }
        Err(problem) => crate::operators::denied(&state, &signed_in, &problem),
    }
}
