//! 参保进度 (the enrollment dashboards): how far the registry's units have come, how many people are saved each day
//! and hour, where the review queue stands, which regions lag, and the live load, for the province admin (every
//! unit) and for each agency reviewer (the agency's units only; units decides who sees what).
//!
//! The figures come from units' projection of the services' events (`GetEnrollmentProgress`) and personnel's import
//! queue; this module only arranges them. Each chart is drawn beside its table, and every table downloads as xlsx.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use minijinja::value::{Serde, Value};
use proto::names::Service;
use proto::personnel::personnel_client::PersonnelClient;
use proto::personnel::{GetImportQueueRequest, ImportQueue};
use proto::units::units_client::UnitsClient;
use proto::units::{EnrollmentProgress, GetEnrollmentProgressRequest, PeopleCount};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use crate::AppState;
use crate::charts::{self, Bar, Column, format_number};
use crate::enrollment::user;
use crate::error::ApiError;
use crate::session::SignedIn;

/// Who may open the dashboards.
const VIEWERS: [&str; 2] = ["province_admin", "agency_reviewer"];

/// A unit's states in the order of the journey, with their names on the page.
pub const STATES: [(&str, &str); 9] = [
    ("not_applied", "未申请密钥"),
    ("key_applied", "已申请密钥"),
    ("key_made", "密钥已制作"),
    ("activated", "已启用密钥"),
    ("record_filled", "单位信息已填写"),
    ("declared", "已申报待认领"),
    ("under_review", "审核中"),
    ("rejected", "已退回"),
    ("approved", "已参保"),
];

/// The funnel's steps: each is reached by the units in the states listed and in none before it.
const FUNNEL: [(&str, &[&str]); 6] = [
    (
        "已申请密钥",
        &["key_applied", "key_made", "activated", "record_filled", "declared", "under_review", "rejected", "approved"],
    ),
    ("密钥已制作", &["key_made", "activated", "record_filled", "declared", "under_review", "rejected", "approved"]),
    ("已启用密钥", &["activated", "record_filled", "declared", "under_review", "rejected", "approved"]),
    ("单位信息已填写", &["record_filled", "declared", "under_review", "rejected", "approved"]),
    ("已申报", &["declared", "under_review", "rejected", "approved"]),
    ("已参保", &["approved"]),
];

/// The province's cities (GB/T 2260, Heilongjiang), by the first four digits of a region code; `2300` is the
/// province's own level (省本级).
const CITIES: [(&str, &str); 14] = [
    ("2300", "省本级"),
    ("2301", "哈尔滨市"),
    ("2302", "齐齐哈尔市"),
    ("2303", "鸡西市"),
    ("2304", "鹤岗市"),
    ("2305", "双鸭山市"),
    ("2306", "大庆市"),
    ("2307", "伊春市"),
    ("2308", "佳木斯市"),
    ("2309", "七台河市"),
    ("2310", "牡丹江市"),
    ("2311", "黑河市"),
    ("2312", "绥化市"),
    ("2327", "大兴安岭地区"),
];

const KINDS: [&str; 3] = ["在职人员", "2014年10月1日前退休人员", "2014年10月1日后退休人员"];

fn beijing() -> UtcOffset {
    UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC)
}

fn at(timestamp: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    timestamp
        .and_then(|timestamp| OffsetDateTime::from_unix_timestamp(timestamp.seconds).ok())
        .map(|at| at.to_offset(beijing()))
}

fn city_name(prefix: &str) -> Option<&'static str> {
    CITIES.iter().find(|(code, _)| *code == prefix).map(|(_, name)| *name)
}

/// A region as the page names it: a city by name, a county by its code and city.
fn region_label(code: &str) -> String {
    if code.len() < 4 {
        return if code.is_empty() { "未知".into() } else { code.into() };
    }
    let city = city_name(&code[..4]).map(str::to_owned).unwrap_or_else(|| code[..4].to_owned());
    match code.len() {
        4 => city,
        _ if code.ends_with("00") => format!("{city}本级"),
        _ => format!("{code}（{city}）"),
    }
}

/// One cell of a table: text, or a number that stays a number in the xlsx download.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Text(String),
    Number(f64),
}

impl Cell {
    fn shown(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Number(number) => format_number(*number),
        }
    }
}

fn text(value: impl Into<String>) -> Cell {
    Cell::Text(value.into())
}

fn number(value: impl Into<f64>) -> Cell {
    Cell::Number(value.into())
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { (part / whole * 1000.0).round() / 10.0 } else { 0.0 }
}

/// A chart's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub id: &'static str,
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// A chart with its table, as the page shows it.
#[derive(Debug, Serialize)]
struct Chart {
    id: &'static str,
    title: String,
    svg: String,
    table: Table,
    /// The table's cells as text, for the page.
    shown: Vec<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct Section {
    id: &'static str,
    title: &'static str,
    charts: Vec<Chart>,
}

/// The filters a dashboard accepts.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Filter {
    /// A city (4 digits), a county (6 digits) or nothing for every region.
    pub region: String,
    /// One agency (the province admin's choice); an agency reviewer always sees its own.
    pub agency: String,
}

/// Everything a dashboard shows, fetched once per page.
struct Figures {
    progress: EnrollmentProgress,
    imports: Option<ImportQueue>,
    agencies: Vec<(String, String)>,
    now: OffsetDateTime,
}

async fn figures(state: &AppState, signed_in: &SignedIn, filter: &Filter) -> Result<Figures, ApiError> {
    signed_in.require(&VIEWERS)?;
    let request = GetEnrollmentProgressRequest {
        caller: signed_in.caller(),
        agency_code: filter.agency.clone(),
        region_code: filter.region.clone(),
    };
    let mut units = UnitsClient::new(state.platform.channel(Service::Units));
    let mut personnel = PersonnelClient::new(state.platform.channel(Service::Personnel));
    let (progress, imports, agencies) = tokio::join!(
        units.get_enrollment_progress(request),
        personnel.get_import_queue(GetImportQueueRequest { caller: signed_in.caller() }),
        crate::keys::agency_options(state),
    );
    let progress = progress.map_err(ApiError::from)?.into_inner();
    // The queue is live state of another service: without it the page still shows the projection's figures.
    let imports = imports.map(tonic::Response::into_inner).ok();
    Ok(Figures { progress, imports, agencies, now: OffsetDateTime::now_utc().to_offset(beijing()) })
}

impl Figures {
    fn agency_name(&self, code: &str) -> String {
        self.agencies
            .iter()
            .find(|(agency, _)| agency == code)
            .map(|(_, name)| name.clone())
            .unwrap_or_else(|| if code.is_empty() { "未知".into() } else { code.into() })
    }

    fn registry_total(&self) -> u64 {
        self.progress.unit_states.iter().map(|row| u64::from(row.units)).sum()
    }

    fn in_state(&self, states: &[&str]) -> u64 {
        self.progress
            .unit_states
            .iter()
            .filter(|row| states.contains(&row.state.as_str()))
            .map(|row| u64::from(row.units))
            .sum()
    }

    /// Units per state, grouped by `group` of (region, agency).
    fn states_by(&self, group: impl Fn(&str, &str) -> String) -> Vec<(String, [u64; 9])> {
        let mut groups: Vec<(String, [u64; 9])> = Vec::new();
        for row in &self.progress.unit_states {
            let key = group(&row.region_code, &row.agency_code);
            let Some(index) = STATES.iter().position(|(state, _)| *state == row.state) else { continue };
            match groups.iter_mut().find(|(existing, _)| *existing == key) {
                Some((_, counts)) => counts[index] += u64::from(row.units),
                None => {
                    let mut counts = [0; 9];
                    counts[index] = u64::from(row.units);
                    groups.push((key, counts));
                }
            }
        }
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups
    }

    fn funnel(&self) -> Chart {
        let total = self.registry_total() as f64;
        let mut bars = vec![Bar { label: "编制通单位".into(), value: total, text: format_number(total) }];
        let mut rows = vec![vec![text("编制通单位（应参保）"), number(total), text("100%")]];
        for (label, states) in FUNNEL {
            let reached = self.in_state(states) as f64;
            let share = percent(reached, total);
            bars.push(Bar {
                label: label.into(),
                value: reached,
                text: format!("{} · {share}%", format_number(reached)),
            });
            rows.push(vec![text(label), number(reached), text(format!("{share}%"))]);
        }
        let title = "参保进度漏斗（到达各环节的单位数，占编制通单位的比例）".to_owned();
        chart(
            "funnel",
            title.clone(),
            charts::bars("funnel-chart", &title, &bars, total),
            vec!["环节".into(), "单位数".into(), "占比".into()],
            rows,
        )
    }

    fn states_table(&self, id: &'static str, title: &str, heading: &str, groups: Vec<(String, [u64; 9])>) -> Chart {
        let mut headers = vec![heading.to_owned(), "编制通单位".to_owned()];
        headers.extend(STATES.iter().map(|(_, label)| (*label).to_owned()));
        headers.push("参保完成率".into());
        let mut bars = Vec::new();
        let mut rows = Vec::new();
        let mut ordered: Vec<(String, [u64; 9], f64)> = groups
            .into_iter()
            .map(|(name, counts)| {
                let total: u64 = counts.iter().sum();
                let done = percent(counts[8] as f64, total as f64);
                (name, counts, done)
            })
            .collect();
        ordered.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        for (name, counts, done) in &ordered {
            let total: u64 = counts.iter().sum();
            bars.push(Bar { label: name.clone(), value: *done, text: format!("{done}%（{}/{total}）", counts[8]) });
            let mut row = vec![text(name.clone()), number(total as f64)];
            row.extend(counts.iter().map(|count| number(*count as f64)));
            row.push(text(format!("{done}%")));
            rows.push(row);
        }
        let title = title.to_owned();
        chart(id, title.clone(), charts::bars(&format!("{id}-chart"), &title, &bars, 100.0), headers, rows)
    }

    fn by_region(&self, filter: &Filter) -> Chart {
        // Within one city the counties are compared; otherwise the cities.
        let county_level = filter.region.len() >= 4;
        let groups = self.states_by(|region, _| {
            if county_level || region.len() < 4 { region_label(region) } else { region_label(&region[..4]) }
        });
        let title = if county_level {
            "各区县参保完成率（按完成率排序）"
        } else {
            "各市（地）参保完成率（按完成率排序）"
        };
        self.states_table("regions", title, "行政区划", groups)
    }

    fn by_agency(&self) -> Chart {
        let groups = self.states_by(|_, agency| self.agency_name(agency));
        self.states_table("agencies", "各经办机构所辖单位参保完成率（按完成率排序）", "经办机构", groups)
    }

    fn day_label(&self, count: &PeopleCount) -> String {
        at(count.start.as_ref()).map(|at| format!("{:02}-{:02}", u8::from(at.month()), at.day())).unwrap_or_default()
    }

    fn hour_label(&self, count: &PeopleCount) -> String {
        at(count.start.as_ref()).map(|at| format!("{:02}日{:02}时", at.day(), at.hour())).unwrap_or_default()
    }

    fn people_headers(first: &str) -> Vec<String> {
        let mut headers = vec![first.to_owned()];
        headers.extend(KINDS.iter().map(|kind| (*kind).to_owned()));
        headers.extend(["合计".to_owned(), "删除".to_owned()]);
        headers
    }

    fn people_row(label: String, count: &PeopleCount) -> Vec<Cell> {
        let saved = count.staff + count.retiree_pre_reform + count.retiree_post_reform;
        vec![
            text(label),
            number(count.staff as f64),
            number(count.retiree_pre_reform as f64),
            number(count.retiree_post_reform as f64),
            number(saved as f64),
            number(count.deleted as f64),
        ]
    }

    fn people_columns(&self, counts: &[PeopleCount], label: impl Fn(&PeopleCount) -> String) -> Vec<Column> {
        counts
            .iter()
            .map(|count| Column {
                label: label(count),
                values: vec![count.staff as f64, count.retiree_pre_reform as f64, count.retiree_post_reform as f64],
            })
            .collect()
    }

    fn people_by_day(&self) -> Chart {
        let counts = &self.progress.people_by_day;
        let title = "每日登记人数（按人员类别）".to_owned();
        let rows = counts.iter().map(|count| Self::people_row(self.day_label(count), count)).collect();
        let svg =
            charts::columns("people-day-chart", &title, &KINDS, &self.people_columns(counts, |c| self.day_label(c)));
        chart("people_by_day", title, svg, Self::people_headers("日期"), rows)
    }

    fn people_cumulative(&self) -> Chart {
        let mut running = 0f64;
        let mut points = Vec::new();
        let mut rows = Vec::new();
        for count in &self.progress.people_by_day {
            let saved = (count.staff + count.retiree_pre_reform + count.retiree_post_reform) as f64;
            running += saved - count.deleted as f64;
            points.push((self.day_label(count), running));
            rows.push(vec![text(self.day_label(count)), number(saved), number(count.deleted as f64), number(running)]);
        }
        let title = "累计登记人数（扣除申报前删除的人员）".to_owned();
        let svg = charts::line("people-cumulative-chart", &title, &points);
        let headers = vec!["日期".into(), "当日登记".into(), "当日删除".into(), "累计".into()];
        chart("people_cumulative", title, svg, headers, rows)
    }

    fn people_by_hour(&self) -> Chart {
        let counts = &self.progress.people_by_hour;
        let title = "近48小时每小时登记人数（速率）".to_owned();
        let rows = counts.iter().map(|count| Self::people_row(self.hour_label(count), count)).collect();
        let svg =
            charts::columns("people-hour-chart", &title, &KINDS, &self.people_columns(counts, |c| self.hour_label(c)));
        chart("people_by_hour", title, svg, Self::people_headers("时段"), rows)
    }

    fn age(&self, since: Option<&prost_types::Timestamp>) -> String {
        let Some(since) = at(since) else { return "—".into() };
        let minutes = (self.now - since).whole_minutes().max(0);
        match minutes {
            0..60 => format!("{minutes} 分钟"),
            60..1440 => format!("{} 小时 {} 分钟", minutes / 60, minutes % 60),
            _ => format!("{} 天 {} 小时", minutes / 1440, minutes % 1440 / 60),
        }
    }

    fn queue(&self) -> Chart {
        let mut queue = self.progress.queue.clone();
        queue.sort_by_key(|agency| std::cmp::Reverse(agency.declared + agency.under_review));
        let bars: Vec<Bar> = queue
            .iter()
            .map(|agency| {
                let waiting = f64::from(agency.declared + agency.under_review);
                Bar {
                    label: self.agency_name(&agency.agency_code),
                    value: waiting,
                    text: format!(
                        "{} 个，最早已等 {}",
                        format_number(waiting),
                        self.age(agency.oldest_declared_at.as_ref())
                    ),
                }
            })
            .collect();
        let rows = queue
            .iter()
            .map(|agency| {
                vec![
                    text(self.agency_name(&agency.agency_code)),
                    number(agency.declared),
                    number(agency.under_review),
                    text(at(agency.oldest_declared_at.as_ref()).map(beijing_text).unwrap_or_else(|| "—".into())),
                    text(self.age(agency.oldest_declared_at.as_ref())),
                    number(agency.approved),
                    number(agency.rejected),
                ]
            })
            .collect();
        let title = "审核队列：各经办机构待审核的申报（按等待数排序）".to_owned();
        let headers = ["经办机构", "待认领", "审核中", "最早申报时间", "最长等待", "已通过", "已退回"];
        let svg = charts::bars("queue-chart", &title, &bars, 0.0);
        chart("queue", title, svg, headers.map(str::to_owned).to_vec(), rows)
    }

    fn rejections(&self) -> Chart {
        let reasons = &self.progress.rejection_reasons;
        let bars: Vec<Bar> = reasons
            .iter()
            .map(|reason| Bar {
                label: shorten(&reason.reason, 14),
                value: f64::from(reason.declarations),
                text: format_number(f64::from(reason.declarations)),
            })
            .collect();
        let rows =
            reasons.iter().map(|reason| vec![text(reason.reason.clone()), number(reason.declarations)]).collect();
        let title = "最常见的退回原因（前10）".to_owned();
        let svg = charts::bars("rejections-chart", &title, &bars, 0.0);
        chart("rejections", title, svg, vec!["退回原因".into(), "申报数".into()], rows)
    }

    fn load(&self) -> Chart {
        let columns: Vec<Column> = self
            .progress
            .load
            .iter()
            .map(|minute| Column {
                label: at(minute.minute.as_ref())
                    .map(|at| format!("{:02}:{:02}", at.hour(), at.minute()))
                    .unwrap_or_default(),
                values: vec![f64::from(minute.saved), f64::from(minute.imported)],
            })
            .collect();
        let rows = columns
            .iter()
            .map(|column| vec![text(column.label.clone()), number(column.values[0]), number(column.values[1])])
            .collect();
        let title = "近60分钟每分钟保存人数（全省）".to_owned();
        let svg = charts::columns("load-chart", &title, &["逐人保存", "批量导入"], &columns);
        chart("load", title, svg, vec!["时间".into(), "逐人保存".into(), "批量导入".into()], rows)
    }

    fn imports(&self) -> Chart {
        let title = "批量导入：正在运行和排队的任务".to_owned();
        let Some(imports) = &self.imports else {
            let svg = charts::bars("imports-chart", &title, &[], 0.0);
            return chart("imports", title, svg, vec!["状态".into()], vec![vec![text("导入队列暂时无法查询")]]);
        };
        let bars = vec![
            Bar {
                label: "运行中".into(),
                value: f64::from(imports.running),
                text: format_number(f64::from(imports.running)),
            },
            Bar {
                label: "排队中".into(),
                value: f64::from(imports.queued),
                text: format_number(f64::from(imports.queued)),
            },
        ];
        let rows = imports
            .jobs
            .iter()
            .map(|job| {
                let kind = match job.kind.as_str() {
                    "retiree_pre_reform" => KINDS[1],
                    "retiree_post_reform" => KINDS[2],
                    _ => KINDS[0],
                };
                vec![
                    text(if job.unit_name.is_empty() { job.institution_code.clone() } else { job.unit_name.clone() }),
                    text(kind),
                    text(if job.state == "running" { "运行中" } else { "排队中" }),
                    if job.state == "running" { text("—") } else { number(job.place_in_line) },
                    text(if job.rows_total > 0 {
                        format!("{}/{}", job.rows_done, job.rows_total)
                    } else {
                        "—".into()
                    }),
                    text(at(job.queued_at.as_ref()).map(beijing_text).unwrap_or_default()),
                ]
            })
            .collect();
        let svg = charts::bars("imports-chart", &title, &bars, 0.0);
        let headers = ["单位", "人员类别", "状态", "前面还有", "进度（行）", "排队时间"];
        chart("imports", title, svg, headers.map(str::to_owned).to_vec(), rows)
    }

    fn sections(&self, filter: &Filter, province: bool) -> Vec<Section> {
        let mut units = vec![self.funnel(), self.by_region(filter)];
        if province {
            units.push(self.by_agency());
        }
        let mut load = vec![self.imports()];
        if !self.progress.load.is_empty() || province && filter.region.is_empty() && filter.agency.is_empty() {
            load.insert(0, self.load());
        }
        vec![
            Section { id: "units", title: "单位参保进度", charts: units },
            Section {
                id: "people",
                title: "人员登记",
                charts: vec![self.people_by_day(), self.people_cumulative(), self.people_by_hour()],
            },
            Section { id: "review", title: "申报审核", charts: vec![self.queue(), self.rejections()] },
            Section { id: "load", title: "实时负载", charts: load },
        ]
    }

    /// The headline figures above the charts.
    fn headline(&self) -> Vec<(String, String, String)> {
        let total = self.registry_total() as f64;
        let approved = self.in_state(&["approved"]) as f64;
        let waiting = self.in_state(&["declared", "under_review"]) as f64;
        let saved: u64 = self
            .progress
            .people_by_day
            .iter()
            .map(|count| count.staff + count.retiree_pre_reform + count.retiree_post_reform)
            .sum();
        let deleted: u64 = self.progress.people_by_day.iter().map(|count| count.deleted).sum();
        let people = saved.saturating_sub(deleted);
        let today = self
            .progress
            .people_by_day
            .iter()
            .filter(|count| at(count.start.as_ref()).map(|at| at.date()) == Some(self.now.date()))
            .map(|count| count.staff + count.retiree_pre_reform + count.retiree_post_reform)
            .sum::<u64>();
        vec![
            ("应参保单位".into(), format_number(total), "编制通在册".into()),
            ("已参保单位".into(), format_number(approved), format!("完成率 {}%", percent(approved, total))),
            ("待审核申报".into(), format_number(waiting), "已申报与审核中的单位".into()),
            (
                "累计登记人数".into(),
                format_number(people as f64),
                format!("今日保存 {} 人", format_number(today as f64)),
            ),
        ]
    }

    /// Every table, in the page's order.
    fn tables(&self, filter: &Filter, province: bool) -> Vec<Table> {
        self.sections(filter, province)
            .into_iter()
            .flat_map(|section| section.charts)
            .map(|chart| chart.table)
            .collect()
    }
}

fn beijing_text(at: OffsetDateTime) -> String {
    format!("{}-{:02}-{:02} {:02}:{:02}", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
}

fn shorten(text: &str, most: usize) -> String {
    if text.chars().count() <= most {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(most - 1).collect();
    short.push('…');
    short
}

fn chart(id: &'static str, title: String, svg: String, headers: Vec<String>, rows: Vec<Vec<Cell>>) -> Chart {
    let shown = rows.iter().map(|row| row.iter().map(Cell::shown).collect()).collect();
    Chart { id, title: title.clone(), svg, table: Table { id, title, headers, rows }, shown }
}

/// Whether the caller sees the whole province (and so the agency breakdown and the live load).
fn province_wide(signed_in: &SignedIn) -> bool {
    signed_in.session.role == "province_admin"
}

fn scope_label(figures: &Figures, signed_in: &SignedIn, filter: &Filter) -> String {
    let mut label = if province_wide(signed_in) {
        if filter.agency.is_empty() { "全省".to_owned() } else { figures.agency_name(&filter.agency) }
    } else {
        figures.agency_name(&signed_in.session.agency_code)
    };
    if !filter.region.is_empty() {
        label.push_str(" · ");
        label.push_str(&region_label(&filter.region));
    }
    label
}

/// 参保进度: GET /dashboard.
pub async fn page(State(state): State<AppState>, signed_in: SignedIn, Query(filter): Query<Filter>) -> Response {
    let figures = match figures(&state, &signed_in, &filter).await {
        Ok(figures) => figures,
        Err(problem) => return crate::operators::denied(&state, &signed_in, &problem),
    };
    let scope = scope_label(&figures, &signed_in, &filter);
    state.pages.render(
        "dashboard.html",
        context! {
            user => user(&signed_in), csrf => signed_in.session.csrf_token.clone(),
            ..page_context(&figures, &filter, province_wide(&signed_in), scope)
        },
    )
}

/// What the page shows, whoever it is for.
fn page_context(figures: &Figures, filter: &Filter, province: bool, scope: String) -> Value {
    context! {
        section => "dashboard", scope => scope,
        as_of => at(figures.progress.as_of.as_ref()).map(beijing_text).unwrap_or_default(),
        headline => Value::from(Serde(figures.headline())),
        sections => Value::from(Serde(figures.sections(filter, province))),
        filter => Value::from(Serde(filter)), query => filter_query(filter), province => province,
        cities => Value::from(Serde(CITIES.to_vec())),
        agencies => Value::from(Serde(&figures.agencies)),
    }
}

/// The province dashboard's HTML for `progress`, as the province admin sees it with no filter: what a benchmark
/// measures at the province's size, without a session or the services.
pub fn province_page_html(
    pages: &crate::pages::Pages,
    progress: EnrollmentProgress,
    agencies: Vec<(String, String)>,
) -> String {
    let figures = Figures { progress, imports: None, agencies, now: OffsetDateTime::now_utc().to_offset(beijing()) };
    pages.render_to_string("dashboard.html", page_context(&figures, &Filter::default(), true, "全省".into()))
}

fn filter_query(filter: &Filter) -> String {
    let encode = |value: &str| value.bytes().all(|byte| byte.is_ascii_alphanumeric()).then(|| value.to_owned());
    let mut parts = Vec::new();
    if let Some(region) = encode(&filter.region).filter(|region| !region.is_empty()) {
        parts.push(format!("region={region}"));
    }
    if let Some(agency) = encode(&filter.agency).filter(|agency| !agency.is_empty()) {
        parts.push(format!("agency={agency}"));
    }
    parts.join("&")
}

/// `getEnrollmentProgress`: GET /api/enrollment-progress, the dashboards' tables as JSON.
pub async fn api(State(state): State<AppState>, signed_in: SignedIn, Query(filter): Query<Filter>) -> Response {
    match figures(&state, &signed_in, &filter).await {
        Ok(figures) => Json(serde_json::json!({
            "scope": scope_label(&figures, &signed_in, &filter),
            "as_of": crate::keys::rfc3339(figures.progress.as_of),
            "tables": figures.tables(&filter, province_wide(&signed_in)),
        }))
        .into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `downloadEnrollmentProgress`: GET /dashboard/xlsx/{table}, one table as xlsx, or `all` for every table, a sheet
/// each.
pub async fn xlsx(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(table): Path<String>,
    Query(filter): Query<Filter>,
) -> Response {
    let figures = match figures(&state, &signed_in, &filter).await {
        Ok(figures) => figures,
        Err(problem) => return problem.into_response(),
    };
    let tables = figures.tables(&filter, province_wide(&signed_in));
    let chosen: Vec<&Table> = tables.iter().filter(|candidate| table == "all" || candidate.id == table).collect();
    if chosen.is_empty() {
        return ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "table_not_found",
            format!("没有名为 {table} 的统计表"),
        )
        .into_response();
    }
    let as_of = at(figures.progress.as_of.as_ref()).map(beijing_text).unwrap_or_default();
    let scope = scope_label(&figures, &signed_in, &filter);
    match workbook(&chosen, &scope, &as_of) {
        Ok(content) => {
            let file_name = format!("参保进度-{}.xlsx", if table == "all" { "全部" } else { chosen[0].title.as_str() });
            let file = proto::personnel::SpreadsheetFile { file_name, content };
            crate::imports::xlsx(file, &format!("enrollment-progress-{table}.xlsx"))
        }
        Err(error) => {
            tracing::error!(%error, "cannot write the dashboard workbook");
            ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "暂时无法生成表格，请稍后重试")
                .into_response()
        }
    }
}

/// The tables as a workbook: one sheet each, titled, with where and when the figures are from.
fn workbook(tables: &[&Table], scope: &str, as_of: &str) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    for (index, table) in tables.iter().enumerate() {
        let sheet = book.add_worksheet();
        // Sheet names are at most 31 characters and unique.
        sheet.set_name(format!("{}-{}", index + 1, table.id))?;
        sheet.write_with_format(0, 0, &table.title, &bold)?;
        sheet.write(1, 0, format!("范围：{scope}；统计时间：{as_of}（北京时间）"))?;
        for (column, header) in table.headers.iter().enumerate() {
            let column = u16::try_from(column).unwrap_or(u16::MAX);
            sheet.write_with_format(3, column, header, &bold)?;
            sheet.set_column_width(column, 16)?;
        }
        for (row_index, row) in table.rows.iter().enumerate() {
            let row_number = u32::try_from(row_index + 4).unwrap_or(u32::MAX);
            for (column, cell) in row.iter().enumerate() {
                let column = u16::try_from(column).unwrap_or(u16::MAX);
                match cell {
                    Cell::Text(value) => sheet.write(row_number, column, value)?,
                    Cell::Number(value) => sheet.write(row_number, column, *value)?,
                };
            }
        }
    }
    book.save_to_buffer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::units::UnitStateCount;

    fn figures(states: &[(&str, &str, &str, u32)]) -> Figures {
        Figures {
            progress: EnrollmentProgress {
                unit_states: states
                    .iter()
                    .map(|(region, agency, state, units)| UnitStateCount {
                        region_code: (*region).into(),
                        agency_code: (*agency).into(),
                        state: (*state).into(),
                        units: *units,
                    })
                    .collect(),
                ..Default::default()
            },
            imports: None,
            agencies: vec![("230500".into(), "双鸭山市社保局".into())],
            now: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn the_funnel_counts_each_unit_at_every_step_it_passed() {
        let figures = figures(&[
            ("230502", "230500", "not_applied", 5),
            ("230502", "230500", "key_made", 2),
            ("230502", "230500", "rejected", 1),
            ("230102", "230100", "approved", 2),
        ]);
        let funnel = figures.funnel();
        let reached: Vec<String> = funnel.shown.iter().map(|row| format!("{}={}", row[0], row[1])).collect();
        assert_eq!(
            reached,
            [
                "编制通单位（应参保）=10",
                "已申请密钥=5",
                "密钥已制作=5",
                "已启用密钥=3",
                "单位信息已填写=3",
                "已申报=3",
                "已参保=2"
            ]
        );
    }

    #[test]
    fn regions_are_ordered_by_completion_and_named_by_city() {
        let figures = figures(&[
            ("230502", "230500", "not_applied", 3),
            ("230521", "230500", "approved", 1),
            ("230102", "230100", "approved", 2),
        ]);
        let regions = figures.by_region(&Filter::default());
        let order: Vec<(String, String)> =
            regions.shown.iter().map(|row| (row[0].clone(), row.last().cloned().unwrap_or_default())).collect();
        assert_eq!(order, [("哈尔滨市".to_owned(), "100%".to_owned()), ("双鸭山市".to_owned(), "25%".to_owned())]);
        // Narrowed to one city (units answers only its units), the counties are compared.
        let city = super::tests::figures(&[
            ("230502", "230500", "not_applied", 3),
            ("230521", "230500", "approved", 1),
            ("230500", "230500", "approved", 1),
        ]);
        let counties = city.by_region(&Filter { region: "2305".into(), agency: String::new() });
        let names: Vec<&str> = counties.shown.iter().map(|row| row[0].as_str()).collect();
        assert_eq!(names, ["230521（双鸭山市）", "双鸭山市本级", "230502（双鸭山市）"]);
    }

    #[test]
    fn every_table_becomes_a_sheet_of_the_workbook() {
        let figures = figures(&[("230502", "230500", "approved", 1)]);
        let tables = figures.tables(&Filter::default(), true);
        let chosen: Vec<&Table> = tables.iter().collect();
        let bytes = workbook(&chosen, "全省", "2026-12-04 10:00").expect("a workbook");
        assert!(bytes.starts_with(b"PK"), "an xlsx is a zip file");
        let ids: Vec<&str> = tables.iter().map(|table| table.id).collect();
        assert_eq!(
            ids,
            [
                "funnel",
                "regions",
                "agencies",
                "people_by_day",
                "people_cumulative",
                "people_by_hour",
                "queue",
                "rejections",
                "load",
                "imports"
            ]
        );
    }
}
