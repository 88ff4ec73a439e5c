//! Spreadsheet imports through the real service: the template, a file of good and bad rows in each mode, the same
//! file twice, CSV in GB18030, files that are no table, a missing column, the size limit, and the export.

use std::time::Duration;

use calamine::Reader as _;
use prost::Message as _;
use proto::personnel::{
    CreateImportJobRequest, ExportPersonsRequest, GetImportJobRequest, GetImportTemplateRequest, ImportJob,
    ListPersonsRequest, PutImportChunkRequest,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::helpers::{TestPersonnel, operator, spawn_personnel};

const UNIT: &str = "230500001";

fn id_number(n: u32) -> String {
    validators::id_number::with_check_char(&format!("230502198503{:02}{:03}", 1 + n % 28, n % 1000))
}

/// An xlsx of staff with the template's headers; cells given as text, or as numbers where `numbers` says so.
fn staff_xlsx(rows: &[[&str; 5]]) -> Vec<u8> {
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet();
    for (col, header) in ["姓名*", "证件类型*", "证件号码*", "经费补助形式*", "参加工作时间*"].iter().enumerate()
    {
        sheet.write_string(0, u16::try_from(col).expect("col"), *header).expect("header");
    }
    for (r, row) in rows.iter().enumerate() {
        let r = u32::try_from(r + 1).expect("row");
        for (c, value) in row.iter().enumerate() {
            let c = u16::try_from(c).expect("col");
            // A date typed into Excel is kept as its serial day number.
            match value.strip_prefix("serial:") {
                Some(days) => sheet.write_number(r, c, days.parse::<f64>().expect("days")).map(|_| ()),
                None => sheet.write_string(r, c, *value).map(|_| ()),
            }
            .expect("cell");
        }
    }
    workbook.save_to_buffer().expect("xlsx")
}

/// Creates a job of `file`, uploads it in chunks (each sent twice, as a retry whose answer was lost sends it) and
/// submits it; returns the request that reads the job.
async fn queue(
    personnel: &TestPersonnel,
    file: &[u8],
    mode: &str,
    accepted: &[&str],
) -> Result<GetImportJobRequest, tonic::Status> {
    let mut client = personnel.client.clone();
    let created = client
        .create_import_job(CreateImportJobRequest {
            caller: operator(UNIT),
            kind: "staff".into(),
            mode: mode.into(),
            file_name: "人员.xlsx".into(),
            file_size: file.len() as u64,
            file_sha256: kit::convert::hex(&Sha256::digest(file)),
            accepted_warnings: accepted.iter().map(|code| (*code).to_owned()).collect(),
        })
        .await?
        .into_inner();
    for (at, chunk) in file.chunks(100_000).enumerate() {
        let put = PutImportChunkRequest {
            caller: operator(UNIT),
            job_id: created.job_id.clone(),
            offset: (at * 100_000) as u64,
            data: chunk.to_vec(),
        };
        client.put_import_chunk(put.clone()).await?;
        client.put_import_chunk(put).await?;
    }
    let get = GetImportJobRequest { caller: operator(UNIT), job_id: created.job_id };
    client.submit_import_job(get.clone()).await?;
    Ok(get)
}

async fn import(
    personnel: &TestPersonnel,
    file: &[u8],
    mode: &str,
    accepted: &[&str],
) -> Result<ImportJob, tonic::Status> {
    let get = queue(personnel, file, mode, accepted).await?;
    Ok(finished(personnel, &get.job_id).await)
}

async fn finished(personnel: &TestPersonnel, job_id: &str) -> ImportJob {
    let get = GetImportJobRequest { caller: operator(UNIT), job_id: job_id.into() };
    kit::testing::eventually(Duration::from_secs(300), "the import finishes", || {
        let (mut client, get) = (personnel.client.clone(), get.clone());
        async move {
            client.get_import_job(get).await.is_ok_and(|job| matches!(job.get_ref().state.as_str(), "done" | "failed"))
        }
    })
    .await;
    personnel.client.clone().get_import_job(get).await.expect("job").into_inner()
}

/// Personnel whose import worker can be stopped after a batch by the returned crash points, checking `batch_rows`
/// rows a batch and taking over a silent worker's job after `takeover_after`.
async fn personnel_with_crash_points(
    batch_rows: usize,
    takeover_after: Duration,
) -> (TestPersonnel, kit::faults::Faults) {
    let mut personnel = spawn_personnel().await;
    let faults = kit::faults::Faults::default();
    let armed = faults.clone();
    personnel
        .restart_with(move |config| {
            config.faults = armed;
            config.imports.batch_rows = batch_rows;
            config.imports.takeover_after = takeover_after;
        })
        .await;
    (personnel, faults)
}

/// `count` staff named 周敏, unknown to the development registry, with the numbers `id_number(first..)`.
fn unknown_staff_xlsx(first: u32, count: u32) -> Vec<u8> {
    let numbers: Vec<String> = (first..first + count).map(id_number).collect();
    let rows: Vec<[&str; 5]> =
        numbers.iter().map(|number| ["周敏", "01", number.as_str(), "全额拨款", "2008-09-01"]).collect();
    staff_xlsx(&rows)
}

async fn registered(personnel: &TestPersonnel) -> u32 {
    let request = ListPersonsRequest { caller: operator(UNIT), page_size: 1, ..Default::default() };
    personnel.client.clone().list_persons(request).await.expect("list").into_inner().total
}

#[tokio::test]
async fn the_template_has_the_kinds_columns_instructions_and_code_lists() {
    let personnel = spawn_personnel().await;
    let template = personnel
        .client
        .clone()
        .get_import_template(GetImportTemplateRequest { caller: operator(UNIT), kind: "retiree_post_reform".into() })
        .await
        .expect("template")
        .into_inner();
    assert!(template.file_name.ends_with(".xlsx"), "{}", template.file_name);
    let mut workbook =
        calamine::open_workbook_auto_from_rs(std::io::Cursor::new(template.content)).expect("an xlsx workbook");
    assert_eq!(workbook.sheet_names(), ["人员", "填写说明", "代码表"]);
    let people = workbook.worksheet_range("人员").expect("sheet");
    let headers: Vec<String> = people.rows().next().expect("header").iter().map(ToString::to_string).collect();
    for expected in ["姓名*", "证件号码*", "参加工作时间*", "离退休日期*", "银行账号*", "民族"] {
        assert!(headers.iter().any(|header| header == expected), "{expected} in {headers:?}");
    }
    let codes = workbook.worksheet_range("代码表").expect("sheet");
    let text: Vec<String> = codes.cells().map(|(_, _, cell)| cell.to_string()).collect();
    assert!(text.iter().any(|cell| cell == "汉族") && text.iter().any(|cell| cell == "正常退休"));
    let refused = personnel
        .client
        .clone()
        .get_import_template(GetImportTemplateRequest { caller: operator(UNIT), kind: "boss".into() })
        .await;
    assert_eq!(refused.expect_err("unknown kind").code(), Code::InvalidArgument);
}

#[tokio::test]
async fn good_rows_are_saved_bad_ones_reported_by_row_and_column_and_a_second_upload_registers_no_one_twice() {
    let personnel = spawn_personnel().await;
    let file = staff_xlsx(&[
        ["张伟", "居民身份证（户口簿）", "230502198001011238", "全额拨款", "2002-07-01"],
        ["李娜", "01", "230502199002152344", "全额拨款", "serial:42064"],
        ["孙浩", "01", "230502198001011239", "全额拨款", "2002-07-01"],
        ["", "", "", "", ""],
        ["李娜", "01", "230502199002152344", "差额拨款", "2014-07-01"],
        ["周敏", "01", &id_number(7), "全额拨款", "2008-09-01"],
    ]);
    let job = import(&personnel, &file, "valid_rows", &["population_not_found"]).await.expect("imported");
    assert_eq!(job.state, "done", "{job:?}");
    assert_eq!((job.rows_total, job.rows_saved, job.rows_failed), (5, 3, 2), "{job:?}");
    let refused: Vec<(u32, String, String)> = job
        .rows
        .iter()
        .filter(|row| row.outcome == "refused")
        .flat_map(|row| {
            row.findings.iter().filter(|f| !f.warning).map(move |f| (row.row_number, f.column.clone(), f.code.clone()))
        })
        .collect();
    assert_eq!(
        refused,
        [
            (4, "证件号码".to_owned(), "id_number_check_digit".to_owned()),
            (6, "证件号码".to_owned(), "duplicate_in_file".to_owned())
        ]
    );
    let warned = job.rows.iter().find(|row| row.row_number == 7).expect("周敏, unknown to the registry");
    assert_eq!((warned.outcome.as_str(), warned.findings[0].code.as_str()), ("saved", "population_not_found"));
    assert_eq!(registered(&personnel).await, 3);
    let joined: String = sqlx::query_scalar("select joined_unit::text from persons where name = '李娜'")
        .fetch_one(&personnel.pool)
        .await
        .expect("李娜");
    assert_eq!(joined, "2015-03-01", "a serial day number is a date, and 进入本单位时间 defaults to 参加工作时间");

    let report = personnel
        .client
        .clone()
        .get_import_report(GetImportJobRequest { caller: operator(UNIT), job_id: job.job_id.clone() })
        .await
        .expect("report")
        .into_inner();
    let mut workbook = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(report.content)).expect("xlsx");
    let rows = workbook.worksheet_range("有问题的行").expect("the file's problem rows");
    let first: Vec<String> = rows.rows().nth(1).expect("a problem row").iter().map(ToString::to_string).collect();
    assert_eq!(first[..4], ["4", "孙浩", "01", "230502198001011239"], "the row as uploaded, with its number");
    let listed = workbook.worksheet_range("问题清单").expect("the findings");
    let codes: Vec<String> = listed.rows().skip(1).map(|row| row[4].to_string()).collect();
    assert_eq!(codes, ["id_number_check_digit", "duplicate_in_file", "population_not_found"]);

    let again = import(&personnel, &file, "valid_rows", &["population_not_found"]).await.expect("imported again");
    assert_eq!(again.rows_saved, 0);
    assert_eq!(again.rows.iter().filter(|row| row.outcome == "already_registered").count(), 3);
    assert_eq!(registered(&personnel).await, 3, "the same file twice registers no one twice");
    // The dashboards hear of the three in one event of the batch; the second upload saved no one, said nothing.
    let announced: Vec<Vec<u8>> =
        sqlx::query_scalar("select payload from kit_outbox where subject like '%.people_registered' order by id")
            .fetch_all(&personnel.pool)
            .await
            .expect("outbox");
    let counts: Vec<(u32, String)> = announced
        .iter()
        .map(|payload| proto::events::PeopleRegistered::decode(payload.as_slice()).expect("an event"))
        .map(|event| (event.staff, event.source))
        .collect();
    assert_eq!(counts, [(3, "import".to_owned())]);
}

#[tokio::test]
async fn all_or_nothing_saves_nothing_unless_every_row_passes_and_warnings_need_accepting() {
    let personnel = spawn_personnel().await;
    let mixed = staff_xlsx(&[
        ["张伟", "01", "230502198001011238", "全额拨款", "2002-07-01"],
        ["孙浩", "01", "230502198001011239", "全额拨款", "2002-07-01"],
    ]);
    let refused = import(&personnel, &mixed, "all_or_nothing", &[]).await.expect("checked");
    assert_eq!((refused.state.as_str(), refused.rows_saved), ("done", 0));
    assert_eq!(registered(&personnel).await, 0);

    let good = staff_xlsx(&[
        ["张伟", "01", "230502198001011238", "全额拨款", "2002-07-01"],
        ["周敏", "01", &id_number(7), "全额拨款", "2008-09-01"],
    ]);
    let unaccepted = import(&personnel, &good, "all_or_nothing", &[]).await.expect("checked");
    assert_eq!(unaccepted.rows_saved, 0, "周敏 is unknown to the registry and the warning was not accepted");
    let accepted = import(&personnel, &good, "all_or_nothing", &["population_not_found"]).await.expect("saved");
    assert_eq!((accepted.rows_saved, registered(&personnel).await), (2, 2));
    let codes: Vec<serde_json::Value> = sqlx::query_scalar("select accepted_warnings from persons where name = '周敏'")
        .fetch_all(&personnel.pool)
        .await
        .expect("person");
    assert_eq!(codes[0][0]["code"], "population_not_found", "the accepted warning is recorded on the row's person");
}

#[tokio::test]
async fn csv_in_gb18030_imports_and_bad_files_fail_with_a_reason() {
    let personnel = spawn_personnel().await;
    let csv = "姓名,证件类型,证件号码,经费补助形式,参加工作时间\n张伟,01,230502198001011238,全额拨款,2002-07-01\n";
    let (gb18030, _, _) = encoding_rs::GB18030.encode(csv);
    let job = import(&personnel, &gb18030, "valid_rows", &[]).await.expect("imported");
    assert_eq!((job.state.as_str(), job.rows_saved), ("done", 1), "{job:?}");

    let pdf = b"%PDF-1.7\n\x00\x01\x02 not a table".to_vec();
    let failed = import(&personnel, &pdf, "valid_rows", &[]).await.expect("taken");
    assert_eq!((failed.state.as_str(), failed.error_code.as_str()), ("failed", "not_a_spreadsheet"));
    // A workbook with an opening password (see libs/spreadsheet/fixtures).
    let encrypted = include_bytes!("../../../../libs/spreadsheet/fixtures/encrypted.xlsx").to_vec();
    let locked = import(&personnel, &encrypted, "valid_rows", &[]).await.expect("taken");
    assert_eq!((locked.state.as_str(), locked.error_code.as_str()), ("failed", "encrypted_file"));
    assert!(locked.error.contains("密码"), "{}", locked.error);
    let headerless = "名字,号码\n张伟,230502198001011238\n".as_bytes().to_vec();
    let wrong = import(&personnel, &headerless, "valid_rows", &[]).await.expect("taken");
    assert_eq!(wrong.error_code, "missing_columns");
    assert!(wrong.error.contains("证件号码"), "{}", wrong.error);

    let too_large = personnel
        .client
        .clone()
        .create_import_job(CreateImportJobRequest {
            caller: operator(UNIT),
            kind: "staff".into(),
            file_size: 21 * 1024 * 1024,
            file_sha256: "0".repeat(64),
            ..Default::default()
        })
        .await
        .expect_err("refused up front");
    assert_eq!(kit::status::reason(&too_large).as_deref(), Some("file_too_large"));
    let foreign = personnel
        .client
        .clone()
        .get_import_job(GetImportJobRequest { caller: operator("230500999"), job_id: job.job_id.clone() })
        .await;
    assert_eq!(foreign.expect_err("another unit's job").code(), Code::NotFound);

    let export = personnel
        .client
        .clone()
        .export_persons(ExportPersonsRequest { caller: operator(UNIT), ..Default::default() })
        .await
        .expect("export")
        .into_inner();
    let mut workbook = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(export.content)).expect("xlsx");
    let sheet = workbook.worksheet_range("人员").expect("sheet");
    let cells: Vec<String> = sheet.cells().map(|(_, _, cell)| cell.to_string()).collect();
    assert!(cells.iter().any(|cell| cell == "230502********1238"), "masked: {cells:?}");
    assert!(!cells.iter().any(|cell| cell == "230502198001011238"), "never in clear");
}

#[tokio::test]
async fn a_worker_that_dies_mid_file_is_taken_over_and_no_row_is_lost_or_doubled() {
    let (personnel, faults) = personnel_with_crash_points(10, Duration::from_millis(300)).await;
    let file = unknown_staff_xlsx(100, 60);
    // The worker dies after its first batch: the rows of that batch are saved, the job is left running.
    faults.arm("import.after_batch");
    let get = queue(&personnel, &file, "valid_rows", &["population_not_found"]).await.expect("queued");
    let mut client = personnel.client.clone();
    kit::testing::eventually(Duration::from_secs(20), "the first batch is saved and the worker dies", || {
        let (mut client, get) = (client.clone(), get.clone());
        async move { client.get_import_job(get).await.is_ok_and(|job| job.get_ref().rows_done >= 10) }
    })
    .await;
    let stopped = client.get_import_job(get.clone()).await.expect("job").into_inner();
    assert_eq!((stopped.state.as_str(), stopped.rows_done), ("running", 10), "left half done: {stopped:?}");

    faults.disarm("import.after_batch");
    let job = finished(&personnel, &get.job_id).await;
    assert_eq!((job.state.as_str(), job.rows_saved, job.rows_done), ("done", 60, 60), "{job:?}");
    assert_eq!(registered(&personnel).await, 60, "every row once");
    let outcomes: i64 = sqlx::query_scalar("select count(*) from import_rows where job_id = $1::uuid")
        .bind(&get.job_id)
        .fetch_one(&personnel.pool)
        .await
        .expect("rows");
    assert_eq!(outcomes, 60);
}

#[tokio::test]
async fn a_units_second_import_waits_in_line_while_its_first_runs() {
    let (personnel, faults) = personnel_with_crash_points(5, Duration::from_secs(2)).await;
    let (first_file, second_file) = (unknown_staff_xlsx(300, 10), unknown_staff_xlsx(310, 10));
    // The first import stops after its first batch and holds the unit until its worker is taken for dead.
    faults.arm("import.after_batch");
    let first = queue(&personnel, &first_file, "valid_rows", &["population_not_found"]).await.expect("queued");
    let job = |get: GetImportJobRequest| {
        let mut client = personnel.client.clone();
        async move { client.get_import_job(get).await.expect("job").into_inner() }
    };
    kit::testing::eventually(Duration::from_secs(20), "the first import runs", || async {
        job(first.clone()).await.rows_done >= 5
    })
    .await;
    let second = queue(&personnel, &second_file, "valid_rows", &["population_not_found"]).await.expect("queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = job(second.clone()).await;
    assert_eq!((waiting.state.as_str(), waiting.place_in_line), ("queued", 1), "{waiting:?}");
    // The dashboards' live load: the province admin sees both jobs, running first; a reviewer only its agency's
    // units' (this unit has no agency known here); a unit operator has no such view.
    let queue_of = |role: &str, agency: &str| {
        let caller = Some(proto::common::Caller {
            actor: "dashboard".into(),
            role: role.into(),
            agency_code: agency.into(),
            ..Default::default()
        });
        let mut client = personnel.client.clone();
        async move { client.get_import_queue(proto::personnel::GetImportQueueRequest { caller }).await }
    };
    let province = queue_of("province_admin", "").await.expect("the queue").into_inner();
    assert_eq!((province.running, province.queued), (1, 1), "{province:?}");
    let states: Vec<(&str, u32)> = province.jobs.iter().map(|job| (job.state.as_str(), job.place_in_line)).collect();
    assert_eq!(states, [("running", 0), ("queued", 1)]);
    assert_eq!(province.jobs[0].rows_total, 10);
    let elsewhere = queue_of("agency_reviewer", "230100").await.expect("the queue").into_inner();
    assert_eq!((elsewhere.running, elsewhere.queued, elsewhere.jobs.len()), (0, 0, 0));
    let refused = queue_of("unit_operator", "").await.expect_err("a unit has no queue view");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    faults.disarm("import.after_batch");
    let (first, second) = (finished(&personnel, &first.job_id).await, finished(&personnel, &second.job_id).await);
    assert_eq!((first.rows_saved, second.rows_saved), (10, 10));
    assert_eq!(registered(&personnel).await, 20);
}

#[tokio::test]
async fn an_ended_imports_file_is_deleted_after_its_time_and_the_report_still_lists_the_findings() {
    let mut personnel = spawn_personnel().await;
    personnel
        .restart_with(|config| {
            config.imports.keep_files_for = Duration::ZERO;
            config.population_recheck = Duration::from_millis(100);
        })
        .await;
    let file = staff_xlsx(&[["孙浩", "01", "230502198001011239", "全额拨款", "2002-07-01"]]);
    let job = import(&personnel, &file, "valid_rows", &[]).await.expect("imported");
    kit::testing::eventually(Duration::from_secs(10), "the file is deleted", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from import_chunks").fetch_one(&personnel.pool).await.ok()
            == Some(0)
    })
    .await;
    let report = personnel
        .client
        .clone()
        .get_import_report(GetImportJobRequest { caller: operator(UNIT), job_id: job.job_id.clone() })
        .await
        .expect("report")
        .into_inner();
    let mut workbook = calamine::open_workbook_auto_from_rs(std::io::Cursor::new(report.content)).expect("xlsx");
    assert_eq!(workbook.sheet_names(), ["问题清单"], "the file's own rows are gone, its findings stay");
    let listed = workbook.worksheet_range("问题清单").expect("findings");
    assert_eq!(listed.rows().nth(1).expect("a finding")[4].to_string(), "id_number_check_digit");
}

#[tokio::test]
async fn reordered_columns_formulas_and_merged_cells_are_read_as_excel_shows_them() {
    let personnel = spawn_personnel().await;
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet();
    // Columns in another order than the template's, one extra column, a formula, and a merged cell.
    let headers = ["参加工作时间", "证件号码", "备注", "姓名", "经费补助形式", "证件类型"];
    for (col, header) in headers.iter().enumerate() {
        sheet.write_string(0, u16::try_from(col).expect("col"), *header).expect("header");
    }
    for (col, value) in ["2002-07-01", "230502198001011238", "调入", "张伟", "全额拨款", "01"].iter().enumerate()
    {
        sheet.write_string(1, u16::try_from(col).expect("col"), *value).expect("cell");
    }
    for (col, value) in ["2012-07-01", "230502199002152344", "", "", "全额拨款", "01"].iter().enumerate() {
        sheet.write_string(2, u16::try_from(col).expect("col"), *value).expect("cell");
    }
    // The name is a formula whose last computed value Excel saved with it.
    sheet.write_formula(2, 3, rust_xlsxwriter::Formula::new("=\"李\"&\"娜\"").set_result("李娜")).expect("formula");
    // A name merged over two rows: Excel shows it in the first row only; the second row lacks it.
    let merged = rust_xlsxwriter::Format::new();
    sheet.merge_range(3, 3, 4, 3, "孙浩", &merged).expect("merge");
    for row in [3, 4] {
        for (col, value) in [(0, "2002-07-01"), (4, "全额拨款"), (5, "01")] {
            sheet.write_string(row, col, value).expect("cell");
        }
    }
    sheet.write_string(3, 1, id_number(11)).expect("cell");
    sheet.write_string(4, 1, id_number(12)).expect("cell");
    let file = workbook.save_to_buffer().expect("xlsx");
    let job = import(&personnel, &file, "valid_rows", &["population_not_found"]).await.expect("imported");
    assert_eq!((job.state.as_str(), job.rows_total, job.rows_saved), ("done", 4, 3), "{job:?}");
    let refused = job.rows.iter().find(|row| row.outcome == "refused").expect("the merged cell's second row");
    assert_eq!((refused.row_number, refused.findings[0].column.as_str()), (5, "姓名"), "{refused:?}");
    let names: Vec<String> =
        sqlx::query_scalar("select name from persons order by name").fetch_all(&personnel.pool).await.expect("names");
    assert_eq!(names, ["孙浩", "张伟", "李娜"]);
}

#[tokio::test]
async fn fifty_thousand_rows_import_to_the_end() {
    let personnel = spawn_personnel().await;
    let numbers: Vec<String> = (0..50_000u32)
        .map(|n| {
            let (sequence, block) = (n % 1000, n / 1000);
            let born = format!("198{}{:02}{:02}", block / 28 % 10, block / 28 % 12 + 1, block % 28 + 1);
            validators::id_number::with_check_char(&format!("230502{born}{sequence:03}"))
        })
        .collect();
    let rows: Vec<[&str; 5]> =
        numbers.iter().map(|number| ["周敏", "01", number.as_str(), "全额拨款", "2008-09-01"]).collect();
    let job = import(&personnel, &staff_xlsx(&rows), "valid_rows", &["population_not_found"]).await.expect("imported");
    assert_eq!((job.state.as_str(), job.rows_total, job.rows_done), ("done", 50_000, 50_000), "{job:?}");
    // One generated number is 张伟's in the development registry: under another name it is refused.
    assert_eq!((job.rows_saved, job.rows_failed), (49_999, 1));
    let refused = job.rows.iter().find(|row| row.outcome == "refused").expect("the refused row");
    assert_eq!((refused.row_number, refused.findings[0].code.as_str()), (125, "population_name_mismatch"));
    assert_eq!(registered(&personnel).await, 49_999);
}
