//! The unit record (参保单位确认信息) and who may see it: a unit operator its own unit only, an agency reviewer the
//! units of its agency, the province admin every unit. The operator keeps the record while it is a draft; check
//! characters are errors, the credit code's 11/12 prefix and its match with the organization code warnings.

use std::collections::BTreeMap;

use kit::audit::{self, Actor, Outcome};
use kit::db::Scope;
use kit::sealing::Sealer;
use kit::status::{Violation, invalid, refuse, with_violations};
use proto::common::Caller;
use proto::units::{UnitFinding, UnitRecord, UnitRecordInput};
use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::{Code, Status};

/// The Chinese name of a record's state.
pub fn state_label(state: &str) -> &'static str {
    match state {
        "draft" => "录入中",
        "declaring" => "申报处理中",
        "declared" => "已申报",
        "under_review" => "审核中",
        "approved" => "已参保",
        _ => "未知",
    }
}

/// The sealed column of unit records, for `pension keys rotate`.
pub const UNITS_SEALED: kit::sealing::SealedTable = kit::sealing::SealedTable {
    table: "units",
    key: "institution_code",
    key_type: "text",
    version: "key_version",
    sealed: &["legal_representative_id_sealed", "bank_account_sealed"],
};

/// The unit record's code lists (单位类型, 隶属关系, 经费来源), read at start-up.
#[derive(Debug, Clone, Default)]
pub struct UnitCodes {
    pub lists: BTreeMap<String, Vec<(String, String)>>,
}

impl UnitCodes {
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "select list, code, label from code_lists \
             where valid_from <= current_date and (valid_to is null or valid_to > current_date) order by list, sort",
        )
        .fetch_all(pool)
        .await?;
        let mut lists: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (list, code, label) in rows {
            lists.entry(list).or_default().push((code, label));
        }
        Ok(Self { lists })
    }

    /// The code of `given` (a code or its exact label).
    pub fn resolve(&self, list: &str, given: &str) -> Option<String> {
        let given = given.trim();
        self.lists.get(list)?.iter().find(|(code, label)| code == given || label == given).map(|(code, _)| code.clone())
    }
}

#[derive(sqlx::FromRow)]
struct UnitRow {
    institution_code: String,
    unit_number: Option<String>,
    agency_name: String,
    unit_name: String,
    credit_code: String,
    unit_type: String,
    region_code: String,
    agency_code: String,
    state: String,
    created_at: OffsetDateTime,
    unit_type_code: Option<String>,
    org_code: Option<String>,
    subordination: Option<String>,
    funding_source: Option<String>,
    legal_representative: Option<String>,
    legal_representative_id_masked: Option<String>,
    address: Option<String>,
    post_code: Option<String>,
    contact_name: Option<String>,
    contact_phone: Option<String>,
    email: Option<String>,
    clerk_name: Option<String>,
    clerk_phone: Option<String>,
    bank_name: Option<String>,
    bank_account_name: Option<String>,
    bank_account_sealed: Option<Vec<u8>>,
    key_version: Option<i32>,
    administrative_posts: Option<i32>,
    institutional_posts: Option<i32>,
    logistics_posts: Option<i32>,
    accepted_warnings: serde_json::Value,
    updated_at: Option<OffsetDateTime>,
}

use kit::convert::timestamp;

impl UnitRow {
    fn into_record(self, sealer: &Sealer) -> Result<UnitRecord, Status> {
        let bank_account = match (&self.bank_account_sealed, self.key_version) {
            (Some(sealed), Some(version)) => Some(sealer.open(version, sealed).map_err(|error| {
                tracing::error!(%error, "cannot open a unit's sealed bank account");
                Status::internal("internal error")
            })?),
            _ => None,
        };
        let complete = [
            &self.unit_type_code,
            &self.subordination,
            &self.funding_source,
            &self.legal_representative,
            &self.address,
            &self.post_code,
            &self.contact_name,
            &self.contact_phone,
            &self.clerk_name,
            &self.clerk_phone,
            &self.bank_name,
            &self.bank_account_name,
            &bank_account,
        ]
        .iter()
        .all(|field| field.as_deref().is_some_and(|value| !value.is_empty()));
        let posts = |value: Option<i32>| value.and_then(|value| u32::try_from(value).ok());
        let accepted_warnings = self
            .accepted_warnings
            .as_array()
            .map(|warnings| warnings.iter().filter_map(|warning| warning["code"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok(UnitRecord {
            state_label: state_label(&self.state).to_owned(),
            institution_code: self.institution_code,
            unit_name: self.unit_name,
            credit_code: self.credit_code,
            unit_type: self.unit_type,
            region_code: self.region_code,
            agency_code: self.agency_code,
            state: self.state,
            created_at: Some(timestamp(self.created_at)),
            unit_type_code: self.unit_type_code.unwrap_or_default(),
            org_code: self.org_code.unwrap_or_default(),
            subordination: self.subordination.unwrap_or_default(),
            funding_source: self.funding_source.unwrap_or_default(),
            legal_representative: self.legal_representative.unwrap_or_default(),
            legal_representative_id_number_masked: self.legal_representative_id_masked.unwrap_or_default(),
            address: self.address.unwrap_or_default(),
            post_code: self.post_code.unwrap_or_default(),
            contact_name: self.contact_name.unwrap_or_default(),
            contact_phone: self.contact_phone.unwrap_or_default(),
            email: self.email.unwrap_or_default(),
            clerk_name: self.clerk_name.unwrap_or_default(),
            clerk_phone: self.clerk_phone.unwrap_or_default(),
            bank_name: self.bank_name.unwrap_or_default(),
            bank_account_name: self.bank_account_name.unwrap_or_default(),
            bank_account: bank_account.unwrap_or_default(),
            administrative_posts: posts(self.administrative_posts),
            institutional_posts: posts(self.institutional_posts),
            logistics_posts: posts(self.logistics_posts),
            complete,
            accepted_warnings,
            updated_at: self.updated_at.map(timestamp),
            unit_number: self.unit_number.unwrap_or_default(),
            agency_name: self.agency_name,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ClearAccountRow {
    institution_code: String,
    bank_account: String,
    legal_representative_id_sealed: Option<Vec<u8>>,
    key_version: Option<i32>,
}

/// A record as a save finds it, locked.
#[derive(sqlx::FromRow)]
struct LockedRecord {
    state: String,
    credit_code: String,
    agency_code: String,
    legal_representative_id_sealed: Option<Vec<u8>>,
    key_version: Option<i32>,
}

/// Seals the bank accounts an earlier version stored in clear, with the row's other sealed value moved to the
/// current key, and empties the clear column; returns how many. Run at start-up: idempotent, and cheap once done.
pub async fn seal_clear_accounts(pool: &PgPool, sealer: &Sealer) -> Result<u64, sqlx::Error> {
    let mut transaction = kit::db::begin_scoped(pool, &Scope::All).await?;
    let rows: Vec<ClearAccountRow> = sqlx::query_as(
        "select institution_code, bank_account, legal_representative_id_sealed, key_version from units \
         where bank_account is not null for update",
    )
    .fetch_all(&mut *transaction)
    .await?;
    let mut sealed = 0;
    for ClearAccountRow {
        institution_code,
        bank_account: account,
        legal_representative_id_sealed: legal_id,
        key_version: version,
    } in rows
    {
        let legal_id = match (legal_id, version) {
            (Some(legal_id), Some(version)) => match sealer.reseal(version, &legal_id) {
                Ok(resealed) => Some(resealed),
                Err(error) => {
                    tracing::error!(%error, %institution_code, "cannot open a legal representative's number: left as it is");
                    continue;
                }
            },
            _ => None,
        };
        sqlx::query(
            "update units set bank_account_sealed = $2, bank_account = null, legal_representative_id_sealed = $3, \
             key_version = $4 where institution_code = $1",
        )
        .bind(&institution_code)
        .bind(sealer.seal(&account))
        .bind(legal_id)
        .bind(sealer.version())
        .execute(&mut *transaction)
        .await?;
        sealed += 1;
    }
    transaction.commit().await?;
    Ok(sealed)
}

/// What the caller's transactions may see under row-level security: an operator its unit, a reviewer its agency's
/// units, the province admin and the platform every unit, anyone else nothing.
pub fn scope_of(caller: &Caller) -> Scope {
    match caller.role.as_str() {
        "unit_operator" => Scope::unit(&caller.institution_code),
        "agency_reviewer" => Scope::Agencies(vec![caller.agency_code.clone()]),
        "province_admin" | "system" => Scope::All,
        _ => Scope::Units(Vec::new()),
    }
}

/// The unit a caller asks for, refused alike whether it is someone else's or does not exist, so codes cannot be
/// probed.
pub async fn get(
    pool: &PgPool,
    sealer: &Sealer,
    caller: &Caller,
    institution_code: &str,
) -> Result<UnitRecord, Status> {
    let code = match caller.role.as_str() {
        "unit_operator" if institution_code.is_empty() || institution_code == caller.institution_code => {
            caller.institution_code.as_str()
        }
        "agency_reviewer" | "province_admin" | "system" if !institution_code.is_empty() => institution_code,
        _ => return Err(refuse(Code::PermissionDenied, "forbidden", "无权查看该单位的信息")),
    };
    let mut transaction = kit::db::begin_scoped(pool, &scope_of(caller)).await.map_err(kit::db::status)?;
    let row: Option<UnitRow> = sqlx::query_as("select * from units where institution_code = $1")
        .bind(code)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
    transaction.commit().await.map_err(kit::db::status)?;
    let row = row.filter(|row| caller.role != "agency_reviewer" || row.agency_code == caller.agency_code);
    let Some(row) = row else {
        return Err(refuse(Code::NotFound, "unit_not_found", "没有找到该单位的参保信息"));
    };
    row.into_record(sealer)
}

/// The checked values of a record.
struct Checked {
    values: BTreeMap<&'static str, Option<String>>,
    posts: [Option<i32>; 3],
    legal_id: Option<validators::IdNumber>,
    warnings: Vec<Violation>,
}

fn check(input: &UnitRecordInput, codes: &UnitCodes, credit_code: &str) -> Result<Checked, Vec<Violation>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut values: BTreeMap<&'static str, Option<String>> = BTreeMap::new();
    let text =
        |raw: &str| Some(validators::text::to_half_width(raw).trim().to_owned()).filter(|value| !value.is_empty());
    let mut required =
        |field: &'static str, raw: &str, label: &str, max: usize, errors: &mut Vec<Violation>| match text(raw) {
            None => errors.push(Violation::new(field, "required", format!("请填写{label}"))),
            Some(value) if value.chars().count() > max => {
                errors.push(Violation::new(field, "too_long", format!("{label}不能超过{max}个字")));
            }
            Some(value) => {
                values.insert(field, Some(value));
            }
        };
    required("legal_representative", &input.legal_representative, "法定代表人（负责人）", 60, &mut errors);
    required("address", &input.address, "单位地址", 200, &mut errors);
    required("contact_name", &input.contact_name, "联系人", 60, &mut errors);
    required("clerk_name", &input.clerk_name, "社保专管员", 60, &mut errors);
    required("bank_name", &input.bank_name, "开户银行", 100, &mut errors);
    required("bank_account_name", &input.bank_account_name, "户名", 100, &mut errors);
    for (field, list, raw, label) in [
        ("unit_type_code", "unit_type", &input.unit_type, "单位类型"),
        ("subordination", "subordination", &input.subordination, "隶属关系"),
        ("funding_source", "funding_source", &input.funding_source, "经费来源"),
    ] {
        match (text(raw), text(raw).and_then(|raw| codes.resolve(list, &raw))) {
            (None, _) => errors.push(Violation::new(field_name(field), "required", format!("请选择{label}"))),
            (Some(raw), None) => {
                errors.push(Violation::new(field_name(field), "unknown_code", format!("{label}“{raw}”不在代码表中")))
            }
            (_, Some(code)) => {
                values.insert(field, Some(code));
            }
        }
    }
    for (field, raw, label) in
        [("contact_phone", &input.contact_phone, "联系电话"), ("clerk_phone", &input.clerk_phone, "社保专管员电话")]
    {
        match text(raw).map(|raw| validators::text::parse_phone(&raw)) {
            None => errors.push(Violation::new(field, "required", format!("请填写{label}"))),
            Some(None) => errors.push(Violation::new(
                field,
                "invalid_phone",
                format!("{label}应为11位手机号码或带区号的固定电话"),
            )),
            Some(Some(phone)) => {
                values.insert(field, Some(phone));
            }
        }
    }
    match text(&input.post_code).map(|raw| validators::fields::parse_post_code(&raw)) {
        None => errors.push(Violation::new("post_code", "required", "请填写邮政编码")),
        Some(None) => errors.push(Violation::new("post_code", "invalid_post_code", "邮政编码应为6位数字")),
        Some(Some(code)) => {
            values.insert("post_code", Some(code));
        }
    }
    match text(&input.bank_account).map(|raw| validators::fields::parse_bank_account(&raw)) {
        None => errors.push(Violation::new("bank_account", "required", "请填写银行账号")),
        Some(None) => errors.push(Violation::new("bank_account", "invalid_bank_account", "银行账号只能是8至30位数字")),
        Some(Some(account)) => {
            values.insert("bank_account", Some(account));
        }
    }
    if let Some(raw) = text(&input.email) {
        match validators::fields::parse_email(&raw) {
            Some(email) => {
                values.insert("email", Some(email));
            }
            None => errors.push(Violation::new("email", "invalid_email", "电子邮箱格式不正确，例如 hr@example.gov.cn")),
        }
    }
    // The registry gives the region (often the city's); the unit may name its county or district instead.
    if let Some(raw) = text(&input.region_code) {
        match validators::fields::parse_region_code(&raw) {
            Some(region) if region == raw => {
                values.insert("region_code", Some(region));
            }
            _ => errors.push(Violation::new("region_code", "invalid_region_code", "所属行政区划应为6位行政区划代码")),
        }
    }
    // The credit code is the registry's; what the unit types must be the same, and it is checked all the same.
    match text(&input.credit_code).map(|raw| validators::parse_credit_code(&raw)) {
        None => {}
        Some(Err(error)) => errors.push(Violation::new("credit_code", error.code(), error.to_string())),
        Some(Ok(code)) if code != credit_code => errors.push(Violation::new(
            "credit_code",
            "credit_code_differs",
            "统一社会信用代码与编制通登记的不一致；如有变更请联系编制部门",
        )),
        Some(Ok(_)) => {}
    }
    if !credit_code.starts_with("11") && !credit_code.starts_with("12") {
        warnings.push(Violation::new(
            "credit_code",
            "credit_code_prefix",
            "机关的统一社会信用代码通常以11开头、事业单位以12开头，请核实",
        ));
    }
    if let Some(raw) = text(&input.org_code) {
        match validators::parse_org_code(&raw) {
            Err(error) => errors.push(Violation::new("org_code", error.code(), error.to_string())),
            Ok(code) => {
                if validators::org_code_of_credit_code(credit_code).as_deref() != Some(code.as_str()) {
                    warnings.push(Violation::new(
                        "org_code",
                        "org_code_mismatch",
                        "组织机构代码与统一社会信用代码第9至17位不一致，请核实",
                    ));
                }
                values.insert("org_code", Some(code));
            }
        }
    }
    let legal_id = match text(&input.legal_representative_id_number) {
        None => None,
        Some(raw) => match validators::IdNumber::parse(&raw, OffsetDateTime::now_utc().date()) {
            Ok(id) => Some(id),
            Err(error) => {
                errors.push(Violation::new("legal_representative_id_number", error.code(), error.to_string()));
                None
            }
        },
    };
    let mut posts = [None; 3];
    for (slot, (field, raw)) in posts.iter_mut().zip([
        ("administrative_posts", &input.administrative_posts),
        ("institutional_posts", &input.institutional_posts),
        ("logistics_posts", &input.logistics_posts),
    ]) {
        if let Some(raw) = text(raw) {
            match raw.parse::<i32>() {
                Ok(count) if count >= 0 => *slot = Some(count),
                _ => errors.push(Violation::new(field, "invalid_count", "编制数应为不小于0的整数")),
            }
        }
    }
    if errors.is_empty() { Ok(Checked { values, posts, legal_id, warnings }) } else { Err(errors) }
}

/// The API's field names where the column differs.
fn field_name(column: &'static str) -> &'static str {
    if column == "unit_type_code" { "unit_type" } else { column }
}

/// Saves the unit operator's record: only the operator's own unit, only while it is a draft. The saved record is
/// announced (`unit_record_saved`) for the enrollment dashboards.
pub async fn update(
    pool: &PgPool,
    namespace: &proto::names::Namespace,
    codes: &UnitCodes,
    sealer: &Sealer,
    caller: &Caller,
    input: UnitRecordInput,
) -> Result<(UnitRecord, Vec<UnitFinding>), Status> {
    if caller.role != "unit_operator" || caller.institution_code.is_empty() {
        return Err(refuse(Code::PermissionDenied, "forbidden", "只有本单位的经办员可以维护单位信息"));
    }
    let actor = Actor::of(caller);
    let mut transaction =
        kit::db::begin_scoped(pool, &Scope::unit(&caller.institution_code)).await.map_err(kit::db::status)?;
    let current: Option<LockedRecord> = sqlx::query_as(
        "select state, credit_code, agency_code, legal_representative_id_sealed, key_version from units \
         where institution_code = $1 for update",
    )
    .bind(&caller.institution_code)
    .fetch_optional(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    let Some(LockedRecord {
        state,
        credit_code,
        agency_code,
        legal_representative_id_sealed: stored_legal_id,
        key_version: stored_version,
    }) = current
    else {
        return Err(refuse(Code::NotFound, "unit_not_found", "单位的参保信息尚未建立，请重新登录后再试"));
    };
    if state != "draft" {
        return Err(refuse(
            Code::FailedPrecondition,
            "record_frozen",
            format!("单位已申报（{}），单位信息已锁定；如需修改请先申报撤回", state_label(&state)),
        ));
    }
    let checked = check(&input, codes, &credit_code).map_err(invalid)?;
    let unaccepted: Vec<Violation> =
        checked.warnings.iter().filter(|warning| !input.accepted_warnings.contains(&warning.code)).cloned().collect();
    if !unaccepted.is_empty() {
        return Err(with_violations(
            Code::FailedPrecondition,
            "warnings_not_accepted",
            "有提示尚未确认：请核实后勾选确认，再保存",
            unaccepted,
        ));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let accepted: Vec<serde_json::Value> = checked
        .warnings
        .iter()
        .map(|warning| serde_json::json!({ "code": warning.code, "accepted_by": actor.name, "accepted_at": now }))
        .collect();
    let value = |field: &str| checked.values.get(field).cloned().flatten();
    // Every sealed value of the row is under the row's one key version: a number kept from before (the form sends
    // it empty unless typed again) is sealed again under the current key with the account.
    let legal_id_sealed = match (&checked.legal_id, stored_legal_id, stored_version) {
        (Some(id), _, _) => Some(sealer.seal(id.as_str())),
        (None, Some(sealed), Some(version)) => Some(sealer.reseal(version, &sealed).map_err(|error| {
            tracing::error!(%error, "cannot open a unit's sealed legal representative number");
            Status::internal("internal error")
        })?),
        (None, _, _) => None,
    };
    sqlx::query(
        "update units set unit_type_code = $2, org_code = $3, subordination = $4, funding_source = $5, \
         legal_representative = $6, \
         legal_representative_id_sealed = $7, \
         legal_representative_id_masked = coalesce($8, legal_representative_id_masked), \
         key_version = $9, address = $10, post_code = $11, contact_name = $12, contact_phone = $13, email = $14, \
         clerk_name = $15, clerk_phone = $16, bank_name = $17, bank_account_name = $18, bank_account = null, \
         bank_account_sealed = $19, \
         administrative_posts = $20, institutional_posts = $21, logistics_posts = $22, accepted_warnings = $23, \
         updated_at = now(), updated_by = $24, region_code = coalesce($25, region_code) where institution_code = $1",
    )
    .bind(&caller.institution_code)
    .bind(value("unit_type_code"))
    .bind(value("org_code"))
    .bind(value("subordination"))
    .bind(value("funding_source"))
    .bind(value("legal_representative"))
    .bind(legal_id_sealed)
    .bind(checked.legal_id.as_ref().map(validators::IdNumber::masked))
    .bind(sealer.version())
    .bind(value("address"))
    .bind(value("post_code"))
    .bind(value("contact_name"))
    .bind(value("contact_phone"))
    .bind(value("email"))
    .bind(value("clerk_name"))
    .bind(value("clerk_phone"))
    .bind(value("bank_name"))
    .bind(value("bank_account_name"))
    .bind(value("bank_account").map(|account| sealer.seal(&account)))
    .bind(checked.posts[0])
    .bind(checked.posts[1])
    .bind(checked.posts[2])
    .bind(serde_json::Value::Array(accepted))
    .bind(&actor.name)
    .bind(value("region_code"))
    .execute(&mut *transaction)
    .await
    .map_err(kit::db::status)?;
    let object = format!("unit:{}", caller.institution_code);
    let record = audit::Record {
        actor: &actor,
        action: "unit.update",
        object: &object,
        outcome: Outcome::Success,
        detail: serde_json::json!({ "accepted_warnings": checked.warnings.len() }),
    };
    audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
    let event_id = kit::outbox::new_event_id();
    let event = proto::events::UnitRecordSaved {
        meta: Some(kit::outbox::event_meta(event_id, &actor.name)),
        institution_code: caller.institution_code.clone(),
        agency_code,
    };
    let subject = namespace.event_subject("units", "unit_record_saved");
    kit::outbox::enqueue(&mut transaction, event_id, &subject, &prost::Message::encode_to_vec(&event))
        .await
        .map_err(kit::db::status)?;
    transaction.commit().await.map_err(kit::db::status)?;
    let warnings = checked
        .warnings
        .into_iter()
        .map(|warning| UnitFinding { field: warning.field, code: warning.code, message: warning.message })
        .collect();
    Ok((get(pool, sealer, caller, "").await?, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDIT_CODE: &str = "11230500MB0000010M";

    fn codes() -> UnitCodes {
        let list =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(code, label)| ((*code).into(), (*label).into())).collect();
        UnitCodes {
            lists: BTreeMap::from([
                ("unit_type".into(), list(&[("10", "机关"), ("31", "公益一类事业单位")])),
                ("subordination".into(), list(&[("40", "市"), ("50", "县")])),
                ("funding_source".into(), list(&[("1", "全额拨款"), ("3", "自收自支")])),
            ]),
        }
    }

    fn complete() -> UnitRecordInput {
        UnitRecordInput {
            unit_type: "机关".into(),
            credit_code: CREDIT_CODE.into(),
            region_code: "230502".into(),
            subordination: "市".into(),
            funding_source: "1".into(),
            legal_representative: "王建国".into(),
            address: "双鸭山市尖山区新兴大街88号".into(),
            post_code: "155100".into(),
            contact_name: "张伟".into(),
            contact_phone: "0469-4221234".into(),
            clerk_name: "张伟".into(),
            clerk_phone: "13804691234".into(),
            bank_name: "中国工商银行双鸭山分行".into(),
            bank_account_name: "双鸭山市财政局".into(),
            bank_account: "0907 0210 0900 0012 345".into(),
            ..UnitRecordInput::default()
        }
    }

    fn error_codes(input: &UnitRecordInput, credit_code: &str) -> Vec<(String, String)> {
        match check(input, &codes(), credit_code) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|error| (error.field, error.code)).collect(),
        }
    }

    fn pair(field: &str, code: &str) -> (String, String) {
        (field.to_owned(), code.to_owned())
    }

    #[test]
    fn a_complete_record_passes_with_codes_and_labels_resolved_and_numbers_normalized() {
        let checked = check(&complete(), &codes(), CREDIT_CODE).expect("passes");
        assert!(checked.warnings.is_empty());
        let value = |field: &str| checked.values.get(field).cloned().flatten();
        assert_eq!(value("unit_type_code").as_deref(), Some("10"));
        assert_eq!(value("subordination").as_deref(), Some("40"));
        assert_eq!(value("funding_source").as_deref(), Some("1"));
        assert_eq!(value("bank_account").as_deref(), Some("0907021009000012345"));
        assert_eq!(value("region_code").as_deref(), Some("230502"));
    }

    #[test]
    fn every_required_field_is_named_when_the_record_is_empty() {
        let found = error_codes(&UnitRecordInput::default(), CREDIT_CODE);
        for field in [
            "legal_representative",
            "address",
            "contact_name",
            "clerk_name",
            "bank_name",
            "bank_account_name",
            "unit_type",
            "subordination",
            "funding_source",
            "contact_phone",
            "clerk_phone",
            "post_code",
            "bank_account",
        ] {
            assert!(found.contains(&pair(field, "required")), "{field} in {found:?}");
        }
    }

    #[test]
    fn each_malformed_field_is_an_error_at_that_field() {
        type Corruption = fn(&mut UnitRecordInput);
        let cases: [(&str, Corruption, &str); 13] = [
            ("unit_type", |input| input.unit_type = "国企".into(), "unknown_code"),
            ("subordination", |input| input.subordination = "村".into(), "unknown_code"),
            ("contact_phone", |input| input.contact_phone = "12345".into(), "invalid_phone"),
            ("clerk_phone", |input| input.clerk_phone = "1380469123".into(), "invalid_phone"),
            ("post_code", |input| input.post_code = "15510".into(), "invalid_post_code"),
            ("bank_account", |input| input.bank_account = "0907-ABC".into(), "invalid_bank_account"),
            ("email", |input| input.email = "hr@".into(), "invalid_email"),
            ("region_code", |input| input.region_code = "990101".into(), "invalid_region_code"),
            ("credit_code", |input| input.credit_code = "11230500MB0000010N".into(), "credit_code_check_character"),
            ("credit_code", |input| input.credit_code = "12320700139008349D".into(), "credit_code_differs"),
            ("org_code", |input| input.org_code = "78305975-4".into(), "org_code_check_character"),
            (
                "legal_representative_id_number",
                |input| input.legal_representative_id_number = "110105194912310021".into(),
                "id_number_check_digit",
            ),
            ("administrative_posts", |input| input.administrative_posts = "-1".into(), "invalid_count"),
        ];
        for (field, corrupt, code) in cases {
            let mut input = complete();
            corrupt(&mut input);
            assert_eq!(error_codes(&input, CREDIT_CODE), [pair(field, code)], "{field}");
        }
        let mut long = complete();
        long.address = "路".repeat(201);
        assert_eq!(error_codes(&long, CREDIT_CODE), [pair("address", "too_long")]);
    }

    #[test]
    fn the_credit_code_prefix_and_the_organization_code_match_are_warnings() {
        // A unit whose registry code starts with 91 (an enterprise's) is unusual in this scheme, not impossible.
        let enterprise = "91110000101623741K";
        let input = UnitRecordInput { credit_code: enterprise.into(), ..complete() };
        let checked = check(&input, &codes(), enterprise).expect("warnings save");
        let warnings: Vec<&str> = checked.warnings.iter().map(|warning| warning.code.as_str()).collect();
        assert_eq!(warnings, ["credit_code_prefix"]);

        let input = UnitRecordInput { org_code: "78305975-3".into(), ..complete() };
        let checked = check(&input, &codes(), CREDIT_CODE).expect("warnings save");
        let warnings: Vec<(&str, &str)> =
            checked.warnings.iter().map(|warning| (warning.field.as_str(), warning.code.as_str())).collect();
        assert_eq!(warnings, [("org_code", "org_code_mismatch")]);

        let published = "12320700139008349D";
        let matching = UnitRecordInput { credit_code: published.into(), org_code: "13900834-9".into(), ..complete() };
        let checked = check(&matching, &codes(), published);
        assert!(checked.as_ref().is_ok_and(|checked| checked.warnings.is_empty()), "positions 9–17 match");
    }
}
