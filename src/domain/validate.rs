//! Shape checks a message must pass beyond what serde enforces. The gateway
//! and the workers run the same checks, so both reject the same inputs.

use std::fmt;

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::request_id::RequestId;

/// Something whose fields can be checked against the contract's bounds.
pub trait Validate {
    /// `Err` holds a sentence saying which field is wrong and why.
    fn validate(&self) -> Result<(), String>;
}

/// A message that could not be accepted, with whatever could still be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub request_id: Option<RequestId>,
    pub user_id: Option<i64>,
    pub reason: String,
}

/// Parses and checks a request. On failure, the request id and user id are
/// still read when present and well-formed, so the requester can be answered.
pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, Invalid> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(_) if !is_object(bytes) => Err(salvage(
            bytes,
            "not a valid request: a request is a JSON object".into(),
        )),
        Ok(message) => match message.validate() {
            Ok(()) => Ok(message),
            Err(reason) => Err(salvage(bytes, reason)),
        },
        Err(e) => Err(salvage(bytes, format!("not a valid request: {e}"))),
    }
}

/// Whether well-formed JSON `bytes` hold an object. serde reads a struct from
/// an array of its fields too (`[1, 5000]` as a charge); the contract's
/// messages and bodies are objects only.
pub fn is_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// What can still be read of a message refused for `reason`: its request id
/// and user id, when present and well-formed. Any JSON text whose top level
/// is an object counts, whatever else it holds: a number beyond any numeric
/// type (`1e400`), nesting deeper than a full parse allows, invalid UTF-8 in
/// a string of another field. A key given twice counts by its last value.
pub fn salvage(bytes: &[u8], reason: String) -> Invalid {
    let readable = serde_json::from_slice::<Readable>(bytes).ok();
    let raw = |field: fn(&Readable) -> Option<&RawValue>| readable.as_ref().and_then(field);
    Invalid {
        request_id: raw(|r| r.request_id.as_deref())
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .and_then(|s| RequestId::parse(&s).ok()),
        user_id: raw(|r| r.user_id.as_deref())
            .and_then(|v| serde_json::from_str::<i64>(v.get()).ok())
            .filter(|id| *id > 0),
        reason,
    }
}

/// A message's top-level `request_id` and `user_id`, kept as their JSON
/// text. Every value is only scanned, never converted, so nothing elsewhere
/// in the message keeps these two from being read.
struct Readable {
    request_id: Option<Box<RawValue>>,
    user_id: Option<Box<RawValue>>,
}

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Readable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
                let mut readable = Readable {
                    request_id: None,
                    user_id: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "request_id" => readable.request_id = Some(map.next_value()?),
                        "user_id" => readable.user_id = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(readable)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The contract's rule for every id: a positive i64.
pub fn positive_id(name: &str, value: i64) -> Result<(), String> {
    if value > 0 {
        Ok(())
    } else {
        Err(format!("{name} must be a positive integer, got {value}"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::decode;
    use crate::domain::messages::{ChargeRequest, CouponIssueRequest, OrderRequest};

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "[ -~]{0,70}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..60).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("request_id".to_owned()),
                        Just("user_id".to_owned()),
                        Just("amount".to_owned()),
                        Just("coupon_id".to_owned()),
                        Just("items".to_owned()),
                        Just("product_id".to_owned()),
                        Just("quantity".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn a_refused_message_is_answered_when_its_ids_can_be_read() {
        let read = |bytes: &[u8]| {
            let invalid = super::salvage(bytes, "refused".into());
            (
                invalid.request_id.map(|id| id.as_str().to_owned()),
                invalid.user_id,
            )
        };
        let some = |id: &str, user: Option<i64>| (Some(id.to_owned()), user);
        // Valid JSON that no numeric type holds, in another field or in
        // user_id itself.
        assert_eq!(
            read(br#"{"request_id": "a-1", "user_id": 7, "amount": 1e400}"#),
            some("a-1", Some(7))
        );
        assert_eq!(
            read(br#"{"user_id": -1e999, "request_id": "a-2"}"#),
            some("a-2", None)
        );
        // Nesting deeper than a full parse allows.
        let deep = format!(
            r#"{{"pad": {}{}, "request_id": "a-3", "user_id": 3}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(read(deep.as_bytes()), some("a-3", Some(3)));
        // Invalid UTF-8 in another field's string.
        assert_eq!(
            read(b"{\"x\": \"\xff\", \"request_id\": \"a-4\"}"),
            some("a-4", None)
        );
        // A key spelled with an escape, and a key given twice: the last counts.
        assert_eq!(
            read(br#"{"request\u005fid": "a-5", "user_id": 1, "user_id": 2}"#),
            some("a-5", Some(2))
        );
        assert_eq!(
            read(br#"{"request_id": "a-6", "request_id": 6}"#),
            (None, None)
        );
        // Ids that are not the contract's.
        assert_eq!(
            read(br#"{"request_id": "a b", "user_id": 1.0}"#),
            (None, None)
        );
        assert_eq!(
            read(br#"{"request_id": "a-7", "user_id": 9223372036854775808}"#),
            some("a-7", None)
        );
        // Only the top level counts, and only JSON text.
        assert_eq!(read(br#"{"inner": {"request_id": "a-8"}}"#), (None, None));
        assert_eq!(read(br#"[{"request_id": "a-9"}]"#), (None, None));
        assert_eq!(read(br#"{"request_id": "a-10"} trailing"#), (None, None));
        assert_eq!(read(br#"{"request_id": "a-11", "#), (None, None));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_crash_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ChargeRequest>(&bytes);
            let _ = decode::<CouponIssueRequest>(&bytes);
            let _ = decode::<OrderRequest>(&bytes);
        }

        #[test]
        fn whatever_decodes_is_within_the_contract(value in json_value()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(order) = decode::<OrderRequest>(&bytes) {
                prop_assert!(order.user_id > 0);
                prop_assert!((1..=50).contains(&order.items.len()));
                prop_assert!(order.items.iter().all(|i| i.product_id > 0 && (1..=1000).contains(&i.quantity)));
                let ids: std::collections::HashSet<i64> = order.items.iter().map(|i| i.product_id).collect();
                prop_assert_eq!(ids.len(), order.items.len());
            }
            if let Ok(charge) = decode::<ChargeRequest>(&bytes) {
                prop_assert!(charge.user_id > 0 && charge.amount > 0);
                prop_assert!(crate::domain::RequestId::parse(charge.request_id.as_str()).is_ok());
            }
            if let Err(invalid) = decode::<CouponIssueRequest>(&bytes) {
                prop_assert!(!invalid.reason.is_empty());
                if let Some(id) = invalid.request_id {
                    prop_assert!(crate::domain::RequestId::parse(id.as_str()).is_ok(), "a salvaged id is itself valid");
                }
            }
        }
    }
}
