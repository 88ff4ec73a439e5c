//! The check algorithms of Chinese identifiers and the platform's plain field rules, as pure functions: each parses
//! raw input into a normalised value or says, with a stable code, what is wrong. No I/O, so every service can run
//! the same rules and tests can run them by the million.

pub mod credit_code;
pub mod fields;
pub mod id_number;
pub mod org_code;
pub mod text;

pub use credit_code::{CreditCodeError, parse_credit_code};
pub use id_number::{IdNumber, IdNumberError, Sex};
pub use org_code::{OrgCodeError, org_code_of_credit_code, parse_org_code};
