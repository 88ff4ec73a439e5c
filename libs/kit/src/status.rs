//! Refusals that callers can act on: a stable machine-readable reason and, for bad input, one violation per field,
//! carried as google.rpc `ErrorInfo` and `BadRequest` details so they survive both transports unchanged.

use tonic::{Code, Status};
use tonic_types::{BadRequest, ErrorDetail, ErrorInfo, FieldViolation, StatusExt};

/// The domain every `ErrorInfo` names.
const DOMAIN: &str = "pension";

/// One field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field in snake_case, as the JSON API names it.
    pub field: String,
    /// A stable machine-readable code, e.g. `id_number_check_digit`.
    pub code: String,
    /// What is wrong and how to fix it, in Chinese.
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), code: code.into(), message: message.into() }
    }
}

/// `INVALID_ARGUMENT` listing every violation; the status message and reason are the first one's.
pub fn invalid(violations: Vec<Violation>) -> Status {
    let (reason, message) = violations
        .first()
        .map(|first| (first.code.clone(), first.message.clone()))
        .unwrap_or_else(|| ("invalid_argument".to_owned(), "请求内容有误".to_owned()));
    with_violations(Code::InvalidArgument, &reason, message, violations)
}

/// A refusal with `code`, a stable `reason` and field violations, e.g. warnings a save needs accepted.
pub fn with_violations(code: Code, reason: &str, message: impl Into<String>, violations: Vec<Violation>) -> Status {
    let field_violations = violations
        .into_iter()
        .map(|violation| FieldViolation {
            reason: violation.code,
            ..FieldViolation::new(violation.field, violation.message)
        })
        .collect::<Vec<_>>();
    Status::with_error_details_vec(
        code,
        message,
        vec![
            ErrorDetail::ErrorInfo(ErrorInfo::new(reason, DOMAIN, [])),
            ErrorDetail::BadRequest(BadRequest::new(field_violations)),
        ],
    )
}

/// A refusal with `code` and a stable `reason`, e.g. `(FailedPrecondition, "application_not_withdrawable", …)`.
pub fn refuse(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details_vec(code, message, vec![ErrorDetail::ErrorInfo(ErrorInfo::new(reason, DOMAIN, []))])
}

/// The stable reason of a status, when it carries one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The field violations of a status.
pub fn violations(status: &Status) -> Vec<Violation> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| Violation {
                    field: violation.field,
                    code: violation.reason,
                    message: violation.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_and_reason_round_trip_through_a_status() {
        let status = invalid(vec![
            Violation::new("applicant_id_number", "id_number_check_digit", "身份证号码校验位不正确，请核对"),
            Violation::new("phone", "phone_format", "联系电话格式不正确"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "身份证号码校验位不正确，请核对");
        assert_eq!(reason(&status).as_deref(), Some("id_number_check_digit"));
        assert_eq!(violations(&status).len(), 2);
        assert_eq!(violations(&status)[1].field, "phone");
    }
}
