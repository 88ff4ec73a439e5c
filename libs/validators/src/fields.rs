//! Plain field rules of the forms: post codes, bank accounts, region codes, e-mail addresses, money and dates. Each
//! returns the normalised value or `None`; the caller names the field and the message.

use time::Date;

/// A 6-digit post code (邮政编码).
pub fn parse_post_code(raw: &str) -> Option<String> {
    let text = crate::text::to_half_width(raw).trim().to_owned();
    (text.len() == 6 && text.bytes().all(|byte| byte.is_ascii_digit())).then_some(text)
}

/// A bank account number: digits only once spaces and hyphens are removed, 8 to 30 of them.
pub fn parse_bank_account(raw: &str) -> Option<String> {
    let text: String = crate::text::to_half_width(raw).chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    ((8..=30).contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_digit())).then_some(text)
}

/// A 6-digit GB/T 2260 region code whose province part is a real province.
pub fn parse_region_code(raw: &str) -> Option<String> {
    let text = crate::text::to_half_width(raw).trim().to_owned();
    let province: u32 = text.get(..2)?.parse().ok()?;
    (text.len() == 6
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && crate::id_number::PROVINCES.contains(&province))
    .then_some(text)
}

/// A plausible e-mail address: one `@`, a dot in the domain, no spaces.
pub fn parse_email(raw: &str) -> Option<String> {
    let text = crate::text::to_half_width(raw).trim().to_owned();
    let (local, domain) = text.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.contains(char::is_whitespace)
        && !domain.contains('@');
    ok.then_some(text)
}

/// An amount of yuan, not negative, at most two decimals, as its canonical string ("1234.50").
pub fn parse_money(raw: &str) -> Option<String> {
    let text = crate::text::to_half_width(raw).trim().replace(',', "");
    let (whole, fraction) = text.split_once('.').unwrap_or((text.as_str(), ""));
    let whole_ok = !whole.is_empty() && whole.len() <= 12 && whole.bytes().all(|byte| byte.is_ascii_digit());
    let fraction_ok = fraction.len() <= 2 && fraction.bytes().all(|byte| byte.is_ascii_digit());
    if !whole_ok || !fraction_ok || (text.contains('.') && fraction.is_empty()) {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    Some(format!("{}.{fraction:0<2}", if whole.is_empty() { "0" } else { whole }))
}

/// A date written YYYY-MM-DD (also YYYY/MM/DD or YYYYMMDD).
pub fn parse_date(raw: &str) -> Option<Date> {
    let digits: String = crate::text::to_half_width(raw).chars().filter(char::is_ascii_digit).collect();
    let separators_ok =
        crate::text::to_half_width(raw).trim().chars().all(|c| c.is_ascii_digit() || c == '-' || c == '/');
    if digits.len() != 8 || !separators_ok {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// A month written YYYY-MM, as its first day.
pub fn parse_month(raw: &str) -> Option<Date> {
    let digits: String = crate::text::to_half_width(raw).chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 6 {
        return parse_date(raw).map(|date| date.replace_day(1).unwrap_or(date));
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..].parse().ok()?;
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, 1).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn post_codes_accounts_and_regions() {
        assert_eq!(parse_post_code("155100").as_deref(), Some("155100"));
        assert_eq!(parse_post_code("15510"), None);
        assert_eq!(parse_bank_account("6222 0216 0201 2345 678").as_deref(), Some("6222021602012345678"));
        assert_eq!(parse_bank_account("6222-02A"), None);
        assert_eq!(parse_region_code("230502").as_deref(), Some("230502"));
        assert_eq!(parse_region_code("990502"), None);
        assert_eq!(parse_email("hr@sys.gov.cn").as_deref(), Some("hr@sys.gov.cn"));
        assert_eq!(parse_email("hr@localhost"), None);
    }

    #[test]
    fn money_and_dates() {
        assert_eq!(parse_money("4,250.5").as_deref(), Some("4250.50"));
        assert_eq!(parse_money("0").as_deref(), Some("0.00"));
        assert_eq!(parse_money("-1"), None);
        assert_eq!(parse_money("1.234"), None);
        assert_eq!(parse_date("2014-10-01"), Some(date!(2014 - 10 - 01)));
        assert_eq!(parse_date("2014/2/30"), None);
        assert_eq!(parse_date("2014-02-30"), None);
        assert_eq!(parse_month("2015-03"), Some(date!(2015 - 03 - 01)));
    }
}
