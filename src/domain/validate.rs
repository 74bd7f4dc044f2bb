//! Shape checks a message must pass beyond what serde enforces. The gateway
//! and the workers run the same checks, so both reject the same inputs.

use serde::de::DeserializeOwned;

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
/// and user id, when present and well-formed.
pub fn salvage(bytes: &[u8], reason: String) -> Invalid {
    let value: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let field = |name: &str| value.as_ref().and_then(|v| v.get(name));
    Invalid {
        request_id: field("request_id")
            .and_then(|v| v.as_str())
            .and_then(|s| RequestId::parse(s).ok()),
        user_id: field("user_id")
            .and_then(|v| v.as_i64())
            .filter(|id| *id > 0),
        reason,
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
