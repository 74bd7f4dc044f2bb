//! `requested_at` as it is read from a request: RFC 3339.
//!
//! chrono's own serde impl parses with its relaxed RFC 3339 parser, a
//! general format interpreter that took a twentieth of a coupon worker's CPU
//! (every message's stamp is read twice: by the intake to order the batch,
//! and with the request). Its strict parser reads the same form directly;
//! whatever it refuses goes to the relaxed one, so what is accepted, and
//! the error for what is not, stay chrono's.

use std::fmt;

use chrono::{DateTime, FixedOffset, ParseResult, Utc};
use serde::de::{self, Deserializer, Visitor};

/// Parses an RFC 3339 date-time: strict first, then relaxed.
pub fn parse(text: &str) -> ParseResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| text.parse::<DateTime<FixedOffset>>())
        .map(|t| t.with_timezone(&Utc))
}

/// For `#[serde(deserialize_with)]` on an `Option<DateTime<Utc>>`: `null`
/// (or, with `#[serde(default)]`, an absent field) is `None`.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    deserializer.deserialize_option(OptionalStamp)
}

struct OptionalStamp;

impl<'de> Visitor<'de> for OptionalStamp {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date-time or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(Stamp).map(Some)
    }
}

struct Stamp;

impl Visitor<'_> for Stamp {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date-time")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        parse(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, FixedOffset, TimeZone, Utc};
    use proptest::prelude::*;

    use super::parse;

    fn chrono_serde(text: &str) -> Result<DateTime<Utc>, String> {
        serde_json::from_value::<DateTime<Utc>>(serde_json::Value::String(text.to_owned()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_forms_requests_carry_read_as_chrono_reads_them() {
        for text in [
            "2026-11-24T12:00:00Z",
            "2026-11-24T12:00:00.123Z",
            "2026-11-24T12:00:00.123456789+09:00",
            "2026-11-24T12:00:00.1234567891234-01:30",
            "2026-11-24t12:00:00z",
            "2026-11-24 12:00:00+00:00",
            "2026-12-31T23:59:60Z",
        ] {
            assert_eq!(
                parse(text).map_err(|e| e.to_string()),
                chrono_serde(text),
                "{text}"
            );
        }
    }

    #[test]
    fn what_chrono_refuses_is_refused_with_its_error() {
        for text in [
            "yesterday",
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-24T12:00:00",
            "2026-11-24",
        ] {
            let ours = parse(text).map_err(|e| e.to_string());
            assert!(ours.is_err(), "{text}");
            assert_eq!(ours, chrono_serde(text), "{text}");
        }
    }

    #[test]
    fn null_and_absent_are_none_and_a_number_is_refused() {
        #[derive(serde::Deserialize)]
        struct Message {
            #[serde(default, deserialize_with = "super::deserialize_opt")]
            at: Option<DateTime<Utc>>,
        }
        let read = |json: &str| serde_json::from_str::<Message>(json).map(|m| m.at);
        assert_eq!(read("{}").unwrap(), None);
        assert_eq!(read(r#"{"at": null}"#).unwrap(), None);
        assert_eq!(
            read(r#"{"at": "2026-11-24T12:00:00Z"}"#).unwrap(),
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap())
        );
        assert!(read(r#"{"at": 1764000000}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_instant_in_any_offset_reads_back_as_itself(
            secs in 0i64..8_000_000_000,
            nanos in 0u32..1_000_000_000,
            offset_minutes in -1439i32..=1439,
        ) {
            let offset = FixedOffset::east_opt(offset_minutes * 60).unwrap();
            let at = offset.timestamp_opt(secs, nanos).unwrap();
            let full = at.to_rfc3339();
            prop_assert_eq!(parse(&full).unwrap().timestamp_nanos_opt(), at.timestamp_nanos_opt());
            let millis = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            for text in [full, millis] {
                prop_assert_eq!(parse(&text).map_err(|e| e.to_string()), chrono_serde(&text));
            }
        }

        #[test]
        fn any_text_reads_as_chrono_reads_it(text in "[0-9T:. +Zz-]{0,32}") {
            prop_assert_eq!(parse(&text).map_err(|e| e.to_string()), chrono_serde(&text));
        }
    }
}
