//! 校验: every rule of a person (domain page, section 3) as one pure function over the typed input, the code lists,
//! today and the reference wage. It collects every error and every warning at once, each at its field, and the
//! normalized values a save stores. The population registry's answer is added by the caller.

use std::collections::HashMap;

use time::{Date, Month};
use validators::IdNumber;

use crate::codes::CodeLists;

/// The day of the 2014 reform: retirees before it and on or after it are registered apart.
pub const REFORM_DATE: Date = match Date::from_calendar_date(2014, Month::October, 1) {
    Ok(date) => date,
    Err(_) => panic!("the reform date is a real date"),
};

/// The kinds of people, as the API names them.
pub const KINDS: [(&str, &str); 3] = [
    ("staff", "工作人员"),
    ("retiree_pre_reform", "2014年10月1日前退休人员"),
    ("retiree_post_reform", "2014年10月1日后退休人员"),
];

pub fn kind_label(kind: &str) -> &'static str {
    KINDS.iter().find(|(code, _)| *code == kind).map_or("", |(_, label)| label)
}

/// One error or warning at its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub field: String,
    pub code: String,
    pub message: String,
}

/// The input, as strings: exactly what the API and the pages take.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub kind: String,
    pub name: String,
    pub id_type: String,
    pub id_number: String,
    pub sex: String,
    pub birth_date: String,
    pub funding_form: String,
    pub ethnicity: String,
    pub work_start: String,
    pub joined_unit: String,
    pub personnel_status: String,
    pub establishment: String,
    pub post_rank: String,
    pub wage_base: String,
    pub phone: String,
    pub address: String,
    pub retirement_date: String,
    pub retirement_category: String,
    pub monthly_pension: String,
    pub pay_start_month: String,
    pub pay_bank: String,
    pub pay_account: String,
    pub deemed_periods: Vec<DeemedInput>,
}

/// One row of 视同缴费年限 as typed: months as YYYY-MM, the count as a whole number or empty.
#[derive(Debug, Clone, Default)]
pub struct DeemedInput {
    pub unit: String,
    pub from: String,
    pub to: String,
    pub months: String,
    pub reason: String,
}

/// One checked row of 视同缴费年限: `from` and `to` are the first days of their months.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deemed {
    pub unit: String,
    pub from: Date,
    pub to: Date,
    pub months: u32,
    pub reason: Option<String>,
}

/// At most this many rows of 视同缴费年限 a person.
pub const MAX_DEEMED_PERIODS: usize = 20;

/// A person whose input passed every error rule, ready to store (and, for a change waiting for approval, kept as
/// JSON until then).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Values {
    pub kind: String,
    pub name: String,
    pub id_type: String,
    /// Upper-case, half-width; for type 01 the 18-character number.
    pub id_number: String,
    pub id_number_masked: String,
    pub sex: String,
    pub birth_date: Date,
    pub funding_form: String,
    pub ethnicity: String,
    pub work_start: Option<Date>,
    pub joined_unit: Option<Date>,
    pub personnel_status: String,
    pub establishment: String,
    pub post_rank: Option<String>,
    pub wage_base: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub retirement_date: Option<Date>,
    pub retirement_category: Option<String>,
    pub monthly_pension: Option<String>,
    pub pay_start_month: Option<Date>,
    pub pay_bank: Option<String>,
    pub pay_account: Option<String>,
    pub deemed_periods: Vec<Deemed>,
}

/// The outcome of the rules.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub values: Option<Values>,
    /// The normalized ID number, sex and birth date, as far as they could be made out.
    pub normalized: (String, String, String, String),
}

struct Findings {
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
}

impl Findings {
    fn error(&mut self, field: &str, code: &str, message: impl Into<String>) {
        self.errors.push(Finding { field: field.into(), code: code.into(), message: message.into() });
    }

    fn warning(&mut self, field: &str, code: &str, message: impl Into<String>) {
        self.warnings.push(Finding { field: field.into(), code: code.into(), message: message.into() });
    }
}

/// Whole years from `from` to `to`.
pub fn years_between(from: Date, to: Date) -> i32 {
    let mut years = to.year() - from.year();
    if (to.month() as u8, to.day()) < (from.month() as u8, from.day()) {
        years -= 1;
    }
    years
}

fn trimmed(value: &str) -> Option<String> {
    let value = validators::text::to_half_width(value).trim().to_owned();
    (!value.is_empty()).then_some(value)
}

/// A person's name: Chinese or Latin letters, the middle dot of minority and foreign names, spaces between Latin
/// words; at most 60 characters.
fn parse_name(raw: &str) -> Result<String, (&'static str, &'static str)> {
    let name: String = raw.trim().chars().map(|c| if matches!(c, '•' | '・' | '．' | '.') { '·' } else { c }).collect();
    if name.is_empty() {
        return Err(("required", "请填写姓名"));
    }
    if name.chars().count() > 60 {
        return Err(("too_long", "姓名不能超过60个字"));
    }
    if !name.chars().all(|c| c.is_alphabetic() || c == '·' || c == ' ') {
        return Err(("invalid_name", "姓名只能包含汉字、字母和间隔号“·”"));
    }
    Ok(name)
}

/// Every rule of one person.
pub fn check(input: &Input, codes: &CodeLists, today: Date, reference_wage: Option<&str>) -> Checked {
    let mut found = Findings { errors: Vec::new(), warnings: Vec::new() };
    let kind = input.kind.trim();
    if kind_label(kind).is_empty() {
        found.error("kind", "unknown_kind", "人员类别应为 staff、retiree_pre_reform 或 retiree_post_reform");
    }
    let retiree = kind.starts_with("retiree");
    let name = match parse_name(&input.name) {
        Ok(name) => Some(name),
        Err((code, message)) => {
            found.error("name", code, message);
            None
        }
    };
    let mut coded = |list: &str, field: &str, raw: &str, label: &str, default: Option<&str>| {
        let raw = raw.trim();
        let raw = if raw.is_empty() { default.unwrap_or("") } else { raw };
        if raw.is_empty() {
            found.error(field, "required", format!("请选择{label}"));
            return None;
        }
        let code = codes.resolve(list, raw);
        if code.is_none() {
            found.error(field, "unknown_code", format!("{label}“{raw}”不在代码表中，请从列表中选择"));
        }
        code
    };
    let id_type = coded("id_type", "id_type", &input.id_type, "证件类型", Some("01"));
    let funding_form = coded("funding_form", "funding_form", &input.funding_form, "经费补助形式", None);
    let ethnicity = coded("ethnicity", "ethnicity", &input.ethnicity, "民族", Some("01"));
    let personnel_status = coded("personnel_status", "personnel_status", &input.personnel_status, "人员身份", None);
    let establishment = coded("establishment", "establishment", &input.establishment, "编制类型", None);
    let retirement_category = if retiree {
        coded("retirement_category", "retirement_category", &input.retirement_category, "离退休类别", None)
    } else {
        None
    };
    if establishment.as_deref().is_some_and(|code| codes.label("establishment", code) != Some("编制内")) {
        found.error(
            "establishment",
            "not_in_establishment",
            "只有编制内人员参加机关事业单位养老保险，编制外人员请参加企业职工养老保险",
        );
    }

    // The ID number, and with type 01 the sex and birth date it carries.
    let mut id = None;
    let mut sex = None;
    let mut birth_date = None;
    match (id_type.as_deref(), trimmed(&input.id_number)) {
        (_, None) => found.error("id_number", "required", "请填写证件号码"),
        (Some("01"), Some(raw)) => match IdNumber::parse(&raw, today) {
            Ok(parsed) => {
                sex = Some(parsed.sex().code().to_owned());
                birth_date = Some(parsed.birth_date());
                id = Some((parsed.as_str().to_owned(), parsed.masked()));
            }
            Err(error) => found.error("id_number", error.code(), error.to_string()),
        },
        (_, Some(raw)) => {
            let raw = raw.to_ascii_uppercase();
            if raw.chars().count() > 30 {
                found.error("id_number", "too_long", "证件号码不能超过30个字符");
            } else {
                let masked = mask_other(&raw);
                id = Some((raw, masked));
            }
            sex = match input.sex.trim() {
                "1" | "男" => Some("1".to_owned()),
                "2" | "女" => Some("2".to_owned()),
                "" => {
                    found.error("sex", "required", "证件类型不是居民身份证时，请选择性别");
                    None
                }
                _ => {
                    found.error("sex", "unknown_code", "性别应为男或女");
                    None
                }
            };
            birth_date = match validators::fields::parse_date(&input.birth_date) {
                Some(date) if date <= today => Some(date),
                Some(_) => {
                    found.error("birth_date", "in_future", "出生日期不能晚于今天");
                    None
                }
                None => {
                    found.error("birth_date", "invalid_date", "证件类型不是居民身份证时，请按YYYY-MM-DD填写出生日期");
                    None
                }
            };
        }
    }

    let mut date = |field: &str, raw: &str, label: &str, required: bool| -> Option<Date> {
        match trimmed(raw) {
            None if required => {
                found.error(field, "required", format!("请填写{label}"));
                None
            }
            None => None,
            Some(raw) => match validators::fields::parse_date(&raw) {
                Some(date) if date > today => {
                    found.error(field, "in_future", format!("{label}不能晚于今天"));
                    None
                }
                Some(date) => Some(date),
                None => {
                    found.error(field, "invalid_date", format!("{label}应为有效日期，格式YYYY-MM-DD"));
                    None
                }
            },
        }
    };
    let work_start = date("work_start", &input.work_start, "参加工作时间", true);
    let joined_unit = date("joined_unit", &input.joined_unit, "进入本单位时间", !retiree);
    let retirement_date =
        if retiree { date("retirement_date", &input.retirement_date, "离退休日期", true) } else { None };

    if let (Some(birth), Some(start)) = (birth_date, work_start) {
        if start <= birth {
            found.error("work_start", "work_start_before_birth", "参加工作时间应晚于出生日期");
        } else if years_between(birth, start) < 16 {
            found.warning("work_start", "work_start_under_16", "参加工作时未满16周岁，请核实");
        }
    }
    if let (Some(start), Some(joined)) = (work_start, joined_unit)
        && joined < start
    {
        found.error("joined_unit", "joined_before_work_start", "进入本单位时间不能早于参加工作时间");
    }

    let wage_base = match trimmed(&input.wage_base) {
        None => None,
        Some(raw) => match validators::fields::parse_money(&raw) {
            None => {
                found.error("wage_base", "invalid_amount", "缴费工资基数应为不小于0的金额，最多两位小数");
                None
            }
            Some(amount) => {
                if let Some(reference) = reference_wage.and_then(|reference| reference.parse::<f64>().ok()) {
                    let value: f64 = amount.parse().unwrap_or(0.0);
                    if value < reference * 0.6 || value > reference * 3.0 {
                        found.warning(
                            "wage_base",
                            "wage_base_out_of_range",
                            format!("缴费工资基数不在社平工资（{reference:.2}元）的60%至300%之间，请核实"),
                        );
                    }
                }
                Some(amount)
            }
        },
    };
    let phone = match trimmed(&input.phone) {
        None => None,
        Some(raw) => {
            let phone = validators::text::parse_phone(&raw);
            if phone.is_none() {
                found.error("phone", "invalid_phone", "联系电话应为11位手机号码或带区号的固定电话");
            }
            phone
        }
    };

    // Retirees: the retirement date on the right side of the reform, the pension, the payment month and account.
    let mut monthly_pension = None;
    let mut pay_start_month = None;
    let mut pay_bank = None;
    let mut pay_account = None;
    if retiree {
        if let Some(retired) = retirement_date {
            if kind == "retiree_pre_reform" && retired >= REFORM_DATE {
                found.error(
                    "retirement_date",
                    "retired_after_reform",
                    "本模块登记2014年10月1日前退休的人员；此日期及以后退休的请在“2014年10月1日后退休人员”中登记",
                );
            }
            if kind == "retiree_post_reform" && retired < REFORM_DATE {
                found.error(
                    "retirement_date",
                    "retired_before_reform",
                    "本模块登记2014年10月1日及以后退休的人员；此前退休的请在“2014年10月1日前退休人员”中登记",
                );
            }
            if work_start.is_some_and(|start| retired <= start) {
                found.error("retirement_date", "retired_before_work_start", "离退休日期应晚于参加工作时间");
            }
            if let (Some(birth), Some(sex), Some(category)) =
                (birth_date, sex.as_deref(), retirement_category.as_deref())
            {
                let special = codes.label("retirement_category", category) == Some("特殊工种提前退休");
                let worker = personnel_status.as_deref().and_then(|code| codes.label("personnel_status", code))
                    == Some("工勤技能人员");
                let normal_age = match (sex, special, worker) {
                    ("1", false, _) => 60,
                    ("1", true, _) => 55,
                    (_, true, _) => 45,
                    (_, false, true) => 50,
                    _ => 55,
                };
                if years_between(birth, retired) < normal_age {
                    found.warning(
                        "retirement_date",
                        "retired_below_normal_age",
                        format!("退休时未满{normal_age}周岁（法定退休年龄），请核实退休审批材料"),
                    );
                }
            }
        }
        monthly_pension = match trimmed(&input.monthly_pension) {
            None => {
                found.error("monthly_pension", "required", "请填写基本退休费");
                None
            }
            Some(raw) => {
                let amount = validators::fields::parse_money(&raw);
                if amount.is_none() {
                    found.error("monthly_pension", "invalid_amount", "基本退休费应为不小于0的金额，最多两位小数");
                }
                amount
            }
        };
        pay_start_month = match trimmed(&input.pay_start_month) {
            None => {
                found.error("pay_start_month", "required", "请填写发放起始年月");
                None
            }
            Some(raw) => match validators::fields::parse_month(&raw) {
                None => {
                    found.error("pay_start_month", "invalid_month", "发放起始年月应为YYYY-MM");
                    None
                }
                Some(month) => {
                    let retired_month = retirement_date.and_then(|date| date.replace_day(1).ok());
                    if retired_month.is_some_and(|retired| month < retired) {
                        found.error("pay_start_month", "pay_before_retirement", "发放起始年月不能早于离退休年月");
                    }
                    Some(month)
                }
            },
        };
        pay_bank = trimmed(&input.pay_bank);
        if pay_bank.is_none() {
            found.error("pay_bank", "required", "请填写发放银行");
        }
        pay_account = match trimmed(&input.pay_account) {
            None => {
                found.error("pay_account", "required", "请填写发放账号");
                None
            }
            Some(raw) => {
                let account = validators::fields::parse_bank_account(&raw);
                if account.is_none() {
                    found.error("pay_account", "invalid_bank_account", "银行账号只能是8至30位数字");
                }
                account
            }
        };
    }

    let deemed_periods = check_deemed_periods(&input.deemed_periods, kind, work_start, &mut found);

    let normalized = (
        id.as_ref().map(|(number, _)| number.clone()).unwrap_or_default(),
        sex.clone().unwrap_or_default(),
        birth_date.map(|date| date.to_string()).unwrap_or_default(),
        name.clone().unwrap_or_default(),
    );
    let values = match (found.errors.is_empty(), name, id_type, id, sex, birth_date) {
        (true, Some(name), Some(id_type), Some((id_number, id_number_masked)), Some(sex), Some(birth_date)) => {
            Some(Values {
                kind: kind.to_owned(),
                name,
                id_type,
                id_number,
                id_number_masked,
                sex,
                birth_date,
                funding_form: funding_form.unwrap_or_default(),
                ethnicity: ethnicity.unwrap_or_default(),
                work_start,
                joined_unit,
                personnel_status: personnel_status.unwrap_or_default(),
                establishment: establishment.unwrap_or_default(),
                post_rank: trimmed(&input.post_rank),
                wage_base,
                phone,
                address: trimmed(&input.address),
                retirement_date,
                retirement_category,
                monthly_pension,
                pay_start_month,
                pay_bank,
                pay_account,
                deemed_periods,
            })
        }
        _ => None,
    };
    Checked { errors: found.errors, warnings: found.warnings, values, normalized }
}

/// Whole months from the month of `from` to the month of `to`, both counted.
fn months_spanned(from: Date, to: Date) -> i32 {
    (to.year() - from.year()) * 12 + i32::from(u8::from(to.month())) - i32::from(u8::from(from.month())) + 1
}

/// 视同缴费年限: each row names its unit and a span of months that ends before the reform, counts at most the months
/// it spans, and overlaps no other row. Those who retired before the reform have none: their pension is paid under
/// the old rules.
fn check_deemed_periods(
    rows: &[DeemedInput],
    kind: &str,
    work_start: Option<Date>,
    found: &mut Findings,
) -> Vec<Deemed> {
    let rows: Vec<(usize, &DeemedInput)> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| {
            [&row.unit, &row.from, &row.to, &row.months, &row.reason].iter().any(|value| trimmed(value).is_some())
        })
        .collect();
    if rows.is_empty() {
        return Vec::new();
    }
    if kind == "retiree_pre_reform" {
        found.error("deemed_periods", "deemed_not_applicable", "2014年10月1日前退休的人员不登记视同缴费年限");
        return Vec::new();
    }
    if rows.len() > MAX_DEEMED_PERIODS {
        found.error("deemed_periods", "too_many", format!("视同缴费年限最多登记{MAX_DEEMED_PERIODS}段"));
        return Vec::new();
    }
    let mut periods = Vec::new();
    // The row number of each accepted period, for the message that names an overlap.
    let mut period_rows = Vec::new();
    for (index, row) in rows {
        let field = |name: &str| format!("deemed_periods[{index}].{name}");
        let number = index + 1;
        let errors_before = found.errors.len();
        let unit = trimmed(&row.unit);
        match &unit {
            None => found.error(&field("unit"), "required", format!("请填写第{number}段视同缴费的工作单位")),
            Some(unit) if unit.chars().count() > 100 => {
                found.error(&field("unit"), "too_long", format!("第{number}段的工作单位不能超过100个字"));
            }
            Some(_) => {}
        }
        let mut month = |name: &str, raw: &str, label: &str| match trimmed(raw) {
            None => {
                found.error(&field(name), "required", format!("请填写第{number}段的{label}"));
                None
            }
            Some(raw) => {
                let month = validators::fields::parse_month(&raw);
                if month.is_none() {
                    found.error(&field(name), "invalid_month", format!("第{number}段的{label}应为YYYY-MM"));
                }
                month
            }
        };
        let from = month("from", &row.from, "起始年月");
        let to = month("to", &row.to, "终止年月");
        let reform_month = REFORM_DATE.replace_day(1).unwrap_or(REFORM_DATE);
        let mut span = None;
        if let (Some(from), Some(to)) = (from, to) {
            if to < from {
                found.error(&field("to"), "ends_before_start", format!("第{number}段的终止年月不能早于起始年月"));
            } else if to >= reform_month {
                found.error(
                    &field("to"),
                    "deemed_after_reform",
                    format!("第{number}段：视同缴费年限只计2014年10月以前的工作时间，终止年月最晚为2014-09"),
                );
            } else {
                span = Some(months_spanned(from, to));
            }
            if work_start.is_some_and(|start| from < start.replace_day(1).unwrap_or(start)) {
                found.warning(
                    &field("from"),
                    "deemed_before_work_start",
                    format!("第{number}段的起始年月早于参加工作时间，请核实"),
                );
            }
        }
        let months = match (trimmed(&row.months), span) {
            (None, span) => span,
            (Some(raw), span) => match raw.parse::<i32>() {
                Ok(months) if months >= 1 => {
                    if span.is_some_and(|span| months > span) {
                        found.error(
                            &field("months"),
                            "months_exceed_span",
                            format!("第{number}段的月数不能超过起止年月之间的{}个月", span.unwrap_or_default()),
                        );
                    }
                    Some(months)
                }
                _ => {
                    found.error(&field("months"), "invalid_months", format!("第{number}段的月数应为正整数"));
                    None
                }
            },
        };
        let reason = trimmed(&row.reason);
        if reason.as_ref().is_some_and(|reason| reason.chars().count() > 100) {
            found.error(&field("reason"), "too_long", format!("第{number}段的认定依据不能超过100个字"));
        }
        if found.errors.len() > errors_before {
            continue;
        }
        if let (Some(unit), Some(from), Some(to), Some(months)) = (unit, from, to, months) {
            if let Some(other) = periods.iter().position(|period: &Deemed| from <= period.to && period.from <= to) {
                found.error(
                    &field("from"),
                    "periods_overlap",
                    format!("第{number}段与第{}段的时间重叠，同一时间只能计算一次", period_rows[other]),
                );
                continue;
            }
            period_rows.push(number);
            periods.push(Deemed { unit, from, to, months: u32::try_from(months).unwrap_or_default(), reason });
        }
    }
    periods
}

/// A number of another ID type, masked: its first and last few characters.
fn mask_other(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep = if chars.len() > 8 { 3 } else { 1 };
    let head: String = chars.iter().take(keep).collect();
    let tail: String = chars.iter().skip(chars.len().saturating_sub(keep)).collect();
    format!("{head}{}{tail}", "*".repeat(chars.len().saturating_sub(2 * keep).max(1)))
}

/// The masked form of a bank account: its last four digits.
pub fn mask_account(account: &str) -> String {
    let tail: String = account.chars().skip(account.chars().count().saturating_sub(4)).collect();
    format!("****{tail}")
}

/// Warnings keyed by code, to match against the accepted ones.
pub fn warning_codes(warnings: &[Finding]) -> HashMap<&str, &Finding> {
    warnings.iter().map(|finding| (finding.code.as_str(), finding)).collect()
}
