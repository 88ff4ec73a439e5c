//! The unit record (参保单位) and who may see it: a unit operator its own unit only, an agency reviewer the units of
//! its agency, the province admin every unit.

use kit::status::refuse;
use proto::common::Caller;
use proto::units::UnitRecord;
use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::{Code, Status};

/// The Chinese name of a record's state.
pub fn state_label(state: &str) -> &'static str {
    match state {
        "draft" | "declaring" => "录入中",
        "declared" => "已申报",
        "under_review" => "审核中",
        "approved" => "已参保",
        _ => "未知",
    }
}

#[derive(sqlx::FromRow)]
struct UnitRow {
    institution_code: String,
    unit_name: String,
    credit_code: String,
    unit_type: String,
    region_code: String,
    agency_code: String,
    state: String,
    created_at: OffsetDateTime,
}

/// The unit a caller asks for, refused alike whether it is someone else's or does not exist, so codes cannot be
/// probed.
pub async fn get(pool: &PgPool, caller: &Caller, institution_code: &str) -> Result<UnitRecord, Status> {
    let code = match caller.role.as_str() {
        "unit_operator" if institution_code.is_empty() || institution_code == caller.institution_code => {
            caller.institution_code.as_str()
        }
        "agency_reviewer" | "province_admin" | "system" if !institution_code.is_empty() => institution_code,
        _ => return Err(refuse(Code::PermissionDenied, "forbidden", "无权查看该单位的信息")),
    };
    let row: Option<UnitRow> = sqlx::query_as(
        "select institution_code, unit_name, credit_code, unit_type, region_code, agency_code, state, created_at \
         from units where institution_code = $1",
    )
    .bind(code)
    .fetch_optional(pool)
    .await
    .map_err(kit::db::status)?;
    let row = row.filter(|row| caller.role != "agency_reviewer" || row.agency_code == caller.agency_code);
    let Some(row) = row else {
        return Err(refuse(Code::NotFound, "unit_not_found", "没有找到该单位的参保信息"));
    };
    Ok(UnitRecord {
        state_label: state_label(&row.state).to_owned(),
        institution_code: row.institution_code,
        unit_name: row.unit_name,
        credit_code: row.credit_code,
        unit_type: row.unit_type,
        region_code: row.region_code,
        agency_code: row.agency_code,
        state: row.state,
        created_at: Some(prost_types::Timestamp {
            seconds: row.created_at.unix_timestamp(),
            nanos: i32::try_from(row.created_at.nanosecond()).unwrap_or(0),
        }),
    })
}
