//! The messages of the contract: requests, results and statistics, as serde
//! types. `topics/*.schema.json` is generated from these types.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::coupon::Discount;
use super::error_code::Rejection;
use super::request_id::RequestId;
use super::validate::{positive_id, Validate};

/// Most line items one order may hold.
pub const MAX_ORDER_ITEMS: usize = 50;
/// Largest quantity of one line item.
pub const MAX_ITEM_QUANTITY: i64 = 1_000;
/// Largest unit price of a product, so no order total can overflow.
pub const MAX_PRICE: i64 = 1_000_000_000;

/// Charge a user's balance (topic `charge.requests.v1`, key `user_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargeRequest {
    pub request_id: RequestId,
    #[schemars(range(min = 1))]
    pub user_id: i64,
    /// KRW to add; at least the configured minimum charge.
    #[schemars(range(min = 1))]
    pub amount: i64,
    /// When the request was accepted (the gateway stamps it; direct
    /// producers may): workers decide first come, first served by it, across
    /// partitions and worker processes. Counted at most 1 s before the
    /// message's broker timestamp; the broker timestamp stands in when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::timestamp::deserialize_opt"
    )]
    pub requested_at: Option<DateTime<Utc>>,
}

/// Ask for one first-come coupon (topic `coupon.requests.v1`, key `user_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CouponIssueRequest {
    pub request_id: RequestId,
    #[schemars(range(min = 1))]
    pub user_id: i64,
    #[schemars(range(min = 1))]
    pub coupon_id: i64,
    /// When the request was accepted (the gateway stamps it; direct
    /// producers may): workers decide first come, first served by it, across
    /// partitions and worker processes. Counted at most 1 s before the
    /// message's broker timestamp; the broker timestamp stands in when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::timestamp::deserialize_opt"
    )]
    pub requested_at: Option<DateTime<Utc>>,
}

/// One line of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct OrderItem {
    #[schemars(range(min = 1))]
    pub product_id: i64,
    #[schemars(range(min = 1, max = 1000))]
    pub quantity: i64,
}

/// Read from an object only: serde's derived impl also takes an array of
/// the fields (`[1, 2]`), which is not the contract's shape. Unknown fields
/// are ignored and a field given twice is refused, as derived.
impl<'de> Deserialize<'de> for OrderItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            ProductId,
            Quantity,
            #[serde(other)]
            Other,
        }

        struct ItemVisitor;

        impl<'de> serde::de::Visitor<'de> for ItemVisitor {
            type Value = OrderItem;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with product_id and quantity")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderItem, A::Error> {
                use serde::de::Error;
                let (mut product_id, mut quantity) = (None, None);
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::ProductId if product_id.is_some() => {
                            return Err(A::Error::duplicate_field("product_id"))
                        }
                        Field::ProductId => product_id = Some(map.next_value()?),
                        Field::Quantity if quantity.is_some() => {
                            return Err(A::Error::duplicate_field("quantity"))
                        }
                        Field::Quantity => quantity = Some(map.next_value()?),
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(OrderItem {
                    product_id: product_id.ok_or_else(|| A::Error::missing_field("product_id"))?,
                    quantity: quantity.ok_or_else(|| A::Error::missing_field("quantity"))?,
                })
            }
        }

        deserializer.deserialize_map(ItemVisitor)
    }
}

/// Order and pay (topic `order.requests.v1`, key `user_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRequest {
    pub request_id: RequestId,
    #[schemars(range(min = 1))]
    pub user_id: i64,
    /// 1–50 lines with distinct `product_id`.
    #[schemars(length(min = 1, max = 50))]
    pub items: Vec<OrderItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub coupon_id: Option<i64>,
    /// When the request was accepted (the gateway stamps it; direct
    /// producers may): workers decide first come, first served by it, across
    /// partitions and worker processes. Counted at most 1 s before the
    /// message's broker timestamp; the broker timestamp stands in when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::timestamp::deserialize_opt"
    )]
    pub requested_at: Option<DateTime<Utc>>,
}

/// An order holds 1 to [`MAX_ORDER_ITEMS`] lines.
fn order_lines(count: usize) -> Result<(), String> {
    if count == 0 || count > MAX_ORDER_ITEMS {
        return Err(format!(
            "items must hold 1 to {MAX_ORDER_ITEMS} lines, got {count}"
        ));
    }
    Ok(())
}

/// One order line: a product id and 1 to [`MAX_ITEM_QUANTITY`] units.
fn order_line(product_id: i64, quantity: i64) -> Result<(), String> {
    positive_id("product_id", product_id)?;
    if !(1..=MAX_ITEM_QUANTITY).contains(&quantity) {
        return Err(format!(
            "quantity of product {product_id} must be 1 to {MAX_ITEM_QUANTITY}, got {quantity}"
        ));
    }
    Ok(())
}

impl Validate for ChargeRequest {
    fn validate(&self) -> Result<(), String> {
        positive_id("user_id", self.user_id)?;
        if self.amount <= 0 {
            return Err(format!(
                "amount must be a positive number of KRW, got {}",
                self.amount
            ));
        }
        Ok(())
    }
}

impl Validate for CouponIssueRequest {
    fn validate(&self) -> Result<(), String> {
        positive_id("user_id", self.user_id)?;
        positive_id("coupon_id", self.coupon_id)
    }
}

impl Validate for OrderRequest {
    fn validate(&self) -> Result<(), String> {
        positive_id("user_id", self.user_id)?;
        if let Some(coupon_id) = self.coupon_id {
            positive_id("coupon_id", coupon_id)?;
        }
        order_lines(self.items.len())?;
        let mut seen = HashSet::with_capacity(self.items.len());
        for item in &self.items {
            order_line(item.product_id, item.quantity)?;
            if !seen.insert(item.product_id) {
                return Err(format!(
                    "product {} appears more than once in items",
                    item.product_id
                ));
            }
        }
        Ok(())
    }
}

/// Whether a request took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    Rejected,
}

/// The answer to a [`ChargeRequest`] (topic `charge.results.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargeResult {
    pub request_id: RequestId,
    /// Absent only when an unreadable request carried no usable user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    pub status: Status,
    /// The balance after the charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Rejection>,
}

/// The answer to a [`CouponIssueRequest`] (topic `coupon.results.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CouponIssueResult {
    pub request_id: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_coupon_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Rejection>,
}

/// The answer to an [`OrderRequest`] (topic `order.results.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderResult {
    pub request_id: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount_amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_amount: Option<i64>,
    /// The balance after payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// False when no coupon was given or the coupon had expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_applied: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Rejection>,
}

/// One line of a paid order as the data platform sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatsItem {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

/// One event per paid order (topic `order.stats.v1`, key `order_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderStats {
    pub order_id: i64,
    pub user_id: i64,
    pub ordered_at: DateTime<Utc>,
    pub items: Vec<StatsItem>,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub paid_amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<i64>,
}

impl Validate for OrderStats {
    /// What the stats store can record: an event outside these bounds was not
    /// written by an order worker, and goes to the DLQ instead.
    fn validate(&self) -> Result<(), String> {
        positive_id("order_id", self.order_id)?;
        positive_id("user_id", self.user_id)?;
        order_lines(self.items.len())?;
        for item in &self.items {
            order_line(item.product_id, item.quantity)?;
            if !(0..=MAX_PRICE).contains(&item.unit_price) {
                return Err(format!(
                    "unit_price of product {} must be 0 to {MAX_PRICE}, got {}",
                    item.product_id, item.unit_price
                ));
            }
        }
        for (name, amount) in [
            ("total_amount", self.total_amount),
            ("discount_amount", self.discount_amount),
            ("paid_amount", self.paid_amount),
        ] {
            if amount < 0 {
                return Err(format!("{name} must not be negative, got {amount}"));
            }
        }
        Ok(())
    }
}

/// A coupon as the admin API and `seed` create it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CouponSpec {
    pub name: String,
    pub discount: Discount,
    #[schemars(range(min = 0, max = 1_000_000_000_000i64))]
    pub total_quantity: i64,
    pub expires_at: DateTime<Utc>,
    /// Redis sub-counters the stock is split over (1: kept whole); see
    /// [`crate::counters::CouponShard`].
    #[serde(default = "one_shard")]
    #[schemars(range(min = 1, max = 64))]
    pub shards: u32,
}

fn one_shard() -> u32 {
    1
}

/// The most units a product or coupon can hold: its Redis counter passes
/// through Lua, whose numbers are exact integers only up to 2^53.
pub const MAX_UNITS: i64 = 1_000_000_000_000;

/// A product's stock or a coupon's quantity: 0 to [`MAX_UNITS`].
fn units(name: &str, value: i64) -> Result<(), String> {
    if !(0..=MAX_UNITS).contains(&value) {
        return Err(format!("{name} must be 0 to {MAX_UNITS}, got {value}"));
    }
    Ok(())
}

/// The longest name of a product or coupon, in bytes: what fits a receipt line.
pub const MAX_NAME_BYTES: usize = 200;

/// A product or coupon name: not blank, at most [`MAX_NAME_BYTES`].
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("name must be 1 to {MAX_NAME_BYTES} characters"));
    }
    Ok(())
}

impl CouponSpec {
    /// The rules a new coupon must meet, wherever it is created.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        self.discount.validate()?;
        units("total_quantity", self.total_quantity)?;
        if !(1..=crate::domain::coupon::MAX_SHARDS).contains(&self.shards) {
            return Err(format!(
                "shards must be 1 to {}, got {}",
                crate::domain::coupon::MAX_SHARDS,
                self.shards
            ));
        }
        Ok(())
    }
}

/// A product as the admin API creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSpec {
    pub name: String,
    /// KRW per unit.
    pub price: i64,
    /// Units for sale.
    pub stock: i64,
}

impl ProductSpec {
    /// The rules a new product must meet.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if !(0..=MAX_PRICE).contains(&self.price) {
            return Err(format!("price must be 0 to {MAX_PRICE}"));
        }
        units("stock", self.stock)?;
        Ok(())
    }
}

/// Either side of a result: what a worker decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    Succeeded(T),
    Rejected(Rejection),
}

// The traits every flow's messages share, for the pipeline that decodes,
// answers and stores them, and for the gateway that builds them.

/// A request message of one flow.
pub trait RequestMessage: DeserializeOwned + Validate + Send + Sync {
    fn request_id(&self) -> &RequestId;
    fn user_id(&self) -> i64;
}

/// A result message of one flow.
pub trait ResultMessage: Serialize {
    fn rejected(request_id: RequestId, user_id: Option<i64>, rejection: Rejection) -> Self;
}

macro_rules! request_message {
    ($t:ty) => {
        impl RequestMessage for $t {
            fn request_id(&self) -> &RequestId {
                &self.request_id
            }
            fn user_id(&self) -> i64 {
                self.user_id
            }
        }
    };
}
request_message!(ChargeRequest);
request_message!(CouponIssueRequest);
request_message!(OrderRequest);

impl ResultMessage for ChargeResult {
    fn rejected(request_id: RequestId, user_id: Option<i64>, rejection: Rejection) -> Self {
        ChargeResult {
            request_id,
            user_id,
            status: Status::Rejected,
            balance: None,
            error: Some(rejection),
        }
    }
}

impl ResultMessage for CouponIssueResult {
    fn rejected(request_id: RequestId, user_id: Option<i64>, rejection: Rejection) -> Self {
        CouponIssueResult {
            request_id,
            user_id,
            status: Status::Rejected,
            coupon_id: None,
            user_coupon_id: None,
            expires_at: None,
            error: Some(rejection),
        }
    }
}

impl ResultMessage for OrderResult {
    fn rejected(request_id: RequestId, user_id: Option<i64>, rejection: Rejection) -> Self {
        OrderResult {
            request_id,
            user_id,
            status: Status::Rejected,
            order_id: None,
            total_amount: None,
            discount_amount: None,
            paid_amount: None,
            balance: None,
            coupon_applied: None,
            error: Some(rejection),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validate::decode;

    #[test]
    fn unknown_fields_are_ignored() {
        let r: ChargeRequest = decode(
            br#"{"request_id":"c-1","user_id":4,"amount":5000,"channel":"app","requested_at":"2026-11-24T12:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(r.amount, 5000);
        assert!(r.requested_at.is_some());
    }

    #[test]
    fn invalid_messages_keep_a_readable_request_id() {
        let e = decode::<ChargeRequest>(br#"{"request_id":"c-2","user_id":4,"amount":"lots"}"#)
            .unwrap_err();
        assert_eq!(e.request_id.unwrap().as_str(), "c-2");
        assert_eq!(e.user_id, Some(4));

        let e = decode::<ChargeRequest>(b"{not json").unwrap_err();
        assert_eq!(e.request_id, None);

        let e = decode::<ChargeRequest>(br#"{"request_id":"bad id","user_id":4,"amount":1}"#)
            .unwrap_err();
        assert_eq!(e.request_id, None);
    }

    #[test]
    fn amounts_must_be_positive_and_fit_i64() {
        for body in [
            br#"{"request_id":"c","user_id":1,"amount":0}"#.as_slice(),
            br#"{"request_id":"c","user_id":1,"amount":-5}"#,
            br#"{"request_id":"c","user_id":1,"amount":99999999999999999999}"#,
            br#"{"request_id":"c","user_id":1,"amount":1.5}"#,
            br#"{"request_id":"c","user_id":0,"amount":1000}"#,
        ] {
            assert!(
                decode::<ChargeRequest>(body).is_err(),
                "{:?}",
                std::str::from_utf8(body)
            );
        }
    }

    #[test]
    fn order_items_are_bounded_and_distinct() {
        let item = |p: i64, q: i64| serde_json::json!({"product_id": p, "quantity": q});
        let order = |items: Vec<serde_json::Value>| {
            serde_json::to_vec(&serde_json::json!({"request_id":"o-1","user_id":1,"items":items}))
                .unwrap()
        };
        assert!(decode::<OrderRequest>(&order(vec![item(1, 2)])).is_ok());
        assert!(decode::<OrderRequest>(&order(vec![])).is_err());
        assert!(decode::<OrderRequest>(&order((1..=51).map(|p| item(p, 1)).collect())).is_err());
        assert!(decode::<OrderRequest>(&order((1..=50).map(|p| item(p, 1)).collect())).is_ok());
        assert!(decode::<OrderRequest>(&order(vec![item(1, 1), item(1, 2)])).is_err());
        // Objects only: an item or a request written as an array of its
        // fields is refused, though serde's derive would read it.
        assert!(decode::<OrderRequest>(&order(vec![serde_json::json!([1, 2])])).is_err());
        let with_extra = serde_json::json!({"product_id": 1, "quantity": 2, "note": [1]});
        assert_eq!(
            decode::<OrderRequest>(&order(vec![with_extra]))
                .unwrap()
                .items,
            vec![OrderItem {
                product_id: 1,
                quantity: 2
            }]
        );
        assert!(decode::<OrderRequest>(br#"{"request_id":"o-1","user_id":1,"items":[{"product_id":1,"product_id":2,"quantity":1}]}"#).is_err());
        assert!(decode::<OrderRequest>(
            br#"{"request_id":"o-1","user_id":1,"items":[{"quantity":1}]}"#
        )
        .is_err());
        let array = decode::<ChargeRequest>(br#" ["c-1", 1, 5000, null]"#).unwrap_err();
        assert_eq!(
            array.reason,
            "not a valid request: a request is a JSON object"
        );
        assert!(decode::<OrderRequest>(&order(vec![item(1, 0)])).is_err());
        assert!(decode::<OrderRequest>(&order(vec![item(1, 1001)])).is_err());
    }

    #[test]
    fn results_omit_absent_fields() {
        let r = ChargeResult {
            request_id: RequestId::parse("c-000042").unwrap(),
            user_id: Some(42),
            status: Status::Succeeded,
            balance: Some(15000),
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"request_id":"c-000042","user_id":42,"status":"succeeded","balance":15000}"#
        );
    }
}
