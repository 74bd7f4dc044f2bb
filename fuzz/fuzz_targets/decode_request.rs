//! The workers' message decoder on arbitrary bytes: it may refuse them, never
//! panic, and what it accepts is within the contract.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede::domain::messages::{ChargeRequest, CouponIssueRequest, OrderRequest, OrderStats};
use stampede::domain::validate::{decode, salvage, Validate};
use stampede::domain::RequestId;

fuzz_target!(|data: &[u8]| {
    if let Ok(charge) = decode::<ChargeRequest>(data) {
        assert!(charge.user_id > 0 && charge.amount > 0);
    }
    if let Ok(coupon) = decode::<CouponIssueRequest>(data) {
        assert!(coupon.user_id > 0 && coupon.coupon_id > 0);
    }
    if let Ok(order) = decode::<OrderRequest>(data) {
        assert!(order.validate().is_ok());
    }
    let invalid = salvage(data, "fuzz".into());
    if let Some(id) = invalid.request_id {
        assert!(RequestId::parse(id.as_str()).is_ok());
    }
    if let Ok(stats) = serde_json::from_slice::<OrderStats>(data) {
        let _ = stats.validate();
    }
});
