//! Citizen ID numbers (公民身份号码, GB 11643-1999): 6-digit address code, birth date YYYYMMDD, 3-digit sequence
//! (odd for men), and a check character. Legacy 15-digit numbers are upgraded to 18.

use std::fmt;

use time::{Date, Month};

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: &[u8; 11] = b"10X98765432";
/// The province codes (first two digits) GB 11643 and GB/T 2260 allow.
pub const PROVINCES: [u32; 34] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63,
    64, 65, 71, 81, 82,
];

/// A valid 18-character ID number, upper-case and half-width.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdNumber(String);

/// Why a string is not a valid ID number. The codes are stable and reach the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdNumberError {
    #[error("身份证号码应为18位（或旧版15位）")]
    Length,
    #[error("身份证号码只能包含数字，最后一位可以是X")]
    Characters,
    #[error("身份证号码的省份代码无效")]
    Province,
    #[error("身份证号码中的出生日期无效")]
    BirthDate,
    #[error("身份证号码校验位不正确，请核对")]
    CheckDigit,
}

impl IdNumberError {
    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            IdNumberError::Length => "id_number_length",
            IdNumberError::Characters => "id_number_characters",
            IdNumberError::Province => "id_number_province",
            IdNumberError::BirthDate => "id_number_birth_date",
            IdNumberError::CheckDigit => "id_number_check_digit",
        }
    }
}

/// A 17-digit body completed with its check character: for test and demonstration data.
pub fn with_check_char(first17: &str) -> String {
    format!("{first17}{}", char::from(check_char(first17.as_bytes())))
}

/// The check character for the first 17 digits.
fn check_char(first17: &[u8]) -> u8 {
    let sum: u32 = first17.iter().zip(WEIGHTS).map(|(digit, weight)| u32::from(digit - b'0') * weight).sum();
    CHECK_CHARS[(sum % 11) as usize]
}

impl IdNumber {
    /// Parses an ID number as typed: full-width digits and a lower-case x are accepted; a 15-digit legacy number is
    /// upgraded (`110105491231002` → `11010519491231002X`). `today` bounds the birth date.
    pub fn parse(raw: &str, today: Date) -> Result<Self, IdNumberError> {
        let text = crate::text::to_half_width(raw).trim().to_ascii_uppercase();
        let bytes = text.as_bytes();
        let upgraded: Vec<u8> = match bytes.len() {
            18 => bytes.to_vec(),
            15 => {
                if !bytes.iter().all(u8::is_ascii_digit) {
                    return Err(IdNumberError::Characters);
                }
                let mut first17 = Vec::with_capacity(18);
                first17.extend_from_slice(&bytes[..6]);
                first17.extend_from_slice(b"19");
                first17.extend_from_slice(&bytes[6..]);
                let check = check_char(&first17);
                first17.push(check);
                first17
            }
            _ => return Err(IdNumberError::Length),
        };
        let (first17, last) = upgraded.split_at(17);
        if !first17.iter().all(u8::is_ascii_digit) || !(last[0].is_ascii_digit() || last[0] == b'X') {
            return Err(IdNumberError::Characters);
        }
        let number = |range: std::ops::Range<usize>| -> u32 {
            first17[range].iter().fold(0, |acc, digit| acc * 10 + u32::from(digit - b'0'))
        };
        if !PROVINCES.contains(&number(0..2)) {
            return Err(IdNumberError::Province);
        }
        let month = u8::try_from(number(10..12)).ok().and_then(|month| Month::try_from(month).ok());
        let birth = month.and_then(|month| {
            Date::from_calendar_date(i32::try_from(number(6..10)).ok()?, month, u8::try_from(number(12..14)).ok()?).ok()
        });
        match birth {
            Some(birth) if birth <= today && birth.year() >= 1880 => {}
            _ => return Err(IdNumberError::BirthDate),
        }
        if check_char(first17) != last[0] {
            return Err(IdNumberError::CheckDigit);
        }
        Ok(Self(String::from_utf8_lossy(&upgraded).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The birth date the number carries (already checked to be real and not in the future).
    pub fn birth_date(&self) -> Date {
        let number = |range: std::ops::Range<usize>| self.0[range].parse::<u32>().unwrap_or(1);
        let month = Month::try_from(u8::try_from(number(10..12)).unwrap_or(1)).unwrap_or(Month::January);
        Date::from_calendar_date(
            i32::try_from(number(6..10)).unwrap_or(1900),
            month,
            u8::try_from(number(12..14)).unwrap_or(1),
        )
        .unwrap_or(Date::MIN)
    }

    /// The sex the sequence number carries: odd for men.
    pub fn sex(&self) -> Sex {
        if self.0.as_bytes()[16] % 2 == 1 { Sex::Male } else { Sex::Female }
    }

    /// The form lists, logs and pages show: the first 6 and last 4 characters, `230102********1234`.
    pub fn masked(&self) -> String {
        format!("{}********{}", &self.0[..6], &self.0[14..])
    }
}

/// `text` with every run of 18 characters shaped like a resident ID number (17 digits and a digit or X) masked as
/// lists show them, so free text a clerk typed (a rejection reason) can be shown and kept without a clear number.
/// Longer or shorter runs of digits (phone numbers, bank accounts) are left as they are.
pub fn mask_in_text(text: &str) -> String {
    let characters: Vec<char> = text.chars().collect();
    let mut masked = String::with_capacity(text.len());
    let mut at = 0;
    while at < characters.len() {
        if !characters[at].is_ascii_digit() {
            masked.push(characters[at]);
            at += 1;
            continue;
        }
        let end = characters[at..]
            .iter()
            .position(|character| !(character.is_ascii_digit() || matches!(character, 'X' | 'x')))
            .map_or(characters.len(), |length| at + length);
        let run: String = characters[at..end].iter().collect();
        let shaped = run.len() == 18 && run[..17].bytes().all(|byte| byte.is_ascii_digit());
        if shaped {
            masked.push_str(&format!("{}********{}", &run[..6], &run[14..]));
        } else {
            masked.push_str(&run);
        }
        at = end;
    }
    masked
}

/// 性别, as GB/T 2261.1 codes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
}

impl Sex {
    /// The GB/T 2261.1 code: "1" male, "2" female.
    pub fn code(self) -> &'static str {
        match self {
            Sex::Male => "1",
            Sex::Female => "2",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sex::Male => "男",
            Sex::Female => "女",
        }
    }
}

/// Never prints the number itself, so an ID number cannot reach a log through `{:?}`.
impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 12 - 03);

    #[test]
    fn published_valid_numbers_parse() {
        for valid in ["11010519491231002X", "440524188001010014"] {
            assert_eq!(IdNumber::parse(valid, TODAY).map(|id| id.as_str().to_owned()), Ok(valid.to_owned()));
        }
    }

    #[test]
    fn lower_case_x_full_width_digits_and_legacy_numbers_are_normalised() {
        assert_eq!(IdNumber::parse("11010519491231002x", TODAY).expect("valid").as_str(), "11010519491231002X");
        assert_eq!(
            IdNumber::parse("１１０１０５１９４９１２３１００２Ｘ", TODAY).expect("valid").as_str(),
            "11010519491231002X"
        );
        assert_eq!(IdNumber::parse("110105491231002", TODAY).expect("valid").as_str(), "11010519491231002X");
    }

    #[test]
    fn each_kind_of_error_is_told_apart() {
        assert_eq!(IdNumber::parse("1101051949123100", TODAY), Err(IdNumberError::Length));
        assert_eq!(IdNumber::parse("1101051949123100AX", TODAY), Err(IdNumberError::Characters));
        assert_eq!(IdNumber::parse("99010519491231002X", TODAY), Err(IdNumberError::Province));
        assert_eq!(IdNumber::parse("110105194913310020", TODAY), Err(IdNumberError::BirthDate));
        assert_eq!(IdNumber::parse("110105203001010010", TODAY), Err(IdNumberError::BirthDate));
        assert_eq!(IdNumber::parse("110105194912310021", TODAY), Err(IdNumberError::CheckDigit));
    }

    #[test]
    fn sex_and_birth_date_come_from_the_number() {
        let id = IdNumber::parse("11010519491231002X", TODAY).expect("valid");
        assert_eq!((id.sex(), id.birth_date()), (Sex::Female, date!(1949 - 12 - 31)), "sequence 002 is even");
        let id = IdNumber::parse("440524188001010014", TODAY).expect("valid");
        assert_eq!(id.sex(), Sex::Male);
        let id = IdNumber::parse("230502199002152344", TODAY).expect("valid");
        assert_eq!((id.sex(), id.birth_date()), (Sex::Female, date!(1990 - 02 - 15)));
    }

    #[test]
    fn masking_keeps_six_and_four() {
        let id = IdNumber::parse("11010519491231002X", TODAY).expect("valid");
        assert_eq!(id.masked(), "110105********002X");
        assert_eq!(format!("{id:?}"), "IdNumber(110105********002X)");
    }

    fn valid_number() -> impl Strategy<Value = String> {
        (prop::sample::select(PROVINCES.to_vec()), 0u32..10_000, 0i64..36_000, 0u32..1000).prop_map(
            |(province, area, days, sequence)| {
                let birth = date!(1927 - 01 - 01) + time::Duration::days(days);
                let first17 = format!(
                    "{province:02}{area:04}{:04}{:02}{:02}{sequence:03}",
                    birth.year(),
                    u8::from(birth.month()),
                    birth.day()
                );
                let check = check_char(first17.as_bytes()) as char;
                format!("{first17}{check}")
            },
        )
    }

    #[test]
    fn numbers_in_free_text_are_masked_and_other_digits_kept() {
        assert_eq!(
            mask_in_text("李娜（230502199002152344）的参加工作时间有误，电话13904691111，账号0907021009000012345"),
            "李娜（230502********2344）的参加工作时间有误，电话13904691111，账号0907021009000012345"
        );
        assert_eq!(
            mask_in_text("23050219800101123x 与 230502198001011238"),
            "230502********123x 与 230502********1238"
        );
        assert_eq!(mask_in_text("没有号码"), "没有号码");
    }

    proptest! {
        #[test]
        fn every_generated_valid_number_passes(number in valid_number()) {
            prop_assert_eq!(IdNumber::parse(&number, TODAY).map(|id| id.as_str().to_owned()), Ok(number));
        }

        #[test]
        fn every_single_digit_change_is_caught(number in valid_number(), position in 0usize..17, replacement in 0u8..10) {
            let mut bytes = number.into_bytes();
            prop_assume!(bytes[position] != b'0' + replacement);
            bytes[position] = b'0' + replacement;
            let changed = String::from_utf8(bytes).expect("ascii");
            // The weights mod 11 are all non-zero, so one changed digit always changes the check character; the
            // change may also break the province or the date first.
            prop_assert!(IdNumber::parse(&changed, TODAY).is_err());
        }
    }
}
