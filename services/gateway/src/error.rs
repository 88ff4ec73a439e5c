//! API errors: a stable machine-readable `code`, a Chinese `message`, the `field` at fault when there is one and
//! every field violation in `errors`. Statuses from the services map onto HTTP statuses here, in one place;
//! anything unexpected is logged once and answered as an opaque 500.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::{Code, Status};

/// One field at fault.
#[derive(Debug, Clone, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: String,
}

/// An error answer of the JSON API.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            field: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// The body was not the JSON the operation takes.
    pub fn bad_json(error: &serde_json::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", format!("请求内容不是有效的JSON：{error}"))
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let (http, default_code, default_message) = match status.code() {
            Code::InvalidArgument => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument", "请求内容有误"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found", "未找到"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition", "当前状态不允许此操作"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists", "已存在"),
            Code::Aborted => (StatusCode::CONFLICT, "conflict", "操作冲突，请重试"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden", "无权进行此操作"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", "请先登录"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "请求过于频繁，请稍后重试"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "服务暂时不可用，请稍后重试"),
            Code::DeadlineExceeded => (StatusCode::SERVICE_UNAVAILABLE, "timeout", "服务响应超时，请稍后重试"),
            _ => {
                tracing::error!(code = ?status.code(), message = status.message(), "unexpected service error");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "系统内部错误，请稍后重试");
            }
        };
        let errors: Vec<FieldError> = kit::status::violations(&status)
            .into_iter()
            .map(|violation| FieldError { field: violation.field, code: violation.code, message: violation.message })
            .collect();
        let code = kit::status::reason(&status).unwrap_or_else(|| default_code.to_owned());
        // Services' own messages are written for people (Chinese); transport failures get ours.
        let message = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded => default_message.to_owned(),
            _ if status.message().is_empty() => default_message.to_owned(),
            _ => status.message().to_owned(),
        };
        let field = errors.first().map(|error| error.field.clone());
        Self { status: http, code, message, field, errors, retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry_after = self.retry_after.or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(5));
        let mut response = (status, Json(self)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON body: empty is the type's defaults, anything else must parse.
pub fn parse_or_default<T: serde::de::DeserializeOwned + Default>(body: &bytes::Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| ApiError::bad_json(&error))
}

/// One JSON API call: the body parsed (empty: the defaults), `work` done with it, and its answer as JSON with
/// `status`, or the error.
pub async fn json_call<T, R, Fut>(body: &bytes::Bytes, status: StatusCode, work: impl FnOnce(T) -> Fut) -> Response
where
    T: serde::de::DeserializeOwned + Default,
    R: Serialize,
    Fut: std::future::Future<Output = Result<R, ApiError>>,
{
    let result = match parse_or_default::<T>(body) {
        Ok(body) => work(body).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(answer) => (status, Json(answer)).into_response(),
        Err(error) => error.into_response(),
    }
}
