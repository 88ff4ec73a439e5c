//! Unified social credit codes (统一社会信用代码, GB 32100-2015): 18 characters from
//! `0123456789ABCDEFGHJKLMNPQRTUWXY`, the last a check character over the first 17.

const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// Why a string is not a valid credit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreditCodeError {
    #[error("统一社会信用代码应为18位")]
    Length,
    #[error("统一社会信用代码含有不允许的字符（不使用I、O、Z、S、V）")]
    Characters,
    #[error("统一社会信用代码校验位不正确，请核对")]
    CheckCharacter,
}

impl CreditCodeError {
    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            CreditCodeError::Length => "credit_code_length",
            CreditCodeError::Characters => "credit_code_characters",
            CreditCodeError::CheckCharacter => "credit_code_check_character",
        }
    }
}

/// Parses a credit code as typed (full-width and lower case accepted) into its upper-case form.
pub fn parse_credit_code(raw: &str) -> Result<String, CreditCodeError> {
    let code = crate::text::to_half_width(raw).trim().to_ascii_uppercase();
    if code.chars().count() != 18 {
        return Err(CreditCodeError::Length);
    }
    let values: Option<Vec<usize>> = code.bytes().map(|byte| ALPHABET.iter().position(|&c| c == byte)).collect();
    let values = values.ok_or(CreditCodeError::Characters)?;
    let sum: usize = values[..17].iter().zip(WEIGHTS).map(|(value, weight)| value * weight).sum();
    let check = (31 - sum % 31) % 31;
    if values[17] != check {
        return Err(CreditCodeError::CheckCharacter);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_valid_codes_parse() {
        for valid in ["91110000101623741K", "12320700139008349D"] {
            assert_eq!(parse_credit_code(valid), Ok(valid.to_owned()));
        }
        assert_eq!(parse_credit_code(" 12320700139008349d "), Ok("12320700139008349D".to_owned()));
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let valid = b"12320700139008349D";
        for position in 0..18 {
            for &replacement in ALPHABET.iter() {
                if replacement == valid[position] {
                    continue;
                }
                let mut changed = *valid;
                changed[position] = replacement;
                let changed = String::from_utf8_lossy(&changed).into_owned();
                assert!(parse_credit_code(&changed).is_err(), "{changed}");
            }
        }
    }

    #[test]
    fn wrong_lengths_and_letters_are_refused() {
        assert_eq!(parse_credit_code("1232070013900834"), Err(CreditCodeError::Length));
        assert_eq!(parse_credit_code("1232070013900834ID"), Err(CreditCodeError::Characters));
    }
}
