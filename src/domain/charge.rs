//! The balance-charge rule: minimum charge and maximum balance.

use super::error_code::{ErrorCode, Rejection};

/// The configured bounds of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeLimits {
    pub min_charge: i64,
    pub max_balance: i64,
}

impl Default for ChargeLimits {
    fn default() -> Self {
        Self {
            min_charge: 1_000,
            max_balance: 10_000_000,
        }
    }
}

/// The balance after charging `amount`, or why the charge is refused.
pub fn apply_charge(balance: i64, amount: i64, limits: ChargeLimits) -> Result<i64, Rejection> {
    if amount < limits.min_charge {
        return Err(Rejection::new(
            ErrorCode::ChargeBelowMinimum,
            format!(
                "a charge must be at least {} KRW, got {amount}",
                limits.min_charge
            ),
        ));
    }
    match balance.checked_add(amount) {
        Some(after) if after <= limits.max_balance => Ok(after),
        _ => Err(Rejection::new(
            ErrorCode::BalanceLimitExceeded,
            format!(
                "balance {balance} + {amount} would exceed the maximum balance of {} KRW",
                limits.max_balance
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ChargeLimits = ChargeLimits {
        min_charge: 1_000,
        max_balance: 10_000_000,
    };

    #[test]
    fn charges_within_limits_add_up() {
        assert_eq!(apply_charge(10_000, 5_000, LIMITS), Ok(15_000));
        assert_eq!(apply_charge(0, 1_000, LIMITS), Ok(1_000));
        assert_eq!(apply_charge(9_999_000, 1_000, LIMITS), Ok(10_000_000));
    }

    #[test]
    fn below_minimum_is_refused() {
        let r = apply_charge(0, 999, LIMITS).unwrap_err();
        assert_eq!(r.code, ErrorCode::ChargeBelowMinimum);
    }

    #[test]
    fn above_maximum_balance_is_refused_even_when_it_overflows() {
        let r = apply_charge(9_999_001, 1_000, LIMITS).unwrap_err();
        assert_eq!(r.code, ErrorCode::BalanceLimitExceeded);
        let r = apply_charge(5, i64::MAX, LIMITS).unwrap_err();
        assert_eq!(r.code, ErrorCode::BalanceLimitExceeded);
    }

    proptest! {
        #[test]
        fn a_sequence_of_charges_never_leaves_the_bounds(amounts in proptest::collection::vec(-10_000i64..20_000_000, 0..50)) {
            let mut balance = 0i64;
            let mut history = 0i64;
            for amount in amounts {
                if let Ok(after) = apply_charge(balance, amount, LIMITS) {
                    prop_assert!(amount >= LIMITS.min_charge);
                    history += amount;
                    balance = after;
                }
                prop_assert!((0..=LIMITS.max_balance).contains(&balance));
                prop_assert_eq!(balance, history);
            }
        }
    }
}
