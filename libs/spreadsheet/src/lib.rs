//! Reading an uploaded table, xlsx (its first sheet) or CSV (UTF-8, or GB18030 as Excel saves it on Chinese
//! Windows), into rows of text keyed by header, with the row numbers a person sees in the spreadsheet (the header is
//! row 1). Dates come out as YYYY-MM-DD whether the cell was a date, a number (Excel's serial day) or text; formulas
//! as the value Excel last computed. Files that are no table at all, or encrypted, are refused with a message that
//! says so.

use std::collections::HashMap;
use std::io::Cursor;

use calamine::{Data, Reader};

/// A table read from a file: the header names and the non-empty rows.
#[derive(Debug)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Row>,
}

/// One data row.
#[derive(Debug)]
pub struct Row {
    /// As the spreadsheet numbers it: the header is row 1, so the first data row is 2.
    pub number: u32,
    pub cells: HashMap<String, String>,
}

impl Row {
    /// The trimmed text under `header`, or "" when the column is absent or the cell empty.
    pub fn get(&self, header: &str) -> &str {
        self.cells.get(header).map(|value| value.trim()).unwrap_or("")
    }
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("文件为空")]
    Empty,
    #[error("文件已加密（设置了打开密码），请在Excel中取消密码后重新上传")]
    Encrypted,
    #[error("文件不是Excel（xlsx）或CSV表格，请使用下载的模板填写后上传")]
    NotATable,
    #[error("无法读取Excel文件：{0}")]
    Xlsx(String),
    #[error("无法读取CSV文件（请使用UTF-8编码）：{0}")]
    Csv(String),
    #[error("缺少必需的列：{0}")]
    MissingColumns(String),
}

/// Reads `file`, recognising xlsx by its zip signature and treating anything else as CSV, and checks that every
/// header in `required` is present (extra columns, in any order, are fine).
pub fn read(file: &[u8], required: &[&str]) -> Result<Table, TableError> {
    if file.is_empty() {
        return Err(TableError::Empty);
    }
    let table = if file.starts_with(b"PK\x03\x04") {
        read_xlsx(file)?
    } else if file.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        // An OLE compound file: an encrypted xlsx is stored in one, as is the old binary xls.
        read_compound(file)?
    } else if looks_binary(file) {
        return Err(TableError::NotATable);
    } else {
        read_csv(&text_of(file))?
    };
    let missing: Vec<&str> = required.iter().copied().filter(|name| !table.headers.iter().any(|h| h == name)).collect();
    if !missing.is_empty() {
        return Err(TableError::MissingColumns(missing.join("、")));
    }
    Ok(table)
}

/// NUL bytes or other control characters that no text table holds: an image, a PDF, a zip of something else.
fn looks_binary(file: &[u8]) -> bool {
    file.iter().take(4096).any(|byte| *byte == 0 || (*byte < 0x09) || (0x0E..0x1B).contains(byte))
}

/// The file as text: UTF-8 (with or without its byte-order mark) when it is valid UTF-8, GB18030 otherwise (what
/// Excel writes for "CSV" on Chinese Windows).
fn text_of(file: &[u8]) -> String {
    let file = file.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(file);
    match std::str::from_utf8(file) {
        Ok(text) => text.to_owned(),
        Err(_) => encoding_rs::GB18030.decode(file).0.into_owned(),
    }
}

fn read_compound(file: &[u8]) -> Result<Table, TableError> {
    // An old binary xls opens; an encrypted workbook does not, and says nothing more useful than that.
    match calamine::open_workbook_auto_from_rs(Cursor::new(file)) {
        Ok(mut workbook) => match workbook.worksheet_range_at(0) {
            Some(Ok(range)) => table_of(&range),
            _ => Err(TableError::Encrypted),
        },
        Err(_) => Err(TableError::Encrypted),
    }
}

/// Why a streamed read stopped: the file, or the caller's handling of a row.
#[derive(Debug)]
pub enum Stop<E> {
    Table(TableError),
    Row(E),
}

impl<E> From<TableError> for Stop<E> {
    fn from(error: TableError) -> Self {
        Stop::Table(error)
    }
}

/// Calls `each` with every non-empty data row, in order, without holding the table: an xlsx is read cell by cell
/// from its sheet's XML, so memory stays bounded by the file itself whatever its rows. The header is checked for
/// `required` (or each with a trailing "*", as the import templates mark required columns) before any row; the
/// headers passed on have the "*" taken off.
pub fn for_each_row<E>(
    file: &[u8],
    required: &[&str],
    mut each: impl FnMut(Row) -> Result<(), E>,
) -> Result<(), Stop<E>> {
    if file.is_empty() {
        return Err(TableError::Empty.into());
    }
    if file.starts_with(b"PK\x03\x04") {
        return stream_xlsx(file, required, &mut each);
    }
    // A CSV or an old xls is small enough to read whole; the rows are handed on the same way.
    let table = read(file, &[])?;
    let headers: Vec<String> = table.headers.iter().map(|header| header.trim_end_matches('*').to_owned()).collect();
    check_required(&headers, required)?;
    for row in table.rows {
        let cells =
            row.cells.into_iter().map(|(header, value)| (header.trim_end_matches('*').to_owned(), value)).collect();
        each(Row { number: row.number, cells }).map_err(Stop::Row)?;
    }
    Ok(())
}

fn check_required(headers: &[String], required: &[&str]) -> Result<(), TableError> {
    let missing: Vec<&str> = required.iter().copied().filter(|name| !headers.iter().any(|h| h == name)).collect();
    if missing.is_empty() { Ok(()) } else { Err(TableError::MissingColumns(missing.join("、"))) }
}

fn stream_xlsx<E>(file: &[u8], required: &[&str], each: &mut impl FnMut(Row) -> Result<(), E>) -> Result<(), Stop<E>> {
    let broken = |error: calamine::XlsxError| Stop::Table(TableError::Xlsx(error.to_string()));
    let mut workbook: calamine::Xlsx<_> = calamine::Xlsx::new(Cursor::new(file)).map_err(broken)?;
    let Some(sheet) = workbook.sheet_names().first().cloned() else {
        return Err(TableError::Xlsx("没有工作表".into()).into());
    };
    let mut cells = workbook.worksheet_cells_reader(&sheet).map_err(broken)?;
    // Header names by column; then each row's cells as they come, row after row.
    let mut headers: Option<Vec<String>> = None;
    let mut current: Option<(u32, Vec<(u32, String)>)> = None;
    let mut flush =
        |row: Option<(u32, Vec<(u32, String)>)>, headers: &mut Option<Vec<String>>| -> Result<(), Stop<E>> {
            let Some((number, values)) = row else { return Ok(()) };
            let Some(names) = headers else {
                let width = values.iter().map(|(col, _)| *col as usize + 1).max().unwrap_or(0);
                let mut names = vec![String::new(); width];
                for (col, value) in values {
                    names[col as usize] = validators::text::normalize_name(&value).trim_end_matches('*').to_owned();
                }
                check_required(&names, required)?;
                *headers = Some(names);
                return Ok(());
            };
            if values.iter().all(|(_, value)| value.trim().is_empty()) {
                return Ok(());
            }
            let cells = values
                .into_iter()
                .filter_map(|(col, value)| {
                    names.get(col as usize).filter(|name| !name.is_empty()).map(|name| (name.clone(), value))
                })
                .collect();
            // Excel numbers rows from 1: the cell reader's row index is one less.
            each(Row { number: number + 1, cells }).map_err(Stop::Row)
        };
    while let Some(cell) = cells.next_cell().map_err(broken)? {
        let (row, col) = cell.get_position();
        if current.as_ref().is_some_and(|(at, _)| *at != row) {
            flush(current.take(), &mut headers)?;
        }
        let text = cell_text(&Data::from(cell.get_value().clone()));
        current.get_or_insert_with(|| (row, Vec::new())).1.push((col, text));
    }
    flush(current.take(), &mut headers)?;
    if headers.is_none() {
        return Err(TableError::Empty.into());
    }
    Ok(())
}

fn read_csv(text: &str) -> Result<Table, TableError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|error| TableError::Csv(error.to_string()))?
        .iter()
        .map(validators::text::normalize_name)
        .collect();
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|error| TableError::Csv(error.to_string()))?;
        let number = u32::try_from(index).unwrap_or(u32::MAX).saturating_add(2);
        let cells: HashMap<String, String> = headers.iter().cloned().zip(record.iter().map(str::to_owned)).collect();
        if cells.values().any(|value| !value.trim().is_empty()) {
            rows.push(Row { number, cells });
        }
    }
    Ok(Table { headers, rows })
}

fn read_xlsx(file: &[u8]) -> Result<Table, TableError> {
    let mut workbook =
        calamine::open_workbook_auto_from_rs(Cursor::new(file)).map_err(|error| TableError::Xlsx(error.to_string()))?;
    let range = workbook
        .worksheet_range_at(0)
        .ok_or_else(|| TableError::Xlsx("没有工作表".into()))?
        .map_err(|error| TableError::Xlsx(error.to_string()))?;
    table_of(&range)
}

fn table_of(range: &calamine::Range<Data>) -> Result<Table, TableError> {
    // Rows are numbered as Excel shows them, even when the used range does not start at A1.
    let first_row = range.start().map(|(row, _)| row).unwrap_or(0);
    let mut sheet_rows = range.rows();
    let headers: Vec<String> = sheet_rows
        .next()
        .ok_or(TableError::Empty)?
        .iter()
        .map(|cell| validators::text::normalize_name(&cell_text(cell)))
        .collect();
    let mut rows = Vec::new();
    for (index, cells) in sheet_rows.enumerate() {
        let number = first_row.saturating_add(u32::try_from(index).unwrap_or(u32::MAX)).saturating_add(2);
        let cells: HashMap<String, String> = headers.iter().cloned().zip(cells.iter().map(cell_text)).collect();
        if cells.values().any(|value| !value.trim().is_empty()) {
            rows.push(Row { number, cells });
        }
    }
    Ok(Table { headers, rows })
}

/// A cell as text: whole numbers without a decimal point (codes typed as numbers stay codes), dates as YYYY-MM-DD.
fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::Float(value) if value.fract() == 0.0 && value.abs() < 1e15 => format!("{value:.0}"),
        // Excel keeps a date as its serial day number with a date format.
        Data::DateTime(date) => serial_date(&format!("{:.0}", date.as_f64().floor())),
        Data::DateTimeIso(text) => text.get(..10).unwrap_or(text).to_owned(),
        other => other.to_string(),
    }
}

/// A date cell's text as YYYY-MM-DD when it holds Excel's serial day number (a date cell read as a plain number,
/// e.g. from a CSV saved by Excel); anything else is returned as it is. Excel counts from 1899-12-30 for every day
/// after 1900-02-28 (it also counts a 1900-02-29 that never was), which covers every date a person record holds.
pub fn serial_date(text: &str) -> String {
    let trimmed = text.trim();
    // Eight digits are a date written 20150301, not a serial number.
    let serial = trimmed.parse::<i64>().ok().filter(|days| (61..=2_958_465).contains(days) && trimmed.len() < 8);
    let Some(days) = serial else { return text.to_owned() };
    let epoch = time::Date::from_calendar_date(1899, time::Month::December, 30).unwrap_or(time::Date::MIN);
    match epoch.checked_add(time::Duration::days(days)) {
        Some(date) => date.to_string(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlsx(rows: &[&[&str]]) -> Vec<u8> {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let sheet = workbook.add_worksheet();
        for (r, row) in rows.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let (r, c) = (u32::try_from(r).expect("row"), u16::try_from(c).expect("column"));
                sheet.write_string(r, c, *value).expect("cell");
            }
        }
        workbook.save_to_buffer().expect("xlsx")
    }

    #[test]
    fn serial_days_become_dates_and_other_text_stays() {
        assert_eq!(serial_date("42064"), "2015-03-01");
        assert_eq!(serial_date("45627"), "2024-12-01");
        assert_eq!(serial_date("2015-03-01"), "2015-03-01");
        assert_eq!(serial_date("20150301"), "20150301");
        assert_eq!(serial_date("张伟"), "张伟");
    }

    #[test]
    fn csv_in_gb18030_reads_as_utf8_does() {
        let text = "姓名,证件号码\n张伟,230502198001011238\n";
        let (gb, _, _) = encoding_rs::GB18030.encode(text);
        for file in [text.as_bytes().to_vec(), gb.into_owned()] {
            let table = read(&file, &["姓名"]).expect("reads");
            assert_eq!(table.rows[0].get("姓名"), "张伟");
            assert_eq!(table.rows[0].number, 2);
        }
    }

    /// A workbook with an opening password (Pass2026), as Excel saves one: an OLE container around the encrypted
    /// package. Made with msoffcrypto-tool from a two-row sheet.
    pub(crate) const ENCRYPTED_XLSX: &[u8] = include_bytes!("../fixtures/encrypted.xlsx");

    #[test]
    fn a_workbook_with_an_opening_password_is_refused_as_encrypted() {
        assert!(matches!(read(ENCRYPTED_XLSX, &[]), Err(TableError::Encrypted)));
        assert!(matches!(
            for_each_row(ENCRYPTED_XLSX, &[], |_| Ok::<(), ()>(())),
            Err(Stop::Table(TableError::Encrypted))
        ));
    }

    #[test]
    fn files_that_are_no_table_or_are_encrypted_say_so() {
        assert!(matches!(read(b"%PDF-1.7\n\x00\x01binary", &[]), Err(TableError::NotATable)));
        let compound = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0, 0, 0];
        assert!(matches!(read(&compound, &[]), Err(TableError::Encrypted)));
        assert!(matches!(read(b"", &[]), Err(TableError::Empty)));
    }

    #[test]
    fn a_streamed_xlsx_gives_the_same_rows_as_a_whole_read_and_takes_starred_headers() {
        let file = xlsx(&[&["姓名*", "证件号码*", "备注"], &["张伟", "1", ""], &["", "", ""], &["李娜", "2", "调入"]]);
        let mut rows = Vec::new();
        for_each_row(&file, &["姓名", "证件号码"], |row| {
            rows.push((row.number, row.get("姓名").to_owned(), row.get("备注").to_owned()));
            Ok::<(), ()>(())
        })
        .expect("streams");
        assert_eq!(rows, [(2, "张伟".to_owned(), String::new()), (4, "李娜".to_owned(), "调入".to_owned())]);
        let missing = for_each_row(&file, &["民族"], |_| Ok::<(), ()>(())).expect_err("a column is missing");
        assert!(matches!(missing, Stop::Table(TableError::MissingColumns(_))));
    }

    #[test]
    fn xlsx_rows_keep_their_numbers_and_empty_rows_are_skipped() {
        let file = xlsx(&[&["姓名", "证件号码"], &["张伟", "1"], &["", ""], &["李娜", "2"]]);
        let table = read(&file, &["姓名", "证件号码"]).expect("reads");
        let numbers: Vec<u32> = table.rows.iter().map(|row| row.number).collect();
        assert_eq!(numbers, [2, 4]);
        let missing = read(&file, &["姓名", "民族"]).expect_err("a column is missing");
        assert_eq!(missing.to_string(), "缺少必需的列：民族");
    }
}
