//! Organization codes (组织机构代码, GB 11714-1997): 8 body characters (0–9, A–Z) and a check character, shown
//! `XXXXXXXX-X`. A unified social credit code carries the organization code in its positions 9–17.

const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];

/// Why a string is not a valid organization code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OrgCodeError {
    #[error("组织机构代码应为9位（8位本体代码和1位校验码，可写作XXXXXXXX-X）")]
    Length,
    #[error("组织机构代码只能包含数字和大写字母，校验码可为X")]
    Characters,
    #[error("组织机构代码校验码不正确，请核对")]
    CheckCharacter,
}

impl OrgCodeError {
    pub fn code(self) -> &'static str {
        match self {
            OrgCodeError::Length => "org_code_length",
            OrgCodeError::Characters => "org_code_characters",
            OrgCodeError::CheckCharacter => "org_code_check_character",
        }
    }
}

fn value(byte: u8) -> Option<u32> {
    match byte {
        b'0'..=b'9' => Some(u32::from(byte - b'0')),
        b'A'..=b'Z' => Some(u32::from(byte - b'A') + 10),
        _ => None,
    }
}

/// The check character of an 8-character body.
pub fn org_check_char(body: &[u8]) -> Option<u8> {
    let sum: u32 =
        body.iter().zip(WEIGHTS).map(|(byte, weight)| value(*byte).map(|v| v * weight)).sum::<Option<u32>>()?;
    Some(match 11 - sum % 11 {
        10 => b'X',
        11 => b'0',
        digit => b'0' + u8::try_from(digit).unwrap_or(0),
    })
}

/// Parses an organization code as typed (with or without the hyphen, full-width or lower case) into `XXXXXXXX-X`.
pub fn parse_org_code(raw: &str) -> Result<String, OrgCodeError> {
    let text: String =
        crate::text::to_half_width(raw).trim().to_ascii_uppercase().chars().filter(|c| *c != '-').collect();
    let bytes = text.as_bytes();
    if bytes.len() != 9 {
        return Err(OrgCodeError::Length);
    }
    let (body, check) = bytes.split_at(8);
    if body.iter().any(|byte| value(*byte).is_none()) || !(check[0].is_ascii_digit() || check[0] == b'X') {
        return Err(OrgCodeError::Characters);
    }
    if org_check_char(body) != Some(check[0]) {
        return Err(OrgCodeError::CheckCharacter);
    }
    Ok(format!("{}-{}", &text[..8], &text[8..]))
}

/// The organization code inside a (valid) credit code, `XXXXXXXX-X`.
pub fn org_code_of_credit_code(credit_code: &str) -> Option<String> {
    credit_code.get(8..17).map(|code| format!("{}-{}", &code[..8], &code[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn published_valid_codes_parse() {
        assert_eq!(parse_org_code("78305975-3"), Ok("78305975-3".to_owned()));
        assert_eq!(parse_org_code("79013765-X"), Ok("79013765-X".to_owned()));
        assert_eq!(parse_org_code("L6005760X"), Ok("L6005760-X".to_owned()));
        assert_eq!(
            parse_org_code("７８３０５９７５－３"),
            Ok("78305975-3".to_owned()),
            "full-width as typed on a Chinese keyboard"
        );
    }

    #[test]
    fn one_character_corruptions_are_caught() {
        assert_eq!(parse_org_code("78305975-4"), Err(OrgCodeError::CheckCharacter));
        assert_eq!(parse_org_code("78305976-3"), Err(OrgCodeError::CheckCharacter));
        assert_eq!(parse_org_code("7830597-3"), Err(OrgCodeError::Length));
        assert_eq!(parse_org_code("7830597*-3"), Err(OrgCodeError::Characters));
    }

    #[test]
    fn a_credit_code_carries_the_organization_code() {
        assert_eq!(org_code_of_credit_code("91110000101623741K").as_deref(), Some("10162374-1"));
        assert!(parse_org_code("10162374-1").is_ok());
    }

    fn valid_code() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop::sample::select(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_vec()), 8).prop_map(
            |body| {
                let check = org_check_char(&body).expect("valid body");
                format!("{}-{}", String::from_utf8(body).expect("ascii"), check as char)
            },
        )
    }

    proptest! {
        #[test]
        fn every_generated_valid_code_passes(code in valid_code()) {
            prop_assert_eq!(parse_org_code(&code), Ok(code));
        }

        #[test]
        fn every_single_digit_change_of_the_body_is_caught(code in valid_code(), position in 0usize..8, digit in 0u8..10) {
            let mut bytes = code.into_bytes();
            // Digit for digit the values differ by less than 11; a letter for a digit may differ by 11 or more,
            // which a mod-11 check cannot always see.
            prop_assume!(bytes[position].is_ascii_digit() && bytes[position] != b'0' + digit);
            bytes[position] = b'0' + digit;
            prop_assert!(parse_org_code(&String::from_utf8(bytes).expect("ascii")).is_err());
        }
    }
}
