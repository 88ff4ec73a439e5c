//! The registration forms as PDF, with typst: the template (`templates/forms.typ`) lays them out from a JSON of the
//! declared snapshots; a CJK font from the configured folder is embedded and subset. Pure: snapshots in, PDF out.

use std::collections::BTreeMap;
use std::path::Path;

use proto::personnel::{Person, RosterChangeItem};
use proto::units::UnitRecord;
use typst::foundations::{Dict, IntoValue};
use typst_as_lib::{TypstEngine, TypstTemplateMainFile};

static TEMPLATE: &str = include_str!("../templates/forms.typ");

/// What the forms print: the declaration, the unit record and the people as declared, and the code lists to name
/// the codes with.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub declaration_id: String,
    /// YYYY-MM-DD, Beijing time.
    pub declared_on: String,
    pub unit: UnitRecord,
    pub agency_name: String,
    pub persons: Vec<Person>,
    /// A change declaration's changes (增员, 减员, 变更), in the order they were made.
    pub change_items: Vec<RosterChangeItem>,
    /// list → code → label, of units' and personnel's code lists together.
    pub codes: BTreeMap<String, BTreeMap<String, String>>,
    /// What the QR code holds: the address of the verification page of this declaration and its digest.
    pub verify_url: String,
}

/// The kinds of form of a unit's first declaration, in the order of 一键打印.
pub const KINDS: [(&str, &str); 4] = [
    ("unit_form", "机关事业单位养老保险参保单位登记表"),
    ("staff_roster", "工作人员参保登记花名册"),
    ("retiree_pre_reform_roster", "2014年10月1日前退休人员参保登记花名册"),
    ("retiree_post_reform_roster", "2014年10月1日后退休人员参保登记花名册"),
];

/// The form of a change declaration.
pub const CHANGE_KINDS: [(&str, &str); 1] = [("change_form", "机关事业单位养老保险人员增减变动表")];

/// Every kind of form with its title.
fn title_of(kind: &str) -> Option<&'static str> {
    KINDS.iter().chain(CHANGE_KINDS.iter()).find(|(known, _)| *known == kind).map(|(_, title)| *title)
}

/// One rendered PDF.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub pdf: Vec<u8>,
    pub pages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no font file in {0}: set printing.font_dir (Debian: fonts-noto-cjk)")]
    NoFont(String),
    #[error("the forms do not lay out: {0}")]
    Layout(String),
    #[error("the PDF cannot be written: {0}")]
    Pdf(String),
    #[error("the QR code cannot be made: {0}")]
    Qr(String),
}

/// The template with its fonts, loaded once.
pub struct Renderer {
    engine: TypstEngine<TypstTemplateMainFile>,
    font_family: String,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("font_family", &self.font_family).finish_non_exhaustive()
    }
}

impl Renderer {
    /// Loads the named font files (regular and bold: typst does not fake bold) from `font_dir`.
    pub fn new(font_dir: &Path, font_files: &[String], font_family: &str) -> Result<Self, RenderError> {
        let fonts: Vec<Vec<u8>> =
            font_files.iter().filter_map(|file| std::fs::read(font_dir.join(file)).ok()).collect();
        if fonts.is_empty() {
            return Err(RenderError::NoFont(font_dir.display().to_string()));
        }
        let engine = TypstEngine::builder().main_file(TEMPLATE).fonts(fonts).build();
        Ok(Self { engine, font_family: font_family.to_owned() })
    }

    /// The forms of `kinds` in one PDF.
    pub fn render(&self, snapshot: &Snapshot, kinds: &[&str]) -> Result<Rendered, RenderError> {
        let forms: Vec<serde_json::Value> = KINDS
            .iter()
            .chain(CHANGE_KINDS.iter())
            .filter(|(kind, _)| kinds.contains(kind))
            .map(|(kind, title)| form(snapshot, kind, title))
            .collect();
        let title = if kinds.len() == 1 {
            title_of(kinds[0]).unwrap_or_default().to_owned()
        } else {
            "机关事业单位养老保险参保登记表（一键打印）".to_owned()
        };
        let data = serde_json::json!({
            "title": title, "font": self.font_family, "unit_name": snapshot.unit.unit_name,
            "credit_code": snapshot.unit.credit_code, "declaration_id": snapshot.declaration_id,
            "declared_on": snapshot.declared_on, "forms": forms,
        });
        let qr =
            qrcode::QrCode::new(snapshot.verify_url.as_bytes()).map_err(|error| RenderError::Qr(error.to_string()))?;
        let svg = qr.render::<qrcode::render::svg::Color>().min_dimensions(160, 160).quiet_zone(false).build();
        let mut inputs = Dict::new();
        inputs.insert("data".into(), data.to_string().into_value());
        inputs.insert("qr".into(), svg.into_value());
        let document: typst_layout::PagedDocument =
            self.engine.compile_with_input(inputs).output.map_err(|error| RenderError::Layout(format!("{error:?}")))?;
        let pages = document.pages().len();
        let pdf = typst_pdf::pdf(&document, &typst_pdf::PdfOptions::default())
            .map_err(|errors| RenderError::Pdf(format!("{errors:?}")))?;
        Ok(Rendered { pdf, pages })
    }
}

fn label(snapshot: &Snapshot, list: &str, code: &str) -> String {
    snapshot.codes.get(list).and_then(|codes| codes.get(code)).cloned().unwrap_or_else(|| code.to_owned())
}

fn form(snapshot: &Snapshot, kind: &str, title: &str) -> serde_json::Value {
    if kind == "unit_form" {
        return serde_json::json!({ "kind": kind, "title": title, "fields": unit_fields(snapshot) });
    }
    if kind == "change_form" {
        return change_form(snapshot, title);
    }
    let person_kind = match kind {
        "staff_roster" => "staff",
        "retiree_pre_reform_roster" => "retiree_pre_reform",
        _ => "retiree_post_reform",
    };
    let people: Vec<&Person> = snapshot.persons.iter().filter(|person| person.kind == person_kind).collect();
    let (columns, widths): (Vec<&str>, Vec<f64>) = if person_kind == "staff" {
        [
            ("序号", 0.6),
            ("姓名", 1.1),
            ("证件号码", 2.3),
            ("性别", 0.6),
            ("出生日期", 1.2),
            ("经费补助形式", 1.4),
            ("参加工作时间", 1.4),
            ("进入本单位时间", 1.5),
            ("人员身份", 1.3),
        ]
        .into_iter()
        .unzip()
    } else {
        [
            ("序号", 0.6),
            ("姓名", 1.1),
            ("证件号码", 2.3),
            ("性别", 0.6),
            ("出生日期", 1.2),
            ("离退休日期", 1.2),
            ("离退休类别", 1.5),
            ("基本退休费（元/月）", 1.3),
        ]
        .into_iter()
        .unzip()
    };
    let rows: Vec<Vec<String>> = people
        .iter()
        .enumerate()
        .map(|(n, person)| {
            let mut row = vec![
                (n + 1).to_string(),
                person.name.clone(),
                person.id_number.clone(),
                person.sex_label.clone(),
                person.birth_date.clone(),
            ];
            if person_kind == "staff" {
                row.extend([
                    label(snapshot, "funding_form", &person.funding_form),
                    person.work_start.clone(),
                    person.joined_unit.clone(),
                    label(snapshot, "personnel_status", &person.personnel_status),
                ]);
            } else {
                row.extend([
                    person.retirement_date.clone(),
                    label(snapshot, "retirement_category", &person.retirement_category),
                    person.monthly_pension.clone(),
                ]);
            }
            row
        })
        .collect();
    serde_json::json!({ "kind": kind, "title": title, "columns": columns, "widths": widths, "rows": rows })
}

/// 增减变动表: one row per change, with what it changes; the unit, the operator and the agency sign below.
fn change_form(snapshot: &Snapshot, title: &str) -> serde_json::Value {
    let (columns, widths): (Vec<&str>, Vec<f64>) = [
        ("序号", 0.6),
        ("变动类型", 0.9),
        ("姓名", 1.1),
        ("证件号码", 2.3),
        ("人员类别", 1.8),
        ("变动日期", 1.2),
        ("变动内容", 3.4),
    ]
    .into_iter()
    .unzip();
    let rows: Vec<Vec<String>> = snapshot
        .change_items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let person = item.person.clone().unwrap_or_default();
            let kinds = if item.new_kind == item.kind {
                item.kind_label.clone()
            } else {
                format!("{} → {}", item.kind_label, item.new_kind_label)
            };
            let what = match item.action.as_str() {
                "add" => format!(
                    "新参保：{}，{}生，{}参加工作，{}",
                    person.sex_label,
                    person.birth_date,
                    person.work_start,
                    label(snapshot, "funding_form", &person.funding_form)
                ),
                "remove" if item.leave_reason == "retirement" => format!(
                    "退休：{}，基本退休费{}元/月，{}起发放",
                    label(snapshot, "retirement_category", &person.retirement_category),
                    person.monthly_pension,
                    person.pay_start_month
                ),
                "remove" => item.leave_reason_label.clone(),
                _ => item
                    .fields
                    .iter()
                    .map(|diff| format!("{}：{} → {}", diff.label, diff.before, diff.after))
                    .collect::<Vec<_>>()
                    .join("；"),
            };
            let date = if item.action == "add" { person.joined_unit.clone() } else { item.leave_date.clone() };
            vec![(n + 1).to_string(), item.action_label.clone(), item.name.clone(), person.id_number, kinds, date, what]
        })
        .collect();
    serde_json::json!({ "kind": "change_form", "title": title, "columns": columns, "widths": widths, "rows": rows })
}

/// The unit form's rows: label, value, and how many columns the value spans (1 or 3).
fn unit_fields(snapshot: &Snapshot) -> Vec<(String, String, u8)> {
    let unit = &snapshot.unit;
    let posts = |value: Option<u32>| value.map(|n| n.to_string()).unwrap_or_default();
    let agency = if snapshot.agency_name.is_empty() { unit.agency_code.clone() } else { snapshot.agency_name.clone() };
    let org_code = match unit.org_code.len() {
        9 => format!("{}-{}", &unit.org_code[..8], &unit.org_code[8..]),
        _ => unit.org_code.clone(),
    };
    vec![
        ("单位名称".into(), unit.unit_name.clone(), 3),
        ("统一社会信用代码".into(), unit.credit_code.clone(), 1),
        ("组织机构代码".into(), org_code, 1),
        ("机构编码".into(), unit.institution_code.clone(), 1),
        ("单位类型".into(), label(snapshot, "unit_type", &unit.unit_type_code), 1),
        ("所属经办机构".into(), agency, 1),
        ("所属行政区划".into(), unit.region_code.clone(), 1),
        ("隶属关系".into(), label(snapshot, "subordination", &unit.subordination), 1),
        ("经费来源".into(), label(snapshot, "funding_source", &unit.funding_source), 1),
        ("法定代表人（负责人）".into(), unit.legal_representative.clone(), 1),
        ("法定代表人身份证号码".into(), unit.legal_representative_id_number_masked.clone(), 1),
        ("单位地址".into(), unit.address.clone(), 3),
        ("邮政编码".into(), unit.post_code.clone(), 1),
        ("电子邮箱".into(), unit.email.clone(), 1),
        ("联系人".into(), unit.contact_name.clone(), 1),
        ("联系电话".into(), unit.contact_phone.clone(), 1),
        ("社保专管员".into(), unit.clerk_name.clone(), 1),
        ("社保专管员电话".into(), unit.clerk_phone.clone(), 1),
        ("开户银行".into(), unit.bank_name.clone(), 3),
        ("户名".into(), unit.bank_account_name.clone(), 1),
        ("账号".into(), unit.bank_account.clone(), 1),
        ("行政编制数".into(), posts(unit.administrative_posts), 1),
        ("事业编制数".into(), posts(unit.institutional_posts), 1),
        ("工勤编制数".into(), posts(unit.logistics_posts), 1),
        ("申报日期".into(), snapshot.declared_on.clone(), 1),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn renderer() -> Renderer {
        let files = ["NotoSansCJK-Regular.ttc".to_owned(), "NotoSansCJK-Bold.ttc".to_owned()];
        Renderer::new(Path::new("/usr/share/fonts/opentype/noto"), &files, "Noto Sans CJK SC").expect("fonts")
    }

    pub(super) fn text_of(pdf: &[u8]) -> String {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), pdf).expect("write");
        let output = std::process::Command::new("pdftotext").arg(file.path()).arg("-").output().expect("pdftotext");
        String::from_utf8(output.stdout).expect("utf-8").chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// The numbers that follow `prefix` and precede 人, in order.
    fn counts(text: &str, prefix: &str) -> Vec<usize> {
        text.match_indices(prefix)
            .filter_map(|(at, _)| {
                let rest = &text[at + prefix.len()..];
                rest.split('人').next().and_then(|number| number.parse().ok())
            })
            .collect()
    }

    #[test]
    fn each_roster_page_totals_its_own_rows_however_tall_they_are() {
        // Long names wrap and make rows of two or three lines: pages hold fewer rows, and still add up.
        let persons: Vec<Person> = (0..60)
            .map(|n| Person {
                kind: "staff".into(),
                name: if n % 3 == 0 {
                    "阿卜杜热合曼·买买提艾力·吐尔逊".into()
                } else {
                    "李娜".into()
                },
                id_number: format!("23050219900215{n:04}"),
                ..Person::default()
            })
            .collect();
        let snapshot = Snapshot { persons, verify_url: "http://127.0.0.1/verify/x/y".into(), ..Snapshot::default() };
        let rendered = renderer().render(&snapshot, &["staff_roster"]).expect("renders");
        let text = text_of(&rendered.pdf);
        let per_page = counts(&text, "本页");
        assert_eq!(per_page.len(), rendered.pages, "a total on every page: {text}");
        assert_eq!(per_page.iter().sum::<usize>(), 60);
        let running = counts(&text, "累计");
        assert_eq!(running.last(), Some(&60));
        assert!(running.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(counts(&text, "合计").iter().all(|total| *total == 60));
    }
}

#[cfg(test)]
mod change_form_tests {
    use proto::personnel::{FieldDiff, RosterChangeItem};

    use super::*;

    #[test]
    fn the_change_form_lists_each_change_with_what_it_changes_and_the_signatures() {
        let person = |name: &str, id_number: &str| Person {
            name: name.into(),
            id_number: id_number.into(),
            sex_label: "女".into(),
            birth_date: "1991-05-06".into(),
            work_start: "2013-07-01".into(),
            joined_unit: "2026-11-01".into(),
            funding_form: "1".into(),
            ..Person::default()
        };
        let item = |action: &str, label: &str, name: &str, id_number: &str| RosterChangeItem {
            action: action.into(),
            action_label: label.into(),
            name: name.into(),
            kind: "staff".into(),
            kind_label: "在职人员".into(),
            new_kind: "staff".into(),
            new_kind_label: "在职人员".into(),
            person: Some(person(name, id_number)),
            ..RosterChangeItem::default()
        };
        let items = vec![
            item("add", "增员", "王芳", "230502199105062341"),
            RosterChangeItem {
                leave_date: "2026-11-30".into(),
                leave_reason: "transfer".into(),
                leave_reason_label: "调出".into(),
                ..item("remove", "减员", "张伟", "230502198001011238")
            },
            RosterChangeItem {
                fields: vec![FieldDiff {
                    field: "phone".into(),
                    label: "联系电话".into(),
                    before: String::new(),
                    after: "13904691111".into(),
                }],
                ..item("update", "变更", "李娜", "230502199002152344")
            },
        ];
        let mut codes = BTreeMap::new();
        codes.insert("funding_form".to_owned(), BTreeMap::from([("1".to_owned(), "全额拨款".to_owned())]));
        let snapshot = Snapshot {
            change_items: items,
            codes,
            verify_url: "http://127.0.0.1/verify/x/y".into(),
            ..Snapshot::default()
        };
        let rendered = tests::renderer().render(&snapshot, &["change_form"]).expect("renders");
        let text = tests::text_of(&rendered.pdf);
        for expected in [
            "机关事业单位养老保险人员增减变动表",
            "增员",
            "王芳",
            "230502199105062341",
            "新参保：女，1991-05-06生，2013-07-01参加工作，全额拨款",
            "减员",
            "调出",
            "2026-11-30",
            "联系电话：→13904691111",
            "单位（盖章）",
            "经办机构审核意见",
            "本页3人",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }
}
