//! Normalisation of typed text: full-width forms (what Chinese input methods produce) to half-width, spaces
//! removed, so that "黑龙江省　双鸭山市（财政局）" and "黑龙江省双鸭山市(财政局)" compare equal.

/// Folds full-width ASCII forms (U+FF01–U+FF5E) and the ideographic space to their half-width counterparts.
pub fn to_half_width(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{3000}' => ' ',
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// A unit name as registry lookups compare it: half-width, no white space at all.
pub fn normalize_name(name: &str) -> String {
    to_half_width(name).chars().filter(|c| !c.is_whitespace()).collect()
}

/// A phone number: 11-digit mobile (1[3-9]…) or a landline of 7–8 digits with an optional 3–4 digit area code and
/// extension, separators `-` or space allowed. Returns the digits and dashes as given, trimmed.
pub fn parse_phone(raw: &str) -> Option<String> {
    let phone = to_half_width(raw).trim().to_owned();
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let allowed = phone.chars().all(|c| c.is_ascii_digit() || c == '-' || c == ' ');
    let mobile = digits.len() == 11 && digits.starts_with('1') && !phone.contains(['-', ' ']);
    let landline = (7..=16).contains(&digits.len()) && !digits.starts_with('1');
    (allowed && (mobile || landline)).then_some(phone)
}

/// A person's name as public pages show it: the first character, the rest as `*` (`张伟` → `张*`).
pub fn mask_name(name: &str) -> String {
    let mut chars = name.trim().chars();
    match chars.next() {
        Some(first) => std::iter::once(first).chain(chars.map(|_| '*')).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_forms_and_spaces_fold_away() {
        assert_eq!(normalize_name("黑龙江省　双鸭山市（财政局） "), "黑龙江省双鸭山市(财政局)");
        assert_eq!(normalize_name("ＡＢＣ１２３"), "ABC123");
    }

    #[test]
    fn names_keep_only_their_first_character() {
        assert_eq!(mask_name("张伟"), "张*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_name(""), "");
    }

    #[test]
    fn phones() {
        assert!(parse_phone("13800138000").is_some());
        assert!(parse_phone("0469-4221234").is_some());
        assert!(parse_phone("１３８００１３８０００").is_some());
        assert!(parse_phone("1380013800").is_none());
        assert!(parse_phone("abc").is_none());
        assert!(parse_phone("").is_none());
    }
}
