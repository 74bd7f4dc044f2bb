//! Pure business rules of stampede: money, charges, coupons, orders, and the
//! messages that carry them. Nothing here performs I/O; everything is unit-tested.

pub mod charge;
pub mod coupon;
pub mod coupon_batch;
pub mod error_code;
pub mod messages;
pub mod order;
pub mod order_batch;
pub mod request_id;
pub mod timestamp;
pub mod validate;

pub use error_code::{ErrorCode, Rejection};
pub use request_id::RequestId;
