//! Order pricing and payment: totals, coupon verdicts, discounts, balance.

use chrono::{DateTime, Utc};

use super::coupon::{is_expired, Discount};
use super::error_code::{ErrorCode, Rejection};

/// A line with the product's price at the time of the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricedItem {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

/// What the store knows of the coupon an order names, for this user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponHolding {
    /// The user was never issued this coupon.
    NotOwned,
    Owned {
        used: bool,
        expires_at: DateTime<Utc>,
        discount: Discount,
    },
}

/// The money of an order that can be paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub total: i64,
    pub discount: i64,
    pub paid: i64,
    pub coupon_applied: bool,
}

/// Prices an order. `coupon` is `None` when the order names no coupon.
pub fn price_order(
    coupon_id: Option<i64>,
    items: &[PricedItem],
    coupon: Option<CouponHolding>,
    now: DateTime<Utc>,
) -> Result<Pricing, Rejection> {
    let total = items
        .iter()
        .try_fold(0i64, |sum, item| {
            item.unit_price
                .checked_mul(item.quantity)
                .and_then(|line| sum.checked_add(line))
        })
        .ok_or_else(|| Rejection::new(ErrorCode::InvalidRequest, "order total overflows"))?;
    let coupon_id = coupon_id.unwrap_or_default();
    let discount = match coupon {
        None => None,
        Some(CouponHolding::NotOwned) => {
            return Err(Rejection::new(
                ErrorCode::CouponNotOwned,
                format!("coupon {coupon_id} was not issued to this user"),
            ))
        }
        Some(CouponHolding::Owned { used: true, .. }) => {
            return Err(Rejection::new(
                ErrorCode::CouponAlreadyUsed,
                format!("coupon {coupon_id} was already used by an earlier order"),
            ))
        }
        Some(CouponHolding::Owned {
            expires_at,
            discount,
            ..
        }) => (!is_expired(expires_at, now)).then_some(discount),
    };
    let off = discount.map_or(0, |d| d.amount_off(total));
    Ok(Pricing {
        total,
        discount: off,
        paid: total - off,
        coupon_applied: discount.is_some(),
    })
}

/// The balance after paying, or `insufficient_balance`.
pub fn pay(balance: i64, paid: i64) -> Result<i64, Rejection> {
    if balance >= paid {
        Ok(balance - paid)
    } else {
        Err(Rejection::new(
            ErrorCode::InsufficientBalance,
            format!("balance {balance} is less than the {paid} KRW to pay"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn items() -> Vec<PricedItem> {
        vec![
            PricedItem {
                product_id: 1,
                quantity: 2,
                unit_price: 10_000,
            },
            PricedItem {
                product_id: 2,
                quantity: 1,
                unit_price: 500,
            },
        ]
    }

    fn owned(used: bool, expires_in: i64, discount: Discount) -> Option<CouponHolding> {
        Some(CouponHolding::Owned {
            used,
            expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
            discount,
        })
    }

    #[test]
    fn no_coupon_pays_the_total() {
        let p = price_order(None, &items(), None, Utc::now()).unwrap();
        assert_eq!(
            p,
            Pricing {
                total: 20_500,
                discount: 0,
                paid: 20_500,
                coupon_applied: false
            }
        );
    }

    #[test]
    fn valid_coupons_discount() {
        let p = price_order(
            Some(7),
            &items(),
            owned(false, 60, Discount::Fixed { amount: 2_000 }),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(
            (p.discount, p.paid, p.coupon_applied),
            (2_000, 18_500, true)
        );
        let p = price_order(
            Some(7),
            &items(),
            owned(false, 60, Discount::Percent { percent: 10 }),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(
            (p.discount, p.paid, p.coupon_applied),
            (2_050, 18_450, true)
        );
    }

    #[test]
    fn expired_coupon_means_no_discount_not_a_rejection() {
        let p = price_order(
            Some(7),
            &items(),
            owned(false, -1, Discount::Fixed { amount: 2_000 }),
            Utc::now(),
        )
        .unwrap();
        assert_eq!((p.discount, p.paid, p.coupon_applied), (0, 20_500, false));
    }

    #[test]
    fn foreign_or_used_coupons_are_rejected() {
        let r =
            price_order(Some(7), &items(), Some(CouponHolding::NotOwned), Utc::now()).unwrap_err();
        assert_eq!(r.code, ErrorCode::CouponNotOwned);
        let r = price_order(
            Some(7),
            &items(),
            owned(true, 60, Discount::Fixed { amount: 1 }),
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(r.code, ErrorCode::CouponAlreadyUsed);
    }

    #[test]
    fn payment_needs_enough_balance() {
        assert_eq!(pay(18_500, 18_500), Ok(0));
        assert_eq!(
            pay(18_499, 18_500).unwrap_err().code,
            ErrorCode::InsufficientBalance
        );
    }

    proptest! {
        #[test]
        fn paying_never_makes_a_balance_negative(balance in 0i64..1_000_000_000, paid in 0i64..1_000_000_000) {
            if let Ok(after) = pay(balance, paid) {
                prop_assert!(after >= 0);
                prop_assert_eq!(after + paid, balance);
            }
        }
    }
}
