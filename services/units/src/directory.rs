//! The directory of units for other agencies (the agency API's ListUnits): each unit with its latest declaration,
//! filtered by region, agency and state, in keyset pages by institution code so that paging through 20,000 units
//! stays one index range scan a page, however deep.

use kit::db::Scope;
use kit::status::{Violation, invalid, refuse};
use proto::common::Caller;
use proto::units::{ListUnitsReply, ListUnitsRequest, UnitSummary};
use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::{Code, Status};

/// The most units one page may hold.
pub const MAX_PAGE: u32 = 1000;

/// Who may list every unit: the province admin, the platform, and API clients granted units:read.
fn may_list(caller: &Caller) -> bool {
    match caller.role.as_str() {
        "province_admin" | "system" => true,
        "api_client" => caller.scopes.iter().any(|scope| scope == "units:read"),
        _ => false,
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    institution_code: String,
    unit_name: String,
    credit_code: String,
    region_code: String,
    agency_code: String,
    unit_number: Option<String>,
    state: String,
    declaration_id: Option<uuid::Uuid>,
    kind: Option<String>,
    declaration_state: Option<String>,
    declared_at: Option<OffsetDateTime>,
    decided_at: Option<OffsetDateTime>,
    reason: Option<String>,
    person_count: Option<i32>,
}

pub async fn list(pool: &PgPool, request: ListUnitsRequest) -> Result<ListUnitsReply, Status> {
    let caller = request.caller.unwrap_or_default();
    if !may_list(&caller) {
        return Err(refuse(
            Code::PermissionDenied,
            "forbidden",
            "只有省级管理员和获得 units:read 授权的接口客户端可以查询单位名录",
        ));
    }
    let mut violations = Vec::new();
    let region = request.region_prefix.trim();
    if !region.is_empty() && (![2, 4, 6].contains(&region.len()) || !region.bytes().all(|byte| byte.is_ascii_digit())) {
        violations.push(Violation::new("region_code", "invalid_region_code", "行政区划代码应为 2、4 或 6 位数字"));
    }
    // The filter's states as the units table holds them: "declared" covers the whole review.
    let states: &[&str] = match request.state.trim() {
        "" => &[],
        "draft" => &["draft"],
        "declared" => &["declaring", "declared", "under_review"],
        "approved" => &["approved"],
        _ => {
            violations.push(Violation::new("state", "invalid_state", "单位状态应为 draft、declared 或 approved"));
            &[]
        }
    };
    if request.limit == 0 || request.limit > MAX_PAGE {
        violations.push(Violation::new("page_size", "page_size_too_large", format!("每页至多 {MAX_PAGE} 个单位")));
    }
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    let states: Vec<String> = states.iter().map(|state| (*state).to_owned()).collect();
    let mut transaction = kit::db::begin_scoped(pool, &Scope::All).await.map_err(kit::db::status)?;
    let rows: Vec<Row> = sqlx::query_as(
        "select u.institution_code, u.unit_name, u.credit_code, u.region_code, u.agency_code, u.unit_number, \
         u.state, d.declaration_id, d.kind, d.state as declaration_state, d.declared_at, \
         (select max(t.at) from declaration_transitions t where t.declaration_id = d.declaration_id \
          and t.to_state in ('approved', 'rejected', 'withdrawn')) as decided_at, d.reason, \
         case d.kind when 'change' then d.add_count + d.remove_count + d.update_count \
         else d.staff_count + d.retiree_pre_reform_count + d.retiree_post_reform_count end as person_count \
         from units u left join lateral ( \
           select * from declarations d where d.institution_code = u.institution_code \
           and d.state not in ('declaring', 'abandoned') order by d.created_at desc limit 1) d on true \
         where u.institution_code > $1 and ($2 = '' or u.region_code like $2 || '%') \
         and ($3 = '' or u.agency_code = $3) and (cardinality($4::text[]) = 0 or u.state = any($4)) \
         order by u.institution_code limit $5",
    )
    .bind(request.after_institution_code.trim())
    .bind(region)
    .bind(request.agency_code.trim())
    .bind(&states)
    .bind(i64::from(request.limit))
    .fetch_all(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    transaction.commit().await.map_err(kit::db::status)?;
    let timestamp = |at: Option<OffsetDateTime>| at.map(kit::convert::timestamp);
    let units = rows
        .into_iter()
        .map(|row| UnitSummary {
            institution_code: row.institution_code,
            unit_name: row.unit_name,
            credit_code: row.credit_code,
            region_code: row.region_code,
            agency_code: row.agency_code,
            unit_number: row.unit_number.unwrap_or_default(),
            state: row.state,
            latest_declaration_id: row.declaration_id.map(|id| id.to_string()).unwrap_or_default(),
            latest_kind: row.kind.unwrap_or_default(),
            latest_state: row.declaration_state.unwrap_or_default(),
            latest_declared_at: timestamp(row.declared_at),
            latest_decided_at: timestamp(row.decided_at),
            latest_reason: row.reason.unwrap_or_default(),
            latest_person_count: row.person_count.and_then(|count| u32::try_from(count).ok()).unwrap_or_default(),
        })
        .collect();
    Ok(ListUnitsReply { units })
}
