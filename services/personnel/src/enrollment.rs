//! A person's enrollment as other agencies ask for it (the agency API's GetPersonEnrollment): by ID number,
//! province-wide, the one current registration — which unit, which kind, whether declared or approved — and
//! nothing else of the person. A name the caller gives is compared, never returned.

use kit::db::Scope;
use kit::status::{Violation, invalid, refuse};
use proto::common::Caller;
use proto::personnel::{Enrollment, GetEnrollmentRequest};
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::people::People;

/// Who may look people up by ID number across units: API clients granted persons:read, the province admin and the
/// platform.
fn may_look_up(caller: &Caller) -> bool {
    match caller.role.as_str() {
        "province_admin" | "system" => true,
        "api_client" => caller.scopes.iter().any(|scope| scope == "persons:read"),
        _ => false,
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    institution_code: String,
    kind: String,
    name: String,
    pending_add: bool,
    created_at: OffsetDateTime,
    enrolled: bool,
    locked: bool,
    approved_at: Option<OffsetDateTime>,
    unit_name: Option<String>,
    agency_code: Option<String>,
}

impl People {
    pub async fn enrollment(&self, request: GetEnrollmentRequest) -> Result<Enrollment, Status> {
        let caller = request.caller.unwrap_or_default();
        if !may_look_up(&caller) {
            return Err(refuse(
                Code::PermissionDenied,
                "forbidden",
                "只有获得 persons:read 授权的接口客户端可以按身份证号码查询",
            ));
        }
        let today = OffsetDateTime::now_utc().date();
        let id_number = validators::IdNumber::parse(request.id_number.trim(), today)
            .map_err(|error| invalid(vec![Violation::new("id_number", error.code(), error.to_string())]))?;
        let index = self.sealer.index("01", id_number.as_str());
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        let row: Option<Row> = sqlx::query_as(
            "select p.institution_code, p.kind, p.name, p.pending_add, p.created_at, \
             exists (select 1 from enrolled_units e where e.institution_code = p.institution_code) as enrolled, \
             exists (select 1 from roster_locks l where l.institution_code = p.institution_code) as locked, \
             (select max(h.at) from person_history h where h.person_id = p.person_id and h.event = 'approved') \
               as approved_at, \
             a.unit_name, a.agency_code \
             from persons p left join unit_agencies a on a.institution_code = p.institution_code \
             where p.id_number_hmac = $1 and p.ended_at is null",
        )
        .bind(&index)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let masked = id_number.masked();
        let Some(row) = row else {
            return Ok(Enrollment { enrolled: false, id_number_masked: masked, ..Enrollment::default() });
        };
        // Approved once the unit is enrolled, unless the person is a 增员 still waiting for its declaration;
        // declared while the unit's roster is frozen for a declaration that holds the person.
        let state = match (row.enrolled, row.pending_add, row.locked) {
            (true, false, _) => "approved",
            (_, _, true) => "declared",
            _ => "registered",
        };
        let name_matches = Some(request.name.trim())
            .filter(|name| !name.is_empty())
            .map(|name| validators::text::normalize_name(name) == validators::text::normalize_name(&row.name));
        Ok(Enrollment {
            enrolled: true,
            id_number_masked: masked,
            institution_code: row.institution_code,
            kind: row.kind,
            state: state.to_owned(),
            registered_at: Some(kit::convert::timestamp(row.created_at)),
            approved_at: if state == "approved" { row.approved_at.map(kit::convert::timestamp) } else { None },
            name_matches,
            unit_name: row.unit_name.unwrap_or_default(),
            agency_code: row.agency_code.unwrap_or_default(),
        })
    }
}
