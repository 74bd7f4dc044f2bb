//! The idempotency key every request carries.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest request id accepted.
pub const MAX_LEN: usize = 64;
/// The characters a request id may use, as a JSON Schema pattern.
pub const PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// A producer-chosen id, 1–64 chars of `[A-Za-z0-9._:-]`: the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct RequestId(#[schemars(regex(pattern = r"^[A-Za-z0-9._:-]{1,64}$"))] String);

/// Why a string is not a request id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestIdError {
    #[error("request_id must not be empty")]
    Empty,
    #[error("request_id is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    #[error("request_id may only contain A-Z a-z 0-9 . _ : -")]
    BadCharacter,
}

impl RequestId {
    pub fn parse(raw: &str) -> Result<Self, RequestIdError> {
        if raw.is_empty() {
            return Err(RequestIdError::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(RequestIdError::TooLong(raw.chars().count()));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(RequestIdError::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id for a request that came without one (time-ordered UUID).
    pub fn generate(prefix: &str) -> Self {
        Self(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        RequestId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert!(RequestId::parse("c-000042").is_ok());
        assert!(RequestId::parse("A.b_c:d-9").is_ok());
        assert!(RequestId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
        assert_eq!(
            RequestId::parse(&"x".repeat(65)),
            Err(RequestIdError::TooLong(65))
        );
        assert_eq!(RequestId::parse("a b"), Err(RequestIdError::BadCharacter));
        assert_eq!(RequestId::parse("주문"), Err(RequestIdError::BadCharacter));
        assert_eq!(RequestId::parse("a/b"), Err(RequestIdError::BadCharacter));
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = RequestId::generate("c");
        let b = RequestId::generate("c");
        assert_ne!(a, b);
        assert!(RequestId::parse(a.as_str()).is_ok());
    }
}
