//! The error codes of the contract. A rejection is a normal business outcome,
//! published as a result; it is never an infrastructure error.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    UserNotFound,
    ChargeBelowMinimum,
    BalanceLimitExceeded,
    CouponNotFound,
    CouponSoldOut,
    CouponAlreadyIssued,
    ProductNotFound,
    OutOfStock,
    CouponNotOwned,
    CouponAlreadyUsed,
    InsufficientBalance,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UserNotFound,
        ErrorCode::ChargeBelowMinimum,
        ErrorCode::BalanceLimitExceeded,
        ErrorCode::CouponNotFound,
        ErrorCode::CouponSoldOut,
        ErrorCode::CouponAlreadyIssued,
        ErrorCode::ProductNotFound,
        ErrorCode::OutOfStock,
        ErrorCode::CouponNotOwned,
        ErrorCode::CouponAlreadyUsed,
        ErrorCode::InsufficientBalance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::ChargeBelowMinimum => "charge_below_minimum",
            ErrorCode::BalanceLimitExceeded => "balance_limit_exceeded",
            ErrorCode::CouponNotFound => "coupon_not_found",
            ErrorCode::CouponSoldOut => "coupon_sold_out",
            ErrorCode::CouponAlreadyIssued => "coupon_already_issued",
            ErrorCode::ProductNotFound => "product_not_found",
            ErrorCode::OutOfStock => "out_of_stock",
            ErrorCode::CouponNotOwned => "coupon_not_owned",
            ErrorCode::CouponAlreadyUsed => "coupon_already_used",
            ErrorCode::InsufficientBalance => "insufficient_balance",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A business rejection: the code plus a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_the_contract_spells_them() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }
}
