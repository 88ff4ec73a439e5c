//! Spreadsheets of people: the xlsx template of each kind, imports and exports. An import is a job: the gateway
//! sends the file's size and digest, then its bytes in chunks (stored sealed: they hold ID numbers), then submits
//! it; submitting queues a work item through the outbox onto personnel's work stream, so any replica takes it and a
//! restart resumes it. A worker claims the job with a heartbeat (one running job per unit; a job whose worker fell
//! silent is taken over), checks every row with exactly the rules of the single-person check (the population
//! registry asked a batch at a time), and records each row's outcome in the same transaction as the person it saves,
//! so a worker killed mid-file loses and doubles no row. Within a file, the second and later rows with an ID number
//! already seen are the duplicates. Mode `valid_rows` saves the rows that pass; `all_or_nothing` saves every row in
//! one transaction, or none.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use kit::audit::{self, Actor, Outcome};
use kit::consumer::{ConsumerSpec, Event, Handler, HandlerError};
use kit::convert::{hex, timestamp};
use kit::db::Scope;
use kit::status::{Violation, invalid, refuse};
use proto::common::Caller;
use proto::names::Namespace;
use proto::personnel::{
    CreateImportJobRequest, ImportFinding, ImportJob, ImportRowReport, PutImportChunkRequest, SpreadsheetFile,
};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Code, Status};

use crate::check::{self, Checked, Input, Values, kind_label};
use crate::people::{People, WriteError, accepted_values, add_population_finding, history, sex_label, unit_of};
use crate::population::Answer;

/// How imports run (section `personnel.imports`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct ImportConfig {
    /// The largest file taken; larger ones are refused before anything is stored.
    pub max_bytes: u64,
    /// Rows checked together: one population-registry request and one progress update per batch.
    pub batch_rows: usize,
    /// A running job whose worker has been silent this long is taken over by another.
    #[serde(with = "kit::config::millis")]
    pub takeover_after: Duration,
    /// How long an uploaded file is kept after its job ended (its report marks the file's own cells); then its
    /// sealed chunks are deleted, and the job keeps only its row outcomes.
    #[serde(with = "kit::config::millis")]
    pub keep_files_for: Duration,
}

impl Default for ImportConfig {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            batch_rows: 200,
            takeover_after: Duration::from_secs(30),
            keep_files_for: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// An import job waiting or running, with how many were queued before it.
#[derive(sqlx::FromRow)]
struct WaitingJob {
    institution_code: String,
    unit_name: String,
    kind: String,
    state: String,
    ahead: i64,
    rows_done: i32,
    rows_total: Option<i32>,
    queued_at: Option<OffsetDateTime>,
}

/// The most problem rows a report holds: a report is one NATS message.
const REPORT_ROWS: usize = 1000;

/// The largest chunk of an upload: well under NATS's 1 MiB message.
pub const MAX_CHUNK: usize = 512 * 1024;

/// A column of an import file: its header, the person's field it fills, whether the file must have it, the code
/// list its drop-down offers, and whether it holds a date.
struct Column {
    header: &'static str,
    field: &'static str,
    required: bool,
    list: Option<&'static str>,
    date: bool,
}

const fn column(header: &'static str, field: &'static str) -> Column {
    Column { header, field, required: false, list: None, date: false }
}

const fn required(column: Column) -> Column {
    Column { required: true, ..column }
}

const fn coded(column: Column, list: &'static str) -> Column {
    Column { list: Some(list), ..column }
}

const fn date(column: Column) -> Column {
    Column { date: true, ..column }
}

/// The columns of a kind's file, in the template's order.
fn columns(kind: &str) -> Vec<Column> {
    let mut columns = vec![
        required(column("姓名", "name")),
        required(coded(column("证件类型", "id_type"), "id_type")),
        required(column("证件号码", "id_number")),
        column("性别", "sex"),
        date(column("出生日期", "birth_date")),
        required(coded(column("经费补助形式", "funding_form"), "funding_form")),
        coded(column("民族", "ethnicity"), "ethnicity"),
        required(date(column("参加工作时间", "work_start"))),
        coded(column("人员身份", "personnel_status"), "personnel_status"),
        coded(column("编制类型", "establishment"), "establishment"),
    ];
    if kind == "staff" {
        columns.extend([
            date(column("进入本单位时间", "joined_unit")),
            column("职务职级", "post_rank"),
            column("缴费工资基数", "wage_base"),
        ]);
    } else {
        columns.extend([
            required(date(column("离退休日期", "retirement_date"))),
            required(coded(column("离退休类别", "retirement_category"), "retirement_category")),
            required(column("基本退休费", "monthly_pension")),
            required(column("发放开始年月", "pay_start_month")),
            required(column("开户银行", "pay_bank")),
            required(column("银行账号", "pay_account")),
        ]);
    }
    columns.extend([column("联系电话", "phone"), column("地址", "address")]);
    columns
}

/// The header of the column that fills `field`, for the report.
fn header_of(kind: &str, field: &str) -> &'static str {
    columns(kind).iter().find(|column| column.field == field).map_or("", |column| column.header)
}

fn kind_of(raw: &str) -> Result<&'static str, Status> {
    match raw.trim() {
        "staff" | "" => Ok("staff"),
        "retiree_pre_reform" => Ok("retiree_pre_reform"),
        "retiree_post_reform" => Ok("retiree_post_reform"),
        _ => Err(invalid(vec![Violation::new(
            "kind",
            "unknown_kind",
            "人员类别应为 staff、retiree_pre_reform 或 retiree_post_reform",
        )])),
    }
}

/// 人员身份 when the file leaves it out: by the unit's type.
fn default_status(unit_type: &str) -> &'static str {
    if unit_type.contains("事业") { "事业管理人员" } else { "公务员" }
}

/// A row of the file as the single-person check takes it, with the defaults the template states.
fn input_of_row(kind: &str, row: &spreadsheet::Row, unit_type: &str) -> Input {
    let mut input = Input { kind: kind.to_owned(), ..Input::default() };
    for column in columns(kind) {
        let text = row.get(column.header);
        let text = if column.date { spreadsheet::serial_date(text) } else { text.to_owned() };
        let slot = match column.field {
            "name" => &mut input.name,
            "id_type" => &mut input.id_type,
            "id_number" => &mut input.id_number,
            "sex" => &mut input.sex,
            "birth_date" => &mut input.birth_date,
            "funding_form" => &mut input.funding_form,
            "ethnicity" => &mut input.ethnicity,
            "work_start" => &mut input.work_start,
            "joined_unit" => &mut input.joined_unit,
            "personnel_status" => &mut input.personnel_status,
            "establishment" => &mut input.establishment,
            "post_rank" => &mut input.post_rank,
            "wage_base" => &mut input.wage_base,
            "phone" => &mut input.phone,
            "address" => &mut input.address,
            "retirement_date" => &mut input.retirement_date,
            "retirement_category" => &mut input.retirement_category,
            "monthly_pension" => &mut input.monthly_pension,
            "pay_start_month" => &mut input.pay_start_month,
            "pay_bank" => &mut input.pay_bank,
            "pay_account" => &mut input.pay_account,
            _ => continue,
        };
        *slot = text;
    }
    if input.id_type.trim().is_empty() {
        input.id_type = "01".into();
    }
    if input.ethnicity.trim().is_empty() {
        input.ethnicity = "01".into();
    }
    if input.establishment.trim().is_empty() {
        input.establishment = "编制内".into();
    }
    if input.personnel_status.trim().is_empty() {
        input.personnel_status = default_status(unit_type).into();
    }
    if kind == "staff" && input.joined_unit.trim().is_empty() {
        input.joined_unit = input.work_start.clone();
    }
    input
}

fn state_label(state: &str) -> &'static str {
    match state {
        "uploading" => "上传中",
        "queued" => "排队中",
        "running" => "校验中",
        "done" => "已完成",
        "failed" => "未能导入",
        _ => "",
    }
}

fn no_job() -> Status {
    refuse(Code::NotFound, "import_not_found", "没有找到该导入")
}

#[derive(sqlx::FromRow)]
struct JobRow {
    job_id: uuid::Uuid,
    institution_code: String,
    kind: String,
    mode: String,
    state: String,
    file_name: String,
    file_size: i64,
    file_sha256: String,
    received: i64,
    accepted_warnings: serde_json::Value,
    rows_total: Option<i32>,
    rows_done: i32,
    rows_saved: i32,
    rows_failed: i32,
    error: Option<String>,
    error_code: Option<String>,
    created_by: String,
    created_at: OffsetDateTime,
    queued_at: Option<OffsetDateTime>,
    started_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
}

const JOB_COLUMNS: &str = "job_id, institution_code, kind, mode, state, file_name, file_size, file_sha256, received, \
    accepted_warnings, rows_total, rows_done, rows_saved, rows_failed, error, error_code, created_by, created_at, \
    queued_at, started_at, finished_at";

/// One checked row, before it is saved or refused.
struct CheckedRow {
    number: u32,
    name: String,
    checked: Checked,
    answer: Answer,
}

fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// A finding as the report shows it: the check's field, the spreadsheet's column.
fn finding_json(kind: &str, finding: &check::Finding, warning: bool) -> serde_json::Value {
    serde_json::json!({ "field": finding.field, "column": header_of(kind, &finding.field), "code": finding.code,
        "message": finding.message, "warning": warning })
}

impl People {
    /// `GetImportTemplate`: the xlsx a unit fills in: the kind's columns (required ones marked), an instructions
    /// sheet, and a drop-down of every coded column from a sheet of the code lists.
    pub fn import_template(&self, kind: &str) -> Result<SpreadsheetFile, Status> {
        let kind = kind_of(kind)?;
        let broken = |error: rust_xlsxwriter::XlsxError| {
            tracing::error!(%error, "cannot write the import template");
            Status::internal("internal error")
        };
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let bold = rust_xlsxwriter::Format::new().set_bold();
        let columns = columns(kind);
        let lists: Vec<&str> = columns.iter().filter_map(|column| column.list).collect();
        {
            let sheet = workbook.add_worksheet();
            sheet.set_name("人员").map_err(broken)?;
            for (index, column) in columns.iter().enumerate() {
                let col = u16::try_from(index).unwrap_or(u16::MAX);
                let header = if column.required { format!("{}*", column.header) } else { column.header.to_owned() };
                sheet.write_string_with_format(0, col, &header, &bold).map_err(broken)?;
                sheet.set_column_width(col, 16).map_err(broken)?;
                if let Some(list) = column.list {
                    let at = lists.iter().position(|known| *known == list).unwrap_or(0);
                    let letter = char::from(b'A' + u8::try_from(at).unwrap_or(0));
                    let size = self.codes.all().get(list).map_or(1, Vec::len) + 1;
                    let formula = format!("=代码表!${letter}$2:${letter}${size}");
                    let validation = rust_xlsxwriter::DataValidation::new().allow_list_formula(formula.as_str().into());
                    sheet.add_data_validation(1, col, 50_000, col, &validation).map_err(broken)?;
                }
            }
            sheet.set_freeze_panes(1, 0).map_err(broken)?;
        }
        {
            let sheet = workbook.add_worksheet();
            sheet.set_name("填写说明").map_err(broken)?;
            let lines = [
                format!("《{}》导入模板", kind_label(kind)),
                "1. 在“人员”工作表中每行填写一人，第1行为表头，请勿修改或调整表头。标*的列必须填写。".to_owned(),
                "2. 代码列（证件类型、经费补助形式、民族、人员身份、编制类型、离退休类别）请从下拉列表中选择，也可填写代码。"
                    .to_owned(),
                "3. 日期填写为 2015-03-01 或设置为日期格式；年月填写为 2026-12。".to_owned(),
                "4. 未填写的列取默认值：民族为汉族，编制类型为编制内，进入本单位时间同参加工作时间，人员身份按单位类型（机关为公务员，事业单位为事业管理人员）。"
                    .to_owned(),
                "5. 居民身份证号码决定性别和出生日期；其他证件请填写性别和出生日期。".to_owned(),
                "6. 每行按与逐人登记相同的规则校验；同一文件中重复的证件号码，第二次及以后出现的行视为重复。".to_owned(),
                "7. 也可保存为CSV（UTF-8或GBK编码）上传，列名相同。".to_owned(),
            ];
            for (index, line) in lines.iter().enumerate() {
                sheet.write_string(u32::try_from(index).unwrap_or(0), 0, line).map_err(broken)?;
            }
            sheet.set_column_width(0, 120).map_err(broken)?;
        }
        {
            let sheet = workbook.add_worksheet();
            sheet.set_name("代码表").map_err(broken)?;
            for (index, list) in lists.iter().enumerate() {
                let col = u16::try_from(index).unwrap_or(0);
                let title = columns.iter().find(|column| column.list == Some(list)).map_or("", |c| c.header);
                sheet.write_string_with_format(0, col, title, &bold).map_err(broken)?;
                for (row, (_, label)) in self.codes.all().get(*list).into_iter().flatten().enumerate() {
                    sheet.write_string(u32::try_from(row + 1).unwrap_or(0), col, label).map_err(broken)?;
                }
                sheet.set_column_width(col, 22).map_err(broken)?;
            }
        }
        let content = workbook.save_to_buffer().map_err(broken)?;
        Ok(SpreadsheetFile { file_name: format!("{}导入模板.xlsx", kind_label(kind)), content })
    }

    /// `CreateImportJob`: a job of the operator's own unit, waiting for the file's bytes.
    pub async fn create_import(
        &self,
        caller: &Caller,
        config: &ImportConfig,
        request: CreateImportJobRequest,
    ) -> Result<ImportJob, Status> {
        let unit = unit_of(caller, "", true)?;
        let kind = kind_of(&request.kind)?;
        let mode = match request.mode.trim() {
            "" | "valid_rows" => "valid_rows",
            "all_or_nothing" => "all_or_nothing",
            _ => {
                return Err(invalid(vec![Violation::new(
                    "mode",
                    "unknown_mode",
                    "导入方式应为 valid_rows（保存校验通过的行）或 all_or_nothing（全部通过才保存）",
                )]));
            }
        };
        if request.file_size == 0 {
            return Err(invalid(vec![Violation::new("file", "empty_file", "文件为空")]));
        }
        if request.file_size > config.max_bytes {
            return Err(invalid(vec![Violation::new(
                "file",
                "file_too_large",
                format!("文件超过{}MB，请拆分后分批导入", config.max_bytes / (1024 * 1024)),
            )]));
        }
        let digest = request.file_sha256.trim().to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(invalid(vec![Violation::new("file_sha256", "invalid_digest", "文件摘要应为64位十六进制")]));
        }
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        // A roster frozen by a declaration or approved takes no import, as it takes no single save.
        self.roster_locked(&mut transaction, &unit).await?;
        let file_name: String = request.file_name.trim().chars().take(200).collect();
        let row: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into import_jobs (job_id, institution_code, kind, mode, state, file_name, file_size, file_sha256, \
             accepted_warnings, created_by) values ($1, $2, $3, $4, 'uploading', $5, $6, $7, $8, $9) \
             returning {JOB_COLUMNS}"
        )))
        .bind(uuid::Uuid::now_v7())
        .bind(&unit)
        .bind(kind)
        .bind(mode)
        .bind(&file_name)
        .bind(i64::try_from(request.file_size).unwrap_or(i64::MAX))
        .bind(&digest)
        .bind(serde_json::json!(request.accepted_warnings))
        .bind(&caller.actor)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(self.job_message(&row, 0, Vec::new()))
    }

    async fn own_job(&self, caller: &Caller, job_id: &str) -> Result<(String, uuid::Uuid), Status> {
        let unit = unit_of(caller, "", true)?;
        let job_id: uuid::Uuid = job_id.trim().parse().map_err(|_| no_job())?;
        Ok((unit, job_id))
    }

    async fn job_row(&self, connection: &mut PgConnection, job_id: uuid::Uuid) -> Result<Option<JobRow>, Status> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("select {JOB_COLUMNS} from import_jobs where job_id = $1")))
            .bind(job_id)
            .fetch_optional(connection)
            .await
            .map_err(kit::db::status)
    }

    /// `PutImportChunk`: the next bytes of the file, sealed as they arrive.
    pub async fn put_import_chunk(&self, caller: &Caller, request: PutImportChunkRequest) -> Result<ImportJob, Status> {
        let (unit, job_id) = self.own_job(caller, &request.job_id).await?;
        if request.data.len() > MAX_CHUNK {
            return Err(invalid(vec![Violation::new("data", "chunk_too_large", "分块过大")]));
        }
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let row = self.job_row(&mut transaction, job_id).await?.ok_or_else(no_job)?;
        let offset = i64::try_from(request.offset).unwrap_or(i64::MAX);
        let size = i64::try_from(request.data.len()).unwrap_or(i64::MAX);
        // A repeated chunk (a retried call whose answer was lost) is already there.
        if row.state == "uploading" && offset + size <= row.received {
            transaction.commit().await.map_err(kit::db::status)?;
            return Ok(self.job_message(&row, 0, Vec::new()));
        }
        if row.state != "uploading" || offset != row.received || row.received + size > row.file_size {
            return Err(refuse(Code::FailedPrecondition, "chunk_out_of_order", "上传内容与文件不符，请重新上传"));
        }
        let seq: i32 = sqlx::query_scalar("select count(*)::int from import_chunks where job_id = $1")
            .bind(job_id)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        // Sealed as text, as every sealed value is.
        let sealed = self.sealer.seal(&base64::engine::general_purpose::STANDARD.encode(&request.data));
        sqlx::query(
            "insert into import_chunks (job_id, institution_code, seq, data_sealed, key_version) \
             values ($1, $2, $3, $4, $5)",
        )
        .bind(job_id)
        .bind(&unit)
        .bind(seq)
        .bind(sealed)
        .bind(self.sealer.version())
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        sqlx::query("update import_jobs set received = received + $2 where job_id = $1")
            .bind(job_id)
            .bind(size)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let row = self.job_row(&mut transaction, job_id).await?.ok_or_else(no_job)?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(self.job_message(&row, 0, Vec::new()))
    }

    /// `SubmitImportJob`: the whole file is there and matches its digest; the job goes on the work queue.
    pub async fn submit_import(&self, caller: &Caller, job_id: &str) -> Result<ImportJob, Status> {
        let (unit, job_id) = self.own_job(caller, job_id).await?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let row = self.job_row(&mut transaction, job_id).await?.ok_or_else(no_job)?;
        if row.state != "uploading" {
            transaction.commit().await.map_err(kit::db::status)?;
            return self.import_job(caller, &job_id.to_string()).await;
        }
        let file = self.file_of(&mut transaction, job_id).await?;
        if i64::try_from(file.len()).unwrap_or(i64::MAX) != row.file_size
            || hex(&Sha256::digest(&file)) != row.file_sha256
        {
            return Err(refuse(
                Code::FailedPrecondition,
                "file_incomplete",
                "文件未完整上传或内容与摘要不符，请重新上传",
            ));
        }
        sqlx::query("update import_jobs set state = 'queued', queued_at = now() where job_id = $1")
            .bind(job_id)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let subject = self.namespace.work_subject("personnel", "import");
        kit::outbox::enqueue(&mut transaction, kit::outbox::new_event_id(), &subject, job_id.to_string().as_bytes())
            .await
            .map_err(kit::db::status)?;
        let actor = Actor::of(caller);
        let object = format!("import:{job_id}");
        let detail = serde_json::json!({ "kind": row.kind, "mode": row.mode, "size": row.file_size,
            "sha256": row.file_sha256 });
        let record = audit::Record {
            actor: &actor,
            action: "import.submit",
            object: &object,
            outcome: Outcome::Success,
            detail,
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.import_job(caller, &job_id.to_string()).await
    }

    async fn file_of(&self, connection: &mut PgConnection, job_id: uuid::Uuid) -> Result<Vec<u8>, Status> {
        let chunks: Vec<(i32, Vec<u8>)> =
            sqlx::query_as("select key_version, data_sealed from import_chunks where job_id = $1 order by seq")
                .bind(job_id)
                .fetch_all(connection)
                .await
                .map_err(kit::db::status)?;
        let mut file = Vec::new();
        for (version, sealed) in chunks {
            let broken = || {
                tracing::error!(%job_id, "an import chunk does not open");
                Status::internal("internal error")
            };
            let text = self.sealer.open(version, &sealed).map_err(|_| broken())?;
            file.extend(base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| broken())?);
        }
        Ok(file)
    }

    /// `GetImportJob`: the job with its progress, its place in line while it waits, and its report.
    pub async fn import_job(&self, caller: &Caller, job_id: &str) -> Result<ImportJob, Status> {
        let (unit, job_id) = self.own_job(caller, job_id).await?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let row = self.job_row(&mut transaction, job_id).await?.ok_or_else(no_job)?;
        type RowReport = (i32, String, String, Option<uuid::Uuid>, serde_json::Value);
        let rows: Vec<RowReport> = sqlx::query_as(
            "select row_number, outcome, name, person_id, findings from import_rows where job_id = $1 \
             and (outcome <> 'saved' or findings <> '[]'::jsonb) order by row_number limit 1000",
        )
        .bind(job_id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        // Only how many wait before this one, across every unit: no other unit's data.
        let place = if row.state == "queued" {
            let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
            let ahead: i64 = sqlx::query_scalar(
                "select count(*) from import_jobs where state in ('queued', 'running') and queued_at < $1",
            )
            .bind(row.queued_at)
            .fetch_one(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            transaction.commit().await.map_err(kit::db::status)?;
            u32::try_from(ahead).unwrap_or(u32::MAX)
        } else {
            0
        };
        let reports = rows
            .into_iter()
            .map(|(number, outcome, name, person_id, findings)| ImportRowReport {
                row_number: u32::try_from(number).unwrap_or(0),
                outcome,
                name,
                person_id: person_id.map(|id| id.to_string()).unwrap_or_default(),
                findings: findings
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|finding| ImportFinding {
                        field: finding["field"].as_str().unwrap_or_default().to_owned(),
                        column: finding["column"].as_str().unwrap_or_default().to_owned(),
                        code: finding["code"].as_str().unwrap_or_default().to_owned(),
                        message: finding["message"].as_str().unwrap_or_default().to_owned(),
                        warning: finding["warning"].as_bool().unwrap_or(false),
                    })
                    .collect(),
            })
            .collect();
        Ok(self.job_message(&row, place, reports))
    }

    fn job_message(&self, row: &JobRow, place_in_line: u32, rows: Vec<ImportRowReport>) -> ImportJob {
        let elapsed = row.started_at.map(|started| {
            let end = row.finished_at.unwrap_or_else(OffsetDateTime::now_utc);
            (end - started).as_seconds_f64().max(0.001)
        });
        let rate = elapsed.map_or(0.0, |seconds| f64::from(row.rows_done) / seconds);
        let left = row.rows_total.map_or(0, |total| total - row.rows_done).max(0);
        let seconds_left = if rate > 0.0 && row.state == "running" { (f64::from(left) / rate).ceil() } else { 0.0 };
        ImportJob {
            job_id: row.job_id.to_string(),
            kind: row.kind.clone(),
            mode: row.mode.clone(),
            state_label: state_label(&row.state).to_owned(),
            state: row.state.clone(),
            file_name: row.file_name.clone(),
            file_size: u64::try_from(row.file_size).unwrap_or(0),
            received: u64::try_from(row.received).unwrap_or(0),
            rows_total: row.rows_total.map_or(0, count),
            rows_done: count(row.rows_done),
            rows_saved: count(row.rows_saved),
            rows_failed: count(row.rows_failed),
            rows_per_second: (rate * 10.0).round() / 10.0,
            // At most a day: a rate that has just started says little.
            seconds_left: seconds_left.min(86_400.0) as u32,
            place_in_line,
            error_code: row.error_code.clone().unwrap_or_default(),
            error: row.error.clone().unwrap_or_default(),
            rows,
            created_at: Some(timestamp(row.created_at)),
            finished_at: row.finished_at.map(timestamp),
        }
    }

    /// The imports queued and running now, province-wide for the province admin, the agency's units' for an agency
    /// reviewer: the dashboards' live load. Places in line count every unit's jobs, as the units' own pages do.
    pub async fn import_queue(&self, caller: &Caller) -> Result<proto::personnel::ImportQueue, Status> {
        let agency = match caller.role.as_str() {
            "province_admin" | "system" => String::new(),
            "agency_reviewer" if !caller.agency_code.is_empty() => caller.agency_code.clone(),
            _ => {
                return Err(kit::status::refuse(
                    Code::PermissionDenied,
                    "forbidden",
                    "只有省级管理员和经办机构审核员可以查看导入队列",
                ));
            }
        };
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        let rows: Vec<WaitingJob> = sqlx::query_as(
            "select j.institution_code, coalesce(a.unit_name, '') as unit_name, j.kind, j.state, j.ahead, \
             j.rows_done, j.rows_total, j.queued_at from (select *, count(*) over (order by queued_at \
                 rows between unbounded preceding and 1 preceding) as ahead \
                 from import_jobs where state in ('queued', 'running')) j \
             left join unit_agencies a on a.institution_code = j.institution_code \
             where $1 = '' or a.agency_code = $1 \
             order by j.state = 'queued', j.queued_at",
        )
        .bind(&agency)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let queued = rows.iter().filter(|row| row.state == "queued").count();
        let count = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        Ok(proto::personnel::ImportQueue {
            queued: count(queued),
            running: count(rows.len() - queued),
            jobs: rows
                .into_iter()
                .take(50)
                .map(|job| proto::personnel::QueuedImport {
                    place_in_line: if job.state == "queued" { u32::try_from(job.ahead).unwrap_or(u32::MAX) } else { 0 },
                    institution_code: job.institution_code,
                    unit_name: job.unit_name,
                    kind: job.kind,
                    state: job.state,
                    rows_done: u32::try_from(job.rows_done).unwrap_or(0),
                    rows_total: job.rows_total.and_then(|total| u32::try_from(total).ok()).unwrap_or(0),
                    queued_at: job.queued_at.map(kit::convert::timestamp),
                })
                .collect(),
        })
    }

    /// Takes a queued job (or one whose worker fell silent) for `worker`, unless another job of the same unit is
    /// running: one import at a time per unit, so a unit's second file waits for its first. None when the job is
    /// not this worker's to run now; `finished` says whether it is over.
    async fn claim(&self, job_id: uuid::Uuid, worker: &str, config: &ImportConfig) -> Result<Claimed, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        let silence = format!("{} milliseconds", config.takeover_after.as_millis());
        let claimed: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "update import_jobs j set state = 'running', worker = $2, heartbeat_at = now(), \
             started_at = coalesce(started_at, now()) where job_id = $1 \
             and (state = 'queued' or (state = 'running' and heartbeat_at < now() - $3::interval)) \
             and not exists (select 1 from import_jobs o where o.institution_code = j.institution_code \
                 and o.job_id <> j.job_id and o.state = 'running' and o.heartbeat_at >= now() - $3::interval) \
             returning {JOB_COLUMNS}"
        )))
        .bind(job_id)
        .bind(worker)
        .bind(&silence)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let outcome = match claimed {
            Some(row) => Claimed::Run(Box::new(row)),
            None => match self.job_row(&mut transaction, job_id).await? {
                Some(row) if matches!(row.state.as_str(), "done" | "failed") => Claimed::Finished,
                Some(_) => Claimed::Busy,
                None => Claimed::Finished,
            },
        };
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(outcome)
    }

    async fn finish(
        &self,
        job_id: uuid::Uuid,
        state: &str,
        code: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        sqlx::query(
            "update import_jobs set state = $2, error_code = $3, error = $4, finished_at = now(), worker = null \
             where job_id = $1",
        )
        .bind(job_id)
        .bind(state)
        .bind(code)
        .bind(error)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)
    }

    /// Runs a claimed job to its end: counts the file's rows, then checks and records every row not yet recorded, a
    /// batch at a time as the file is read, and saves as the mode says. The file is parsed on a blocking thread
    /// that hands rows over a bounded channel, so only a batch or two of rows is ever held.
    async fn run_import(
        &self,
        job: &JobRow,
        worker: &str,
        config: &ImportConfig,
        faults: &kit::faults::Faults,
    ) -> Result<(), Status> {
        let unit = job.institution_code.clone();
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let file = std::sync::Arc::new(self.file_of(&mut transaction, job.job_id).await?);
        let done: HashSet<i32> = sqlx::query_scalar::<_, i32>("select row_number from import_rows where job_id = $1")
            .bind(job.job_id)
            .fetch_all(&mut *transaction)
            .await
            .map_err(kit::db::status)?
            .into_iter()
            .collect();
        let unit_type: String = sqlx::query_scalar(
            "select coalesce((select unit_type from unit_agencies where institution_code = $1), '')",
        )
        .bind(&unit)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        let total = match count_rows_of(file.clone(), &job.kind).await {
            Ok(total) => total,
            Err(error) => {
                let code = match error {
                    spreadsheet::TableError::MissingColumns(_) => "missing_columns",
                    spreadsheet::TableError::Empty => "empty_file",
                    spreadsheet::TableError::Encrypted => "encrypted_file",
                    spreadsheet::TableError::NotATable => "not_a_spreadsheet",
                    _ => "unreadable_file",
                };
                return self.finish(job.job_id, "failed", Some(code), Some(&error.to_string())).await;
            }
        };
        let accepted: Vec<String> = job
            .accepted_warnings
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|code| code.as_str().map(str::to_owned))
            .collect();
        self.progress(job.job_id, worker, Some(total)).await?;
        let actor = Actor { name: job.created_by.clone(), role: "unit_operator".into(), ..Actor::default() };
        let rules = Rules::load(self).await?;
        // Every row is checked by the rules, the recorded ones too, so that duplicates within the file are known
        // whatever row a resumed job starts from; only the index of each number is kept.
        let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut batch: Vec<CheckedRow> = Vec::with_capacity(config.batch_rows.max(1));
        let (rows, reader) = stream_rows(file.clone(), &job.kind, config.batch_rows);
        let mut rows = rows;
        loop {
            let row = rows.recv().await;
            if let Some(row) = &row {
                let checked = self.check_row(&job.kind, row, &unit_type, &rules, &mut seen);
                if !done.contains(&i32::try_from(checked.number).unwrap_or(i32::MAX)) {
                    batch.push(checked);
                }
            }
            if batch.len() >= config.batch_rows.max(1) || (row.is_none() && !batch.is_empty()) {
                let mut refs: Vec<&mut CheckedRow> = batch.iter_mut().collect();
                self.check_batch(&unit, &mut refs).await?;
                let refs: Vec<&CheckedRow> = batch.iter().collect();
                self.record_batch(&unit, job, &refs, &accepted, &actor, job.mode == "valid_rows").await?;
                batch.clear();
                self.progress(job.job_id, worker, None).await?;
                faults.hit("import.after_batch")?;
            }
            if row.is_none() {
                break;
            }
        }
        reader
            .await
            .map_err(|_| Status::internal("internal error"))?
            .map_err(|_| Status::internal("internal error"))?;
        if job.mode == "all_or_nothing" {
            self.save_all_or_nothing(&unit, job, &file, &unit_type, &rules, &accepted, &actor).await?;
        }
        let actor_object = format!("import:{}", job.job_id);
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let counts: (i64, i64) = sqlx::query_as(
            "select count(*) filter (where outcome = 'saved'), count(*) filter (where outcome = 'refused') \
             from import_rows where job_id = $1",
        )
        .bind(job.job_id)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        let detail = serde_json::json!({ "rows": total, "saved": counts.0, "refused": counts.1 });
        let record = audit::Record {
            actor: &actor,
            action: "import.done",
            object: &actor_object,
            outcome: Outcome::Success,
            detail,
        };
        audit::append(&mut transaction, &record).await.map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)?;
        self.finish(job.job_id, "done", None, None).await
    }

    /// A row through the rules of a person (pure), with its duplicate within the file.
    fn check_row(
        &self,
        kind: &str,
        row: &spreadsheet::Row,
        unit_type: &str,
        rules: &Rules,
        seen: &mut HashMap<Vec<u8>, u32>,
    ) -> CheckedRow {
        let input = input_of_row(kind, row, unit_type);
        let mut checked = check::check(&input, &self.codes, rules.today, rules.reference_wage.as_deref());
        if let Some(values) = &checked.values {
            let index = self.sealer.index(&values.id_type, &values.id_number);
            if let Some(first) = seen.get(&index) {
                checked.errors.push(check::Finding {
                    field: "id_number".into(),
                    code: "duplicate_in_file".into(),
                    message: format!("证件号码与本文件第{first}行重复"),
                });
                checked.values = None;
            } else {
                seen.insert(index, row.number);
            }
        }
        CheckedRow { number: row.number, name: input.name.trim().to_owned(), checked, answer: Answer::Pending }
    }

    /// Completes the rows' checks with what needs I/O: the population registry, one request for the batch, and
    /// the one-unit-per-person rule.
    async fn check_batch(&self, unit: &str, batch: &mut [&mut CheckedRow]) -> Result<(), Status> {
        let queries: Vec<(usize, (String, String))> = batch
            .iter()
            .enumerate()
            .filter_map(|(at, row)| {
                let values = row.checked.values.as_ref()?;
                (values.id_type == "01").then(|| (at, (values.id_number.clone(), values.name.clone())))
            })
            .collect();
        let lookups: Vec<(String, String)> = queries.iter().map(|(_, query)| query.clone()).collect();
        let answers = if lookups.is_empty() { Vec::new() } else { self.registry.lookup(&lookups).await };
        for row in batch.iter_mut() {
            row.answer = Answer::Found;
        }
        for ((at, _), answer) in queries.iter().zip(answers) {
            batch[*at].answer = answer;
        }
        for row in batch.iter_mut() {
            let Some(values) = row.checked.values.clone() else { continue };
            if values.id_type == "01" {
                add_population_finding(&mut row.checked, row.answer);
            }
            let index = self.sealer.index(&values.id_type, &values.id_number);
            if let Some(conflict) = self.registration_conflict(&values, &index, unit, None).await? {
                row.checked.errors.push(conflict);
            }
            if !row.checked.errors.is_empty() {
                row.checked.values = None;
            }
        }
        Ok(())
    }

    /// Records the rows' outcomes and, when `save`, saves the persons of those that passed, all in one transaction.
    /// When a save lost the person to another save between the check and the write, nothing is recorded and the
    /// index of that row is returned, so that the caller records the rows one by one.
    async fn record_rows(
        &self,
        unit: &str,
        job: &JobRow,
        rows: &[&CheckedRow],
        accepted: &[String],
        actor: &Actor,
        save: bool,
    ) -> Result<Option<usize>, Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        if save {
            self.roster_locked(&mut transaction, unit).await?;
        }
        let (mut saved, mut refused, mut recorded) = (0, 0, 0);
        for (at, row) in rows.iter().enumerate() {
            let mut findings: Vec<serde_json::Value> =
                row.checked.errors.iter().map(|finding| finding_json(&job.kind, finding, false)).collect();
            findings.extend(row.checked.warnings.iter().map(|finding| finding_json(&job.kind, finding, true)));
            let passed = accepted_values(&row.checked, accepted, &actor.name);
            let already = row.checked.errors.iter().any(|finding| finding.code == "duplicate_in_unit");
            let (outcome, person_id) = match passed {
                Ok((values, accepted_warnings)) if save => {
                    let person_id = uuid::Uuid::now_v7();
                    match self
                        .write(&mut transaction, unit, person_id, &values, row.answer, &accepted_warnings, actor)
                        .await
                    {
                        Ok(()) => {}
                        Err(WriteError::Database(status)) => return Err(status),
                        Err(WriteError::Taken) => return Ok(Some(at)),
                    }
                    history(&mut transaction, person_id, "registered", &actor.name, Some("批量导入"), None).await?;
                    self.audit_import_row(&mut transaction, actor, job, person_id, &values).await?;
                    ("saved", Some(person_id))
                }
                Ok(_) => ("valid", None),
                Err(_) if already => ("already_registered", None),
                Err(_) => ("refused", None),
            };
            if self.insert_row(&mut transaction, unit, job, row, outcome, person_id, &findings).await? {
                recorded += 1;
            }
            match outcome {
                "saved" => saved += 1,
                "refused" => refused += 1,
                _ => {}
            }
        }
        self.count_rows(&mut transaction, job.job_id, recorded, saved, refused).await?;
        let saved_count = u32::try_from(saved).unwrap_or(0);
        self.announce_registered(&mut transaction, unit, actor, &job.kind, saved_count, "import").await?;
        transaction.commit().await.map_err(kit::db::status)?;
        Ok(None)
    }

    /// Records a batch; a batch that lost a person to another save is recorded row by row, and that row refused.
    async fn record_batch(
        &self,
        unit: &str,
        job: &JobRow,
        rows: &[&CheckedRow],
        accepted: &[String],
        actor: &Actor,
        save: bool,
    ) -> Result<(), Status> {
        if self.record_rows(unit, job, rows, accepted, actor, save).await?.is_none() {
            return Ok(());
        }
        for row in rows {
            if self.record_rows(unit, job, &[row], accepted, actor, save).await?.is_some() {
                self.record_refusal(unit, job, row, "registration_taken").await?;
            }
        }
        Ok(())
    }

    async fn count_rows(
        &self,
        transaction: &mut PgConnection,
        job_id: uuid::Uuid,
        recorded: i32,
        saved: i32,
        refused: i32,
    ) -> Result<(), Status> {
        sqlx::query(
            "update import_jobs set rows_done = rows_done + $2, rows_saved = rows_saved + $3, \
             rows_failed = rows_failed + $4 where job_id = $1",
        )
        .bind(job_id)
        .bind(recorded)
        .bind(saved)
        .bind(refused)
        .execute(transaction)
        .await
        .map(|_| ())
        .map_err(kit::db::status)
    }

    async fn record_refusal(&self, unit: &str, job: &JobRow, row: &CheckedRow, code: &str) -> Result<(), Status> {
        let findings = vec![serde_json::json!({ "field": "id_number", "column": "证件号码", "code": code,
            "message": "同一人员正被同时登记，请稍后核实", "warning": false })];
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let recorded = i32::from(self.insert_row(&mut transaction, unit, job, row, "refused", None, &findings).await?);
        self.count_rows(&mut transaction, job.job_id, recorded, 0, 1).await?;
        transaction.commit().await.map_err(kit::db::status)
    }

    /// Stores a row's outcome; true when the row had none before (a resumed job, all_or_nothing's second pass).
    #[allow(clippy::too_many_arguments)]
    async fn insert_row(
        &self,
        transaction: &mut PgConnection,
        unit: &str,
        job: &JobRow,
        row: &CheckedRow,
        outcome: &str,
        person_id: Option<uuid::Uuid>,
        findings: &[serde_json::Value],
    ) -> Result<bool, Status> {
        // xmax is zero for a row this statement inserted, and set for one it updated.
        let replaced: bool = sqlx::query_scalar(
            "insert into import_rows (job_id, institution_code, row_number, outcome, person_id, name, findings, \
             population_status) values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (job_id, row_number) do update \
             set outcome = excluded.outcome, person_id = excluded.person_id, findings = excluded.findings, \
             population_status = excluded.population_status returning xmax <> 0",
        )
        .bind(job.job_id)
        .bind(unit)
        .bind(i32::try_from(row.number).unwrap_or(i32::MAX))
        .bind(outcome)
        .bind(person_id)
        .bind(&row.name)
        .bind(serde_json::Value::Array(findings.to_vec()))
        .bind(row.answer.as_str())
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        Ok(!replaced)
    }

    async fn audit_import_row(
        &self,
        transaction: &mut PgConnection,
        actor: &Actor,
        job: &JobRow,
        person_id: uuid::Uuid,
        values: &Values,
    ) -> Result<(), Status> {
        let object = format!("person:{person_id}");
        let detail = serde_json::json!({ "kind": values.kind, "id_number": values.id_number_masked,
            "import": job.job_id });
        let record =
            audit::Record { actor, action: "person.create", object: &object, outcome: Outcome::Success, detail };
        audit::append(transaction, &record).await.map_err(kit::db::status)?;
        Ok(())
    }

    /// all_or_nothing: when every row passed, every person is saved in one transaction, or (a race lost to another
    /// save) none is. The file is read once more, in the transaction; each row's registry answer is the one its
    /// check recorded.
    #[allow(clippy::too_many_arguments)]
    async fn save_all_or_nothing(
        &self,
        unit: &str,
        job: &JobRow,
        file: &std::sync::Arc<Vec<u8>>,
        unit_type: &str,
        rules: &Rules,
        accepted: &[String],
        actor: &Actor,
    ) -> Result<(), Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(unit)).await.map_err(kit::db::status)?;
        let (refused, valid): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where outcome <> 'valid'), count(*) filter (where outcome = 'valid') \
             from import_rows where job_id = $1",
        )
        .bind(job.job_id)
        .fetch_one(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        if refused > 0 || valid == 0 {
            return transaction.commit().await.map_err(kit::db::status);
        }
        let answers: HashMap<i32, String> = sqlx::query_as::<_, (i32, String)>(
            "select row_number, coalesce(population_status, 'pending') from import_rows where job_id = $1",
        )
        .bind(job.job_id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(kit::db::status)?
        .into_iter()
        .collect();
        self.roster_locked(&mut transaction, unit).await?;
        let mut seen = HashMap::new();
        let (mut rows, reader) = stream_rows(file.clone(), &job.kind, 256);
        let mut saved = 0;
        while let Some(row) = rows.recv().await {
            let mut row = self.check_row(&job.kind, &row, unit_type, rules, &mut seen);
            let number = i32::try_from(row.number).unwrap_or(i32::MAX);
            row.answer = Answer::parse(answers.get(&number).map_or("pending", String::as_str));
            if row.checked.values.as_ref().is_some_and(|values| values.id_type == "01") {
                add_population_finding(&mut row.checked, row.answer);
            }
            let Ok((values, accepted_warnings)) = accepted_values(&row.checked, accepted, &actor.name) else {
                return transaction.commit().await.map_err(kit::db::status);
            };
            let person_id = uuid::Uuid::now_v7();
            match self.write(&mut transaction, unit, person_id, &values, row.answer, &accepted_warnings, actor).await {
                Ok(()) => {}
                Err(WriteError::Database(status)) => return Err(status),
                Err(WriteError::Taken) => {
                    drop(transaction);
                    return self.record_refusal(unit, job, &row, "registration_taken").await;
                }
            }
            history(&mut transaction, person_id, "registered", &actor.name, Some("批量导入"), None).await?;
            self.audit_import_row(&mut transaction, actor, job, person_id, &values).await?;
            sqlx::query(
                "update import_rows set outcome = 'saved', person_id = $3 where job_id = $1 and row_number = $2",
            )
            .bind(job.job_id)
            .bind(number)
            .bind(person_id)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
            saved += 1;
        }
        reader
            .await
            .map_err(|_| Status::internal("internal error"))?
            .map_err(|_| Status::internal("internal error"))?;
        sqlx::query("update import_jobs set rows_saved = $2 where job_id = $1")
            .bind(job.job_id)
            .bind(saved)
            .execute(&mut *transaction)
            .await
            .map_err(kit::db::status)?;
        let saved_count = u32::try_from(saved).unwrap_or(0);
        self.announce_registered(&mut transaction, unit, actor, &job.kind, saved_count, "import").await?;
        transaction.commit().await.map_err(kit::db::status)
    }

    /// Says the worker is still at it (and, first, how many rows the file has).
    async fn progress(&self, job_id: uuid::Uuid, worker: &str, total: Option<i32>) -> Result<(), Status> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await.map_err(kit::db::status)?;
        sqlx::query(
            "update import_jobs set heartbeat_at = now(), rows_total = coalesce($3, rows_total) \
             where job_id = $1 and worker = $2",
        )
        .bind(job_id)
        .bind(worker)
        .bind(total)
        .execute(&mut *transaction)
        .await
        .map_err(kit::db::status)?;
        transaction.commit().await.map_err(kit::db::status)
    }

    /// `GetImportReport`: the rows of the file that were refused or warned, as uploaded, each offending cell filled
    /// red (a warning amber) with its message in a note, and a sheet of every finding. At most
    /// `REPORT_ROWS` rows, so the report stays one message; the finding sheet says when more were left out.
    pub async fn import_report(&self, caller: &Caller, job_id: &str) -> Result<SpreadsheetFile, Status> {
        let job = self.import_job(caller, job_id).await?;
        let (unit, job_id) = self.own_job(caller, job_id).await?;
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
        let file = self.file_of(&mut transaction, job_id).await?;
        transaction.commit().await.map_err(kit::db::status)?;
        let broken = |error: rust_xlsxwriter::XlsxError| {
            tracing::error!(%error, "cannot write an import report");
            Status::internal("internal error")
        };
        // Only the rows the report shows are kept from the file, in the template's column order.
        let wanted: HashSet<u32> = job
            .rows
            .iter()
            .filter(|row| !row.findings.is_empty())
            .take(REPORT_ROWS)
            .map(|row| row.row_number)
            .collect();
        let mut kept = Vec::new();
        let read = spreadsheet::for_each_row(&file, &[], |row| {
            if wanted.contains(&row.number) {
                kept.push(row);
            }
            Ok::<(), ()>(())
        });
        let headers = columns(&job.kind).iter().map(|column| column.header.to_owned()).collect();
        let table = read.ok().map(|()| spreadsheet::Table { headers, rows: kept });
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let bold = rust_xlsxwriter::Format::new().set_bold();
        let error_cell = rust_xlsxwriter::Format::new().set_background_color("#F4B6B6");
        let warning_cell = rust_xlsxwriter::Format::new().set_background_color("#FBE3A6");
        let problems: Vec<&ImportRowReport> = job.rows.iter().filter(|row| !row.findings.is_empty()).collect();
        if let Some(table) = &table {
            let sheet = workbook.add_worksheet();
            sheet.set_name("有问题的行").map_err(broken)?;
            sheet.write_string_with_format(0, 0, "行号", &bold).map_err(broken)?;
            for (col, header) in table.headers.iter().enumerate() {
                let col = u16::try_from(col + 1).unwrap_or(u16::MAX);
                sheet.write_string_with_format(0, col, header, &bold).map_err(broken)?;
                sheet.set_column_width(col, 16).map_err(broken)?;
            }
            let by_number: HashMap<u32, &spreadsheet::Row> = table.rows.iter().map(|row| (row.number, row)).collect();
            for (at, report) in problems.iter().take(REPORT_ROWS).enumerate() {
                let line = u32::try_from(at + 1).unwrap_or(u32::MAX);
                sheet.write_number(line, 0, f64::from(report.row_number)).map_err(broken)?;
                let Some(row) = by_number.get(&report.row_number) else { continue };
                for (col, header) in table.headers.iter().enumerate() {
                    let col = u16::try_from(col + 1).unwrap_or(u16::MAX);
                    let here: Vec<&ImportFinding> = report
                        .findings
                        .iter()
                        .filter(|finding| header.trim_end_matches('*') == finding.column)
                        .collect();
                    let value = row.get(header);
                    match here.first() {
                        None => sheet.write_string(line, col, value).map(|_| ()),
                        Some(first) => {
                            let format =
                                if here.iter().all(|finding| finding.warning) { &warning_cell } else { &error_cell };
                            sheet.write_string_with_format(line, col, value, format).map_err(broken)?;
                            let text: Vec<&str> = here.iter().map(|finding| finding.message.as_str()).collect();
                            let note = rust_xlsxwriter::Note::new(text.join("\n")).set_author(first.code.as_str());
                            sheet.insert_note(line, col, &note).map(|_| ())
                        }
                    }
                    .map_err(broken)?;
                }
            }
            sheet.set_freeze_panes(1, 1).map_err(broken)?;
        }
        let sheet = workbook.add_worksheet();
        sheet.set_name("问题清单").map_err(broken)?;
        for (col, header) in ["行号", "姓名", "结果", "列", "代码", "说明", "类别"].iter().enumerate() {
            sheet.write_string_with_format(0, u16::try_from(col).unwrap_or(0), *header, &bold).map_err(broken)?;
        }
        let mut line = 1;
        for report in problems.iter().take(REPORT_ROWS) {
            let outcome = match report.outcome.as_str() {
                "saved" => "已保存",
                "valid" => "校验通过（未保存）",
                "already_registered" => "本单位已登记",
                _ => "未保存",
            };
            for finding in &report.findings {
                let cells = [
                    report.row_number.to_string(),
                    report.name.clone(),
                    outcome.to_owned(),
                    finding.column.clone(),
                    finding.code.clone(),
                    finding.message.clone(),
                    if finding.warning { "提示" } else { "错误" }.to_owned(),
                ];
                for (col, cell) in cells.iter().enumerate() {
                    sheet.write_string(line, u16::try_from(col).unwrap_or(0), cell).map_err(broken)?;
                }
                line += 1;
            }
        }
        if problems.len() > REPORT_ROWS {
            let note = format!("另有{}行有问题未列出，请修改以上各行后重新导入", problems.len() - REPORT_ROWS);
            sheet.write_string(line, 0, note.as_str()).map_err(broken)?;
        }
        sheet.set_column_width(5, 60).map_err(broken)?;
        let content = workbook.save_to_buffer().map_err(broken)?;
        Ok(SpreadsheetFile { file_name: format!("导入结果-{}.xlsx", job.job_id), content })
    }

    /// Deletes the files of jobs that ended longer than `keep_files_for` ago; returns how many chunks went.
    pub async fn prune_import_files(&self, config: &ImportConfig) -> Result<u64, sqlx::Error> {
        let mut transaction = kit::db::begin_scoped(&self.pool, &Scope::All).await?;
        let pruned = sqlx::query(
            "delete from import_chunks c using import_jobs j where c.job_id = j.job_id \
             and j.finished_at < now() - $1::interval",
        )
        .bind(format!("{} milliseconds", config.keep_files_for.as_millis()))
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(pruned)
    }

    /// `ExportPersons`: the unit's people as xlsx, the ID numbers masked.
    /// With `declaration_id`: a declared roster as frozen, for the unit's operator, a reviewer of its agency or the
    /// province admin. ID numbers are masked for every role: a bulk export is no place for them in clear.
    pub async fn export(&self, caller: &Caller, kind: &str, declaration_id: &str) -> Result<SpreadsheetFile, Status> {
        let (persons, object) = if declaration_id.trim().is_empty() {
            let unit = unit_of(caller, "", true)?;
            let mut transaction =
                kit::db::begin_scoped(&self.pool, &Scope::unit(&unit)).await.map_err(kit::db::status)?;
            let persons = self.read_all_on(&mut transaction, &unit, false).await?;
            transaction.commit().await.map_err(kit::db::status)?;
            (persons, format!("unit:{unit}"))
        } else {
            // The snapshot's own rules decide who may read it; its numbers come masked to anyone but the platform.
            let roster = self.snapshot(caller, declaration_id, "", false).await?;
            if roster.kind != "roster" {
                return Err(refuse(
                    Code::FailedPrecondition,
                    "not_a_roster",
                    "人员变更申报没有人员名单，请查看变更明细",
                ));
            }
            (roster.persons, format!("declaration:{}", declaration_id.trim()))
        };
        if caller.role == "system" {
            return Err(refuse(Code::PermissionDenied, "forbidden", "导出仅供经办人员使用"));
        }
        let broken = |error: rust_xlsxwriter::XlsxError| {
            tracing::error!(%error, "cannot write the export");
            Status::internal("internal error")
        };
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let bold = rust_xlsxwriter::Format::new().set_bold();
        let sheet = workbook.add_worksheet();
        sheet.set_name("人员").map_err(broken)?;
        let headers = [
            "人员类别",
            "姓名",
            "证件类型",
            "证件号码",
            "性别",
            "出生日期",
            "经费补助形式",
            "民族",
            "参加工作时间",
            "进入本单位时间",
            "人员身份",
            "编制类型",
            "离退休日期",
            "离退休类别",
            "基本退休费",
            "公安库校验",
        ];
        for (col, header) in headers.iter().enumerate() {
            let col = u16::try_from(col).unwrap_or(0);
            sheet.write_string_with_format(0, col, *header, &bold).map_err(broken)?;
            sheet.set_column_width(col, 14).map_err(broken)?;
        }
        let label = |list: &str, code: &str| self.codes.label(list, code).unwrap_or(code).to_owned();
        let chosen = persons.iter().filter(|person| kind.trim().is_empty() || person.kind == kind.trim());
        for (at, person) in chosen.enumerate() {
            let cells = [
                person.kind_label.clone(),
                person.name.clone(),
                label("id_type", &person.id_type),
                person.id_number_masked.clone(),
                sex_label(&person.sex).to_owned(),
                person.birth_date.clone(),
                label("funding_form", &person.funding_form),
                label("ethnicity", &person.ethnicity),
                person.work_start.clone(),
                person.joined_unit.clone(),
                label("personnel_status", &person.personnel_status),
                label("establishment", &person.establishment),
                person.retirement_date.clone(),
                label("retirement_category", &person.retirement_category),
                person.monthly_pension.clone(),
                person.population_status.clone(),
            ];
            let row = u32::try_from(at + 1).unwrap_or(u32::MAX);
            for (col, cell) in cells.iter().enumerate() {
                sheet.write_string(row, u16::try_from(col).unwrap_or(0), cell).map_err(broken)?;
            }
        }
        sheet.set_freeze_panes(1, 0).map_err(broken)?;
        let content = workbook.save_to_buffer().map_err(broken)?;
        let actor = Actor::of(caller);
        let detail = serde_json::json!({ "kind": kind, "masked": true, "persons": persons.len() });
        let record = audit::Record {
            actor: &actor,
            action: "persons.export",
            object: &object,
            outcome: Outcome::Success,
            detail,
        };
        let mut connection = self.pool.acquire().await.map_err(kit::db::status)?;
        audit::append(&mut connection, &record).await.map_err(kit::db::status)?;
        Ok(SpreadsheetFile { file_name: "人员名单.xlsx".into(), content })
    }
}

/// What the rules of a person need besides the row, read once per job.
struct Rules {
    today: time::Date,
    reference_wage: Option<String>,
}

impl Rules {
    async fn load(people: &People) -> Result<Self, Status> {
        Ok(Self { today: OffsetDateTime::now_utc().date(), reference_wage: people.reference_wage().await? })
    }
}

/// The headers a kind's file must have.
fn required_headers(kind: &str) -> Vec<&'static str> {
    columns(kind).iter().filter(|column| column.required).map(|column| column.header).collect()
}

/// The file's rows, parsed on a blocking thread and handed over a channel of `capacity`: when the receiver falls
/// behind the parser waits, so memory stays bounded. The reader's result says whether the file read to its end.
fn stream_rows(
    file: std::sync::Arc<Vec<u8>>,
    kind: &str,
    capacity: usize,
) -> (tokio::sync::mpsc::Receiver<spreadsheet::Row>, tokio::task::JoinHandle<Result<(), spreadsheet::Stop<()>>>) {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
    let headers = required_headers(kind);
    let reader = tokio::task::spawn_blocking(move || {
        spreadsheet::for_each_row(&file, &headers, |row| sender.blocking_send(row).map_err(|_| ()))
    });
    (receiver, reader)
}

/// How many data rows the file has, or why it is no table of this kind.
async fn count_rows_of(file: std::sync::Arc<Vec<u8>>, kind: &str) -> Result<i32, spreadsheet::TableError> {
    let headers = required_headers(kind);
    let counted = tokio::task::spawn_blocking(move || {
        let mut total = 0_i32;
        spreadsheet::for_each_row(&file, &headers, |_| {
            total = total.saturating_add(1);
            Ok::<(), ()>(())
        })
        .map(|()| total)
    })
    .await;
    match counted {
        Ok(Ok(total)) => Ok(total),
        Ok(Err(spreadsheet::Stop::Table(error))) => Err(error),
        Ok(Err(spreadsheet::Stop::Row(()))) | Err(_) => Err(spreadsheet::TableError::Xlsx("读取中断".into())),
    }
}

enum Claimed {
    Run(Box<JobRow>),
    Busy,
    Finished,
}

/// The durable consumer of personnel's import work items, shared by every replica.
pub fn import_consumer(namespace: &Namespace) -> ConsumerSpec {
    let spec = ConsumerSpec::new(
        namespace.work_stream("personnel"),
        namespace.work_filter("personnel"),
        namespace.consumer("personnel", "imports"),
        namespace.work_subject("personnel", "import"),
    );
    // A work item is asked about again, at most a minute apart, until its job ends: one waiting behind its unit's
    // running import, or through a long outage, must not be given up after the events' 50 deliveries and leave
    // its job queued for ever (100,000 deliveries is over two months).
    ConsumerSpec { max_deliver: 100_000, ..spec }
}

/// Runs the import a work item names. A job another worker is running (or another job of the same unit) is asked
/// about again later; one that is over is done with.
#[derive(Debug)]
pub struct ImportWorker {
    pub people: People,
    pub config: ImportConfig,
    /// This replica's name in the job's `worker` column.
    pub name: String,
    /// Crash points, armed by tests only.
    pub faults: kit::faults::Faults,
}

impl Handler for ImportWorker {
    async fn handle(&self, _transaction: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let job_id = std::str::from_utf8(&event.payload)
            .ok()
            .and_then(|text| text.parse::<uuid::Uuid>().ok())
            .ok_or_else(|| HandlerError::Poison("an import work item without a job id".into()))?;
        let retry = |status: Status| HandlerError::Retry(status.message().to_owned());
        match self.people.claim(job_id, &self.name, &self.config).await.map_err(retry)? {
            Claimed::Finished => Ok(()),
            Claimed::Busy => Err(HandlerError::Retry("the job or another of its unit is running".into())),
            Claimed::Run(job) => match self.people.run_import(&job, &self.name, &self.config, &self.faults).await {
                Ok(()) => Ok(()),
                // A passing failure leaves the job running; the redelivery takes it over after the silence.
                Err(status) if matches!(status.code(), Code::Unavailable | Code::Internal) => Err(retry(status)),
                Err(status) => {
                    let message = status.message().to_owned();
                    let code = kit::status::reason(&status).unwrap_or_else(|| "refused".into());
                    self.people.finish(job.job_id, "failed", Some(&code), Some(&message)).await.map_err(retry)
                }
            },
        }
    }
}
