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

/// Most sub-counters one coupon's stock may be split over.
pub const MAX_SHARDS: u32 = 64;

/// The sub-counter of a coupon split over `shards` that holds `user_id`'s
/// claim (holder entry and grant). Every request of one user lands on the
/// same sub-counter, so "one coupon per user" stays a check inside one Redis
/// shard. The splitmix64 finaliser spreads consecutive user ids evenly.
pub fn home_shard(user_id: i64, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let mut z = (user_id as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(shards)) as u32
}

/// `left` units dealt over `shards` sub-counters: as even as possible, the
/// first `left mod shards` one unit larger; never negative.
pub fn shares(left: i64, shards: u32) -> Vec<i64> {
    let n = i64::from(shards.max(1));
    let left = left.max(0);
    (0..n).map(|k| left / n + i64::from(k < left % n)).collect()
}

/// The sub-counters asked for stock, in order, when `home` has run out: the
/// next ones round the ring, each once.
pub fn donors(home: u32, shards: u32) -> impl Iterator<Item = u32> {
    (1..shards).map(move |step| (home + step) % shards)
}

/// What loading one sub-counter leaves for the next: a sub-counter whose
/// pending grants exceed what it was dealt (`available`) passes the
/// difference on. Returns (stock to write, carried to the next). What is
/// still carried after the last sub-counter is taken back from the stock
/// written, so the stock over all sub-counters is `left` minus every pending
/// grant.
pub fn settle_share(available: i64, pending: i64) -> (i64, i64) {
    ((available - pending).max(0), (pending - available).max(0))
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

    proptest! {
        #[test]
        fn a_user_always_lands_on_one_shard_in_range(user in any::<i64>(), shards in 1u32..=MAX_SHARDS) {
            let home = home_shard(user, shards);
            prop_assert!(home < shards);
            prop_assert_eq!(home, home_shard(user, shards));
        }

        #[test]
        fn shares_deal_every_unit_evenly(left in -5i64..10_000_000, shards in 1u32..=MAX_SHARDS) {
            let s = shares(left, shards);
            prop_assert_eq!(s.len(), shards as usize);
            prop_assert_eq!(s.iter().sum::<i64>(), left.max(0));
            let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            prop_assert!(hi - lo <= 1 && *lo >= 0);
        }

        #[test]
        fn donors_are_every_other_shard_once(home_seed in any::<u32>(), shards in 1u32..=MAX_SHARDS) {
            let home = home_seed % shards;
            let asked: Vec<u32> = donors(home, shards).collect();
            prop_assert_eq!(asked.len(), shards as usize - 1);
            let distinct: std::collections::HashSet<u32> = asked.iter().copied().collect();
            prop_assert_eq!(distinct.len(), asked.len());
            prop_assert!(!distinct.contains(&home) && asked.iter().all(|&k| k < shards));
        }

        #[test]
        fn settling_loads_left_minus_every_pending_grant(left in 0i64..100_000, pending in proptest::collection::vec(0i64..5_000, 1..16)) {
            let shards = pending.len() as u32;
            let mut carry = 0;
            let mut written = 0;
            for (share, p) in shares(left, shards).into_iter().zip(&pending) {
                let (stock, next) = settle_share(share - carry, *p);
                prop_assert!(stock >= 0);
                written += stock;
                carry = next;
            }
            written -= carry.min(written);
            let total_pending: i64 = pending.iter().sum();
            prop_assert_eq!(written, (left - total_pending).max(0));
        }
    }

    #[test]
    fn consecutive_users_spread_over_every_shard() {
        let mut seen = [0u32; 8];
        for user in 1..=8_000 {
            seen[home_shard(user, 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..=1_200).contains(&n)), "{seen:?}");
    }
}
