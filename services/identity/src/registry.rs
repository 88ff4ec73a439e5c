//! The establishment registry (编制通) and the handling agencies: loading them from files, keeping entries one at a
//! time, and 校验 — matching a typed unit name against the registry.

use kit::status::Violation;
use prost::Message as _;
use proto::identity::{ImportReport, RegistryEntry, RowError};
use proto::names::Namespace;
use sqlx::{PgConnection, PgPool};

use spreadsheet::{Row, Table};

/// The registry's detailed unit types (单位类型) and the broad kind (机关 or 事业单位) each belongs to for 校验.
/// 参照公务员法管理单位 are institutions managed like organs, so either broad kind finds them.
const UNIT_TYPES: [(&str, &[&str]); 6] = [
    ("机关", &["机关"]),
    ("参照公务员法管理单位", &["机关", "事业单位"]),
    ("公益一类事业单位", &["事业单位"]),
    ("公益二类事业单位", &["事业单位"]),
    ("生产经营类事业单位", &["事业单位"]),
    ("其他", &[]),
];

pub const REGISTRY_COLUMNS: [&str; 6] =
    ["单位名称", "机构编码", "统一社会信用代码", "单位类型", "所属行政区划", "所属经办机构"];
pub const AGENCY_COLUMNS: [&str; 3] = ["经办机构编码", "经办机构名称", "所属行政区划"];

/// Whether a registry entry's detailed type answers to the type a user chose (broad or detailed).
pub fn type_matches(entry_type: &str, chosen: &str) -> bool {
    let chosen = validators::text::normalize_name(chosen);
    entry_type == chosen
        || UNIT_TYPES.iter().any(|(detailed, broad)| *detailed == entry_type && broad.contains(&chosen.as_str()))
}

/// Whether `chosen` is a unit type a user may choose: 机关, 事业单位, or a detailed type.
pub fn is_known_type(chosen: &str) -> bool {
    let chosen = validators::text::normalize_name(chosen);
    chosen == "事业单位" || UNIT_TYPES.iter().any(|(detailed, _)| *detailed == chosen)
}

fn region_code(raw: &str) -> Option<String> {
    let code = validators::text::to_half_width(raw).trim().to_owned();
    let province: u32 = code.get(..2)?.parse().ok()?;
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) && (11..=82).contains(&province)).then_some(code)
}

fn optional_count(row: &Row, column: &str, errors: &mut Vec<RowError>) -> Option<u32> {
    let text = row.get(column);
    if text.is_empty() {
        return None;
    }
    match text.parse::<u32>() {
        Ok(count) => Some(count),
        Err(_) => {
            errors.push(row_error(row, column, "invalid_count", &format!("{column}应为非负整数")));
            None
        }
    }
}

fn row_error(row: &Row, column: &str, code: &str, message: &str) -> RowError {
    RowError { row: row.number, column: column.to_owned(), code: code.to_owned(), message: message.to_owned() }
}

/// Checks one registry row; `agency_code` resolves an agency given by code or exact name.
fn registry_row(row: &Row, agency_code: impl Fn(&str) -> Option<String>) -> Result<RegistryEntry, Vec<RowError>> {
    let mut errors = Vec::new();
    for column in REGISTRY_COLUMNS {
        if row.get(column).is_empty() {
            errors.push(row_error(row, column, "required", &format!("{column}不能为空")));
        }
    }
    let unit_name = row.get("单位名称").to_owned();
    if unit_name.chars().count() > 100 {
        errors.push(row_error(row, "单位名称", "too_long", "单位名称不能超过100个字"));
    }
    let credit_code = match validators::parse_credit_code(row.get("统一社会信用代码")) {
        Ok(code) => code,
        Err(error) if !row.get("统一社会信用代码").is_empty() => {
            errors.push(row_error(row, "统一社会信用代码", error.code(), &error.to_string()));
            String::new()
        }
        Err(_) => String::new(),
    };
    let unit_type = validators::text::normalize_name(row.get("单位类型"));
    if !unit_type.is_empty() && !UNIT_TYPES.iter().any(|(detailed, _)| *detailed == unit_type) {
        let known: Vec<&str> = UNIT_TYPES.iter().map(|(detailed, _)| *detailed).collect();
        errors.push(row_error(
            row,
            "单位类型",
            "unknown_unit_type",
            &format!("未知的单位类型，应为：{}", known.join("、")),
        ));
    }
    let region = region_code(row.get("所属行政区划"));
    if region.is_none() && !row.get("所属行政区划").is_empty() {
        errors.push(row_error(row, "所属行政区划", "invalid_region_code", "所属行政区划应为6位行政区划代码"));
    }
    let agency = agency_code(row.get("所属经办机构"));
    if agency.is_none() && !row.get("所属经办机构").is_empty() {
        errors.push(row_error(
            row,
            "所属经办机构",
            "unknown_agency",
            "所属经办机构不在经办机构名单中，请先导入经办机构",
        ));
    }
    let administrative_posts = optional_count(row, "行政编制数", &mut errors);
    let institutional_posts = optional_count(row, "事业编制数", &mut errors);
    let logistics_posts = optional_count(row, "工勤编制数", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RegistryEntry {
        institution_code: validators::text::to_half_width(row.get("机构编码")).trim().to_owned(),
        unit_name,
        credit_code,
        unit_type,
        region_code: region.unwrap_or_default(),
        agency_code: agency.unwrap_or_default(),
        administrative_posts,
        institutional_posts,
        logistics_posts,
        retired_at: None,
        retired_reason: String::new(),
    })
}

/// Loads a registry table: every good row upserted (by institution code), every bad one reported. A row whose name
/// or credit code belongs to another institution is refused rather than silently overwriting it.
pub async fn import_registry(
    pool: &PgPool,
    namespace: &Namespace,
    actor: &str,
    table: &Table,
) -> Result<ImportReport, sqlx::Error> {
    let agencies: Vec<(String, String)> = sqlx::query_as("select code, name from agencies").fetch_all(pool).await?;
    let resolve_agency = |given: &str| {
        let given = validators::text::normalize_name(given);
        agencies
            .iter()
            .find(|(code, name)| *code == given || validators::text::normalize_name(name) == given)
            .map(|(code, _)| code.clone())
    };
    let mut report = ImportReport::default();
    let mut transaction = pool.begin().await?;
    for row in &table.rows {
        match registry_row(row, resolve_agency) {
            Ok(entry) => match upsert_entry(&mut transaction, namespace, actor, &entry).await? {
                Ok(()) => report.loaded += 1,
                Err(violation) => {
                    report.errors.push(row_error(row, &violation.field, &violation.code, &violation.message))
                }
            },
            Err(errors) => report.errors.extend(errors),
        }
    }
    transaction.commit().await?;
    Ok(report)
}

/// Upserts one entry inside the caller's transaction, with its `registry_entry_changed` event. A conflict with another
/// institution's name or credit code is returned as a violation (in a savepoint, so the caller's transaction stays
/// usable).
pub async fn upsert_entry(
    connection: &mut PgConnection,
    namespace: &Namespace,
    actor: &str,
    entry: &RegistryEntry,
) -> Result<Result<(), Violation>, sqlx::Error> {
    let mut savepoint = sqlx::Connection::begin(&mut *connection).await?;
    let result = sqlx::query(
        "insert into registry_entries (institution_code, unit_name, normalized_name, credit_code, unit_type, region_code, \
         agency_code, administrative_posts, institutional_posts, logistics_posts) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         on conflict (institution_code) do update set unit_name = excluded.unit_name, \
         normalized_name = excluded.normalized_name, credit_code = excluded.credit_code, unit_type = excluded.unit_type, \
         region_code = excluded.region_code, agency_code = excluded.agency_code, \
         administrative_posts = excluded.administrative_posts, institutional_posts = excluded.institutional_posts, \
         logistics_posts = excluded.logistics_posts, retired_at = null, retired_reason = null, updated_at = now()",
    )
    .bind(&entry.institution_code)
    .bind(&entry.unit_name)
    .bind(validators::text::normalize_name(&entry.unit_name))
    .bind(&entry.credit_code)
    .bind(&entry.unit_type)
    .bind(&entry.region_code)
    .bind(&entry.agency_code)
    .bind(entry.administrative_posts.map(i64::from))
    .bind(entry.institutional_posts.map(i64::from))
    .bind(entry.logistics_posts.map(i64::from))
    .execute(&mut *savepoint)
    .await;
    match result {
        Ok(_) => {
            savepoint.commit().await?;
            enqueue_changed(connection, namespace, actor, entry, false).await?;
            Ok(Ok(()))
        }
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23505") => {
            savepoint.rollback().await?;
            let violation = match error.constraint() {
                Some("registry_entries_credit_code") => Violation::new(
                    "统一社会信用代码",
                    "duplicate_credit_code",
                    "该统一社会信用代码已属于另一个机构编码的单位",
                ),
                _ => Violation::new("单位名称", "duplicate_unit_name", "该单位名称已属于另一个机构编码的单位"),
            };
            Ok(Err(violation))
        }
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23503") => {
            savepoint.rollback().await?;
            Ok(Err(Violation::new("所属经办机构", "unknown_agency", "所属经办机构不在经办机构名单中")))
        }
        Err(error) => Err(error),
    }
}

/// Loads an agencies table: every good row upserted by code.
pub async fn import_agencies(pool: &PgPool, table: &Table) -> Result<ImportReport, sqlx::Error> {
    let mut report = ImportReport::default();
    let mut transaction = pool.begin().await?;
    for row in &table.rows {
        let mut errors = Vec::new();
        for column in AGENCY_COLUMNS {
            if row.get(column).is_empty() {
                errors.push(row_error(row, column, "required", &format!("{column}不能为空")));
            }
        }
        let region = region_code(row.get("所属行政区划"));
        if region.is_none() && !row.get("所属行政区划").is_empty() {
            errors.push(row_error(row, "所属行政区划", "invalid_region_code", "所属行政区划应为6位行政区划代码"));
        }
        if !errors.is_empty() {
            report.errors.extend(errors);
            continue;
        }
        sqlx::query(
            "insert into agencies (code, name, region_code) values ($1, $2, $3) \
             on conflict (code) do update set name = excluded.name, region_code = excluded.region_code, updated_at = now()",
        )
        .bind(validators::text::to_half_width(row.get("经办机构编码")).trim())
        .bind(row.get("经办机构名称"))
        .bind(region.unwrap_or_default())
        .execute(&mut *transaction)
        .await?;
        report.loaded += 1;
    }
    transaction.commit().await?;
    Ok(report)
}

/// Retires an entry, with its `registry_entry_changed` event; `None` when there is no such entry. Retiring again keeps
/// the first time and reason.
pub async fn retire_entry(
    connection: &mut PgConnection,
    namespace: &Namespace,
    actor: &str,
    institution_code: &str,
    reason: &str,
) -> Result<Option<RegistryEntry>, sqlx::Error> {
    let row: Option<EntryRow> = sqlx::query_as(
        "update registry_entries set retired_at = coalesce(retired_at, now()), \
         retired_reason = coalesce(retired_reason, $2), updated_at = now() where institution_code = $1 \
         returning institution_code, unit_name, credit_code, unit_type, region_code, agency_code, \
         administrative_posts, institutional_posts, logistics_posts, retired_at, retired_reason",
    )
    .bind(institution_code)
    .bind(reason)
    .fetch_optional(&mut *connection)
    .await?;
    let entry = row.map(EntryRow::into_entry);
    if let Some(entry) = &entry {
        enqueue_changed(connection, namespace, actor, entry, true).await?;
    }
    Ok(entry)
}

/// The event that tells the enrollment dashboards which units should enroll, where, and under which agency.
async fn enqueue_changed(
    connection: &mut PgConnection,
    namespace: &Namespace,
    actor: &str,
    entry: &RegistryEntry,
    retired: bool,
) -> Result<(), sqlx::Error> {
    let event_id = kit::outbox::new_event_id();
    let event = proto::events::RegistryEntryChanged {
        meta: Some(kit::outbox::event_meta(event_id, actor)),
        institution_code: entry.institution_code.clone(),
        region_code: entry.region_code.clone(),
        agency_code: entry.agency_code.clone(),
        retired,
    };
    let subject = namespace.event_subject("identity", "registry_entry_changed");
    kit::outbox::enqueue(connection, event_id, &subject, &event.encode_to_vec()).await
}

/// The entry whose normalised name equals `unit_name`'s, if any.
pub async fn find_by_name(pool: &PgPool, unit_name: &str) -> Result<Option<RegistryEntry>, sqlx::Error> {
    let row: Option<EntryRow> = sqlx::query_as(
        "select institution_code, unit_name, credit_code, unit_type, region_code, agency_code, \
         administrative_posts, institutional_posts, logistics_posts, retired_at, retired_reason from registry_entries \
         where normalized_name = $1 and retired_at is null",
    )
    .bind(validators::text::normalize_name(unit_name))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(EntryRow::into_entry))
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    institution_code: String,
    unit_name: String,
    credit_code: String,
    unit_type: String,
    region_code: String,
    agency_code: String,
    administrative_posts: Option<i32>,
    institutional_posts: Option<i32>,
    logistics_posts: Option<i32>,
    retired_at: Option<time::OffsetDateTime>,
    retired_reason: Option<String>,
}

impl EntryRow {
    fn into_entry(self) -> RegistryEntry {
        let count = |value: Option<i32>| value.and_then(|value| u32::try_from(value).ok());
        RegistryEntry {
            institution_code: self.institution_code,
            unit_name: self.unit_name,
            credit_code: self.credit_code,
            unit_type: self.unit_type,
            region_code: self.region_code,
            agency_code: self.agency_code,
            administrative_posts: count(self.administrative_posts),
            institutional_posts: count(self.institutional_posts),
            logistics_posts: count(self.logistics_posts),
            retired_at: self.retired_at.map(crate::keys::timestamp),
            retired_reason: self.retired_reason.unwrap_or_default(),
        }
    }
}

/// The registry names closest to `unit_name`, best first: candidates share at least one two-character run with
/// it (found by the database), ranked by the Dice coefficient of their character pairs.
pub async fn closest_names(pool: &PgPool, unit_name: &str, limit: usize) -> Result<Vec<String>, sqlx::Error> {
    let wanted = validators::text::normalize_name(unit_name);
    let pairs = char_pairs(&wanted);
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let patterns: Vec<String> = pairs
        .iter()
        .map(|pair| format!("%{}%", pair.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")))
        .collect();
    let names: Vec<(String, String)> = sqlx::query_as(
        "select unit_name, normalized_name from registry_entries where normalized_name like any($1) \
         and retired_at is null limit 2000",
    )
    .bind(&patterns)
    .fetch_all(pool)
    .await?;
    let mut scored: Vec<(f64, String)> =
        names.into_iter().map(|(name, normalized)| (dice(&pairs, &char_pairs(&normalized)), name)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(scored.into_iter().take(limit).map(|(_, name)| name).collect())
}

fn char_pairs(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.windows(2).map(|pair| pair.iter().collect()).collect()
}

fn dice(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut remaining: Vec<&String> = b.iter().collect();
    let mut shared = 0usize;
    for pair in a {
        if let Some(position) = remaining.iter().position(|candidate| *candidate == pair) {
            remaining.swap_remove(position);
            shared += 1;
        }
    }
    (2 * shared) as f64 / (a.len() + b.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broad_and_detailed_types_match() {
        assert!(type_matches("机关", "机关"));
        assert!(type_matches("公益一类事业单位", "事业单位"));
        assert!(type_matches("参照公务员法管理单位", "机关"));
        assert!(type_matches("参照公务员法管理单位", "事业单位"));
        assert!(!type_matches("机关", "事业单位"));
        assert!(type_matches("公益二类事业单位", "公益二类事业单位"));
        assert!(!type_matches("其他", "机关"));
    }

    #[test]
    fn closer_names_score_higher() {
        let wanted = char_pairs("双鸭山市财政局");
        assert!(dice(&wanted, &char_pairs("双鸭山市财政局")) > dice(&wanted, &char_pairs("双鸭山市教育局")));
        assert!(dice(&wanted, &char_pairs("双鸭山市教育局")) > dice(&wanted, &char_pairs("哈尔滨市公安局")));
    }
}
