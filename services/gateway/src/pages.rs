//! The web UI: server-rendered zh-CN pages that work without JavaScript, by keyboard and on a tablet. Each form
//! posts to the gateway, which calls the service and renders the result, or the same form with a message at every
//! field at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use minijinja::value::Serde;
use minijinja::{Environment, Value, context};
use proto::identity::{
    ChangeKeyPasswordRequest, GetKeyApplicationRequest, VerifyUnitNameRequest, WithdrawKeyApplicationRequest,
};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::keys::{ApplicationView, ImportKind, VerifyView, identity, public_caller};

/// The page templates, compiled once at start-up.
#[derive(Debug)]
pub struct Pages {
    templates: Environment<'static>,
}

impl Pages {
    pub fn new() -> Self {
        let mut templates = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("../templates/layout.html")),
            ("macros.html", include_str!("../templates/macros.html")),
            ("home.html", include_str!("../templates/home.html")),
            ("apply_unit.html", include_str!("../templates/apply_unit.html")),
            ("apply_applicant.html", include_str!("../templates/apply_applicant.html")),
            ("application.html", include_str!("../templates/application.html")),
            ("lookup.html", include_str!("../templates/lookup.html")),
            ("admin_import.html", include_str!("../templates/admin_import.html")),
            ("login.html", include_str!("../templates/login.html")),
            ("activate.html", include_str!("../templates/activate.html")),
            ("main.html", include_str!("../templates/main.html")),
            ("ca.html", include_str!("../templates/ca.html")),
            ("issued.html", include_str!("../templates/issued.html")),
            ("accounts.html", include_str!("../templates/accounts.html")),
            ("api_clients.html", include_str!("../templates/api_clients.html")),
            ("api_client.html", include_str!("../templates/api_client.html")),
            ("api_client_scopes.html", include_str!("../templates/api_client_scopes.html")),
            ("api_client_issued.html", include_str!("../templates/api_client_issued.html")),
            ("unit.html", include_str!("../templates/unit.html")),
            ("persons.html", include_str!("../templates/persons.html")),
            ("person.html", include_str!("../templates/person.html")),
            ("declaration.html", include_str!("../templates/declaration.html")),
            ("review_queue.html", include_str!("../templates/review_queue.html")),
            ("review.html", include_str!("../templates/review.html")),
            ("print.html", include_str!("../templates/print.html")),
            ("verify.html", include_str!("../templates/verify.html")),
            ("conflicts.html", include_str!("../templates/conflicts.html")),
            ("changes.html", include_str!("../templates/changes.html")),
            ("change_remove.html", include_str!("../templates/change_remove.html")),
            ("person_history.html", include_str!("../templates/person_history.html")),
            ("import.html", include_str!("../templates/import.html")),
            ("import_job.html", include_str!("../templates/import_job.html")),
            ("dashboard.html", include_str!("../templates/dashboard.html")),
        ] {
            // The templates are part of the binary and covered by tests, so a syntax error is a build defect.
            if let Err(error) = templates.add_template(name, source) {
                panic!("template {name} does not compile: {error}");
            }
        }
        templates.add_filter("beijing", beijing_time);
        Self { templates }
    }

    /// A page's HTML, or the error's text in its place (benchmarks and tests).
    pub fn render_to_string(&self, name: &str, context: Value) -> String {
        match self.templates.get_template(name).and_then(|template| template.render(context)) {
            Ok(html) => html,
            Err(error) => format!("cannot render {name}: {error}"),
        }
    }

    pub fn render(&self, name: &str, context: Value) -> Response {
        match self.templates.get_template(name).and_then(|template| template.render(context)) {
            Ok(html) => Html(html).into_response(),
            Err(error) => {
                tracing::error!(%error, template = name, "cannot render a page");
                (StatusCode::INTERNAL_SERVER_ERROR, Html("<h1>系统内部错误</h1>".to_owned())).into_response()
            }
        }
    }
}

/// An RFC 3339 instant as the province reads it: Beijing time, to the second; anything else as it is.
fn beijing_time(value: String) -> String {
    let beijing = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::parse(&value, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|at| at.to_offset(beijing).format(format).ok())
        .unwrap_or(value)
}

impl Default for Pages {
    fn default() -> Self {
        Self::new()
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/site.css", get(stylesheet))
        .route("/keys/apply", get(apply_start).post(apply_submit))
        .route("/keys/apply/verify", axum::routing::post(apply_verify))
        .route("/keys/query", get(query))
        .route("/keys/withdraw", get(withdraw_form).post(withdraw_submit))
        .route("/keys/password", get(password_form).post(password_submit))
        .route(
            "/admin/registry",
            get(admin_import_form)
                .post(admin_import_submit)
                .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_UPLOAD_BYTES)),
        )
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../templates/site.css")).into_response()
}

pub async fn home(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    state.pages.render("home.html", context! { section => "home", login_url => login_url(&state, &headers) })
}

/// Where to log in: the configured address, or the https port of the host the page was asked from.
pub fn login_url(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    if let Some(url) = &state.login_url {
        return url.clone();
    }
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    format!("https://{host}:{}/login", state.https_port)
}

/// Percent-encodes text for a query string.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A refusal as a page shows it: a message per field, and a general message for what belongs to no field.
pub fn page_errors(error: &ApiError) -> (BTreeMap<String, String>, String) {
    let fields: BTreeMap<String, String> =
        error.errors.iter().map(|violation| (violation.field.clone(), violation.message.clone())).collect();
    let message =
        if fields.is_empty() { error.message.clone() } else { "请按提示修改后重新提交。".to_owned() };
    (fields, message)
}

#[derive(Debug, Default, Deserialize)]
struct UnitForm {
    #[serde(default)]
    category: String,
    #[serde(default)]
    unit_type: String,
    #[serde(default)]
    unit_name: String,
}

async fn apply_start(State(state): State<AppState>) -> Response {
    state.pages.render("apply_unit.html", context! { section => "keys", errors => BTreeMap::<String, String>::new() })
}

/// 校验: a match moves on to the applicant's details; a miss stays, with the closest names to pick from.
async fn apply_verify(State(state): State<AppState>, Form(form): Form<UnitForm>) -> Response {
    let request = VerifyUnitNameRequest { unit_type: form.unit_type.clone(), unit_name: form.unit_name.clone() };
    match identity(&state).verify_unit_name(request).await {
        Ok(reply) => {
            let view = VerifyView::from(reply.into_inner());
            if view.matched {
                return state.pages.render(
                    "apply_applicant.html",
                    context! { section => "keys", category => form.category, unit_type => form.unit_type,
                               unit => Value::from(Serde(&view.unit)), keys => Value::from(Serde(&view.keys)), errors => BTreeMap::<String, String>::new() },
                );
            }
            let mut errors = BTreeMap::new();
            errors.insert("unit_name".to_owned(), "编制通中没有这个单位名称，请核对后重新输入".to_owned());
            state.pages.render(
                "apply_unit.html",
                context! { section => "keys", unit_type => form.unit_type, unit_name => form.unit_name,
                errors => errors, candidates => view.candidates },
            )
        }
        Err(status) => {
            let (errors, message) = page_errors(&ApiError::from(status));
            state.pages.render(
                "apply_unit.html",
                context! { section => "keys", unit_type => form.unit_type, unit_name => form.unit_name,
                errors => errors, message => message },
            )
        }
    }
}

/// The applicant step's form: the application itself plus the password typed a second time.
#[derive(Debug, Default, Deserialize)]
struct ApplicantForm {
    #[serde(flatten)]
    application: crate::keys::ApplyBody,
    #[serde(default)]
    password_confirm: String,
}

async fn apply_submit(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Form(form): Form<ApplicantForm>,
) -> Response {
    let result = if let Err(error) = crate::limits::public_write(&state, "apply", remote.ip()).await {
        Err(error)
    } else if form.application.password != form.password_confirm {
        Err(ApiError {
            errors: vec![crate::error::FieldError {
                field: "password_confirm".into(),
                code: "password_mismatch".into(),
                message: "两次输入的登录密码不一致".into(),
            }],
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "password_mismatch", "两次输入的登录密码不一致")
        })
    } else {
        let request = form.application.clone().into_request(public_caller(remote));
        identity(&state).apply_for_key(request).await.map(|reply| reply.into_inner()).map_err(ApiError::from)
    };
    match result {
        Ok(application) => state.pages.render(
            "application.html",
            context! { section => "keys", heading => "密钥申请已提交", done => "申请已提交，请记下申请编号和登录用户名。",
                       first_time => true, application => Value::from(Serde(ApplicationView::from(application))) },
        ),
        Err(error) => {
            // Re-verify so the page shows the unit and its keys again beside the messages.
            let verify = VerifyUnitNameRequest { unit_type: form.application.unit_type.clone(), unit_name: form.application.unit_name.clone() };
            let view = identity(&state).verify_unit_name(verify).await.ok().map(|reply| VerifyView::from(reply.into_inner()));
            let (errors, message) = page_errors(&error);
            match view.filter(|view| view.matched) {
                Some(view) => state.pages.render(
                    "apply_applicant.html",
                    context! { section => "keys", category => form.application.category, unit_type => form.application.unit_type,
                               unit => Value::from(Serde(&view.unit)), keys => Value::from(Serde(&view.keys)), errors => errors, message => message,
                               applicant_name => form.application.applicant_name, applicant_id_number => form.application.applicant_id_number,
                               phone => form.application.phone },
                ),
                None => state.pages.render(
                    "apply_unit.html",
                    context! { section => "keys", unit_type => form.application.unit_type, unit_name => form.application.unit_name,
                               errors => errors, message => message },
                ),
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct LookupForm {
    #[serde(default)]
    application_id: String,
    #[serde(default)]
    applicant_id_number: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    password_confirm: String,
    #[serde(default)]
    confirm: String,
}

async fn query(State(state): State<AppState>, Query(form): Query<LookupForm>) -> Response {
    let form_page = |errors: BTreeMap<String, String>, message: String, application_id: String| {
        state.pages.render(
            "lookup.html",
            context! { section => "keys", heading => "申请查询", method => "get", action => "/keys/query",
            button => "查询", errors => errors, message => message, application_id => application_id },
        )
    };
    if form.application_id.trim().is_empty() {
        return form_page(BTreeMap::new(), String::new(), String::new());
    }
    let request = GetKeyApplicationRequest { application_id: form.application_id.trim().to_owned() };
    match identity(&state).get_key_application(request).await {
        Ok(reply) => state.pages.render(
            "application.html",
            context! { section => "keys", heading => "密钥申请", application => Value::from(Serde(ApplicationView::from(reply.into_inner()))) },
        ),
        Err(status) => {
            let (mut errors, message) = page_errors(&ApiError::from(status));
            if errors.is_empty() {
                errors.insert("application_id".into(), message.clone());
            }
            form_page(errors, String::new(), form.application_id)
        }
    }
}

fn withdraw_page(state: &AppState, form: &LookupForm, errors: BTreeMap<String, String>, message: String) -> Response {
    state.pages.render(
        "lookup.html",
        context! { section => "keys", heading => "申请撤回", method => "post", action => "/keys/withdraw",
        intro => "只有新申请且密钥尚未制作的申请可以撤回。", needs_id_number => true,
        confirm => "我确认撤回此密钥申请，撤回后不能恢复", button => "撤回申请",
        errors => errors, message => message, application_id => form.application_id.clone(),
        applicant_id_number => form.applicant_id_number.clone() },
    )
}

async fn withdraw_form(State(state): State<AppState>) -> Response {
    withdraw_page(&state, &LookupForm::default(), BTreeMap::new(), String::new())
}

async fn withdraw_submit(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Form(form): Form<LookupForm>,
) -> Response {
    if form.confirm != "yes" {
        let errors = BTreeMap::from([("confirm".to_owned(), "请勾选确认后再撤回".to_owned())]);
        return withdraw_page(&state, &form, errors, String::new());
    }
    if let Err(error) = crate::limits::public_write(&state, "application", remote.ip()).await {
        return withdraw_page(&state, &form, BTreeMap::new(), error.message);
    }
    let request = WithdrawKeyApplicationRequest {
        caller: public_caller(remote),
        application_id: form.application_id.trim().to_owned(),
        applicant_id_number: form.applicant_id_number.clone(),
    };
    match identity(&state).withdraw_key_application(request).await {
        Ok(reply) => state.pages.render(
            "application.html",
            context! { section => "keys", heading => "申请撤回", done => "申请已撤回。",
            application => Value::from(Serde(ApplicationView::from(reply.into_inner()))) },
        ),
        Err(status) => {
            let (errors, message) = page_errors(&ApiError::from(status));
            withdraw_page(&state, &form, errors, message)
        }
    }
}

fn password_page(state: &AppState, form: &LookupForm, errors: BTreeMap<String, String>, message: String) -> Response {
    state.pages.render(
        "lookup.html",
        context! { section => "keys", heading => "修改登录密码", method => "post", action => "/keys/password",
        needs_id_number => true, needs_password => true, button => "修改密码",
        errors => errors, message => message, application_id => form.application_id.clone(),
        applicant_id_number => form.applicant_id_number.clone() },
    )
}

async fn password_form(State(state): State<AppState>) -> Response {
    password_page(&state, &LookupForm::default(), BTreeMap::new(), String::new())
}

async fn password_submit(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Form(form): Form<LookupForm>,
) -> Response {
    if form.new_password != form.password_confirm {
        let errors = BTreeMap::from([("password_confirm".to_owned(), "两次输入的新登录密码不一致".to_owned())]);
        return password_page(&state, &form, errors, String::new());
    }
    if let Err(error) = crate::limits::public_write(&state, "application", remote.ip()).await {
        return password_page(&state, &form, BTreeMap::new(), error.message);
    }
    let request = ChangeKeyPasswordRequest {
        caller: public_caller(remote),
        application_id: form.application_id.trim().to_owned(),
        applicant_id_number: form.applicant_id_number.clone(),
        new_password: form.new_password.clone(),
    };
    match identity(&state).change_key_password(request).await {
        Ok(reply) => state.pages.render(
            "application.html",
            context! { section => "keys", heading => "修改登录密码", done => "登录密码已修改。",
            application => Value::from(Serde(ApplicationView::from(reply.into_inner()))) },
        ),
        Err(status) => {
            let (errors, message) = page_errors(&ApiError::from(status));
            password_page(&state, &form, errors, message)
        }
    }
}

async fn admin_import_form(State(state): State<AppState>) -> Response {
    state.pages.render("admin_import.html", context! { section => "admin" })
}

/// The registry or agencies file uploaded with the admin credential, loaded through the same call as the API.
async fn admin_import_submit(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut form: axum::extract::Multipart,
) -> Response {
    let (mut kind, mut token, mut file) = (String::new(), String::new(), Vec::new());
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                match field.bytes().await {
                    Ok(bytes) if name == "file" => file = bytes.to_vec(),
                    Ok(bytes) if name == "kind" => kind = String::from_utf8_lossy(&bytes).into_owned(),
                    Ok(bytes) if name == "token" => token = String::from_utf8_lossy(&bytes).into_owned(),
                    Ok(_) => {}
                    Err(error) => return admin_import_error(&state, &kind, format!("上传失败：{error}")),
                }
            }
            Ok(None) => break,
            Err(error) => return admin_import_error(&state, &kind, format!("上传失败：{error}")),
        }
    }
    let caller = match crate::keys::admin_caller_from_token(&state, &token, remote) {
        Ok(caller) => caller,
        Err(error) => return admin_import_error(&state, &kind, error.message),
    };
    let import_kind = if kind == "agencies" { ImportKind::Agencies } else { ImportKind::Registry };
    match crate::keys::import(&state, import_kind, caller, file).await {
        Ok(report) => state.pages.render(
            "admin_import.html",
            context! { section => "admin", kind => kind, report => Value::from(Serde(report)) },
        ),
        Err(error) => admin_import_error(&state, &kind, error.message),
    }
}

fn admin_import_error(state: &AppState, kind: &str, message: String) -> Response {
    state.pages.render("admin_import.html", context! { section => "admin", kind => kind, message => message })
}
