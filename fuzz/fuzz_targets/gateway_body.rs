//! The gateway's POST body parser on arbitrary bytes: 400 or 422 for what it
//! refuses, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede::gateway::{decode_body, ChargeBody, CouponIssueBody, OrderBody};

fuzz_target!(|data: &[u8]| {
    let _ = decode_body::<ChargeBody>(data);
    let _ = decode_body::<CouponIssueBody>(data);
    let _ = decode_body::<OrderBody>(data);
});
