//! Coupon rules: discounts, expiry, and the decisions of a first-come issue.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error_code::{ErrorCode, Rejection};

/// A coupon's discount: a fixed amount of KRW or a whole percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Discount {
    Fixed {
        #[schemars(range(min = 1))]
        amount: i64,
    },
    Percent {
        #[schemars(range(min = 1, max = 100))]
        percent: i64,
    },
}

impl Discount {
    /// KRW taken off an order total: `fixed` = min(amount, total),
    /// `percent` = floor(total × percent / 100).
    pub fn amount_off(self, total: i64) -> i64 {
        let total = total.max(0);
        match self {
            Discount::Fixed { amount } => amount.min(total),
            Discount::Percent { percent } => (i128::from(total) * i128::from(percent) / 100) as i64,
        }
    }

    pub fn validate(self) -> Result<(), String> {
        match self {
            Discount::Fixed { amount } if amount <= 0 => {
                Err(format!("a fixed discount must be positive, got {amount}"))
            }
            Discount::Percent { percent } if !(1..=100).contains(&percent) => Err(format!(
                "a percent discount must be 1 to 100, got {percent}"
            )),
            _ => Ok(()),
        }
    }

    /// Stored form: (kind, value).
    pub fn to_columns(self) -> (&'static str, i64) {
        match self {
            Discount::Fixed { amount } => ("fixed", amount),
            Discount::Percent { percent } => ("percent", percent),
        }
    }

    pub fn from_columns(kind: &str, value: i64) -> Option<Self> {
        match kind {
            "fixed" => Some(Discount::Fixed { amount: value }),
            "percent" => Some(Discount::Percent { percent: value }),
            _ => None,
        }
    }
}

/// A coupon is expired once `expires_at` ≤ the time the order is processed.
pub fn is_expired(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expires_at <= now
}

/// What the stock counter said about one issue request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueDecision {
    /// Stock was taken for this request (now, or by an earlier delivery of it).
    Reserved,
    AlreadyIssued,
    SoldOut,
}

impl IssueDecision {
    /// The rejection a decision means, if it is one.
    pub fn rejection(self, coupon_id: i64, user_id: i64) -> Option<Rejection> {
        match self {
            IssueDecision::Reserved => None,
            IssueDecision::AlreadyIssued => Some(Rejection::new(
                ErrorCode::CouponAlreadyIssued,
                format!("user {user_id} already holds coupon {coupon_id}"),
            )),
            IssueDecision::SoldOut => Some(Rejection::new(
                ErrorCode::CouponSoldOut,
                format!("coupon {coupon_id} has no stock left"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_discount_never_exceeds_the_total() {
        assert_eq!(Discount::Fixed { amount: 2_000 }.amount_off(20_000), 2_000);
        assert_eq!(
            Discount::Fixed { amount: 50_000 }.amount_off(20_000),
            20_000
        );
    }

    #[test]
    fn percent_discount_rounds_down() {
        assert_eq!(Discount::Percent { percent: 10 }.amount_off(20_000), 2_000);
        assert_eq!(Discount::Percent { percent: 15 }.amount_off(999), 149);
        assert_eq!(Discount::Percent { percent: 100 }.amount_off(999), 999);
    }

    #[test]
    fn expiry_is_inclusive_of_the_instant() {
        let t = Utc::now();
        assert!(is_expired(t, t));
        assert!(!is_expired(t + chrono::Duration::seconds(1), t));
    }

    #[test]
    fn discounts_round_trip_through_columns_and_json() {
        for d in [
            Discount::Fixed { amount: 5 },
            Discount::Percent { percent: 7 },
        ] {
            let (k, v) = d.to_columns();
            assert_eq!(Discount::from_columns(k, v), Some(d));
        }
        let d: Discount = serde_json::from_str(r#"{"type":"percent","percent":10}"#).unwrap();
        assert_eq!(d, Discount::Percent { percent: 10 });
        assert!(Discount::Percent { percent: 101 }.validate().is_err());
        assert!(Discount::Fixed { amount: 0 }.validate().is_err());
    }

    proptest! {
        #[test]
        fn a_discount_is_between_zero_and_the_total(total in 0i64..1_000_000_000_000, amount in 1i64..i64::MAX, percent in 1i64..=100) {
            for d in [Discount::Fixed { amount }, Discount::Percent { percent }] {
                let off = d.amount_off(total);
                prop_assert!(off >= 0 && off <= total);
            }
        }
    }
}
