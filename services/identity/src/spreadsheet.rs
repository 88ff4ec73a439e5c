//! Reading an uploaded table, CSV (UTF-8) or xlsx (its first sheet), into rows of text keyed by header, with the
//! row numbers a person sees in the spreadsheet (the header is row 1).

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
    let table = if file.starts_with(b"PK\x03\x04") { read_xlsx(file)? } else { read_csv(file)? };
    let missing: Vec<&str> = required.iter().copied().filter(|name| !table.headers.iter().any(|h| h == name)).collect();
    if !missing.is_empty() {
        return Err(TableError::MissingColumns(missing.join("、")));
    }
    Ok(table)
}

fn read_csv(file: &[u8]) -> Result<Table, TableError> {
    let file = file.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(file);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(file);
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

/// A cell as text: whole numbers without a decimal point (codes typed as numbers stay codes).
fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::Float(value) if value.fract() == 0.0 && value.abs() < 1e15 => format!("{value:.0}"),
        other => other.to_string(),
    }
}
