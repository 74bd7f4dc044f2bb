//! Admin: creating users, products and coupons (the domain's rules decide
//! what is valid); stock is loaded into Redis as it is created.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::intake::read_json;
use super::server::TimedBody;
use super::AppState;
use crate::domain::coupon::Discount;
use crate::domain::messages::{CouponSpec, ProductSpec};
use crate::reconcile;
use crate::store::{coupons, products, users};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    user_id: Option<i64>,
    #[serde(default)]
    balance: i64,
}

pub async fn admin_create_user(State(state): State<AppState>, body: TimedBody) -> ApiResult {
    let (body, _): (NewUser, _) = read_json(body)?;
    if let Some(id) = body.user_id {
        crate::domain::validate::positive_id("user_id", id).map_err(ApiError::Invalid)?;
    }
    if !(0..=state.settings.rules.max_balance).contains(&body.balance) {
        return Err(ApiError::Invalid(format!(
            "balance must be 0 to {}, got {}",
            state.settings.rules.max_balance, body.balance
        )));
    }
    let id = users::create(&state.db, body.user_id, body.balance).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user_id": id, "balance": body.balance})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    product_id: Option<i64>,
    name: String,
    price: i64,
    stock: i64,
}

pub async fn admin_create_product(State(state): State<AppState>, body: TimedBody) -> ApiResult {
    let (body, _): (NewProduct, _) = read_json(body)?;
    if let Some(id) = body.product_id {
        crate::domain::validate::positive_id("product_id", id).map_err(ApiError::Invalid)?;
    }
    let spec = ProductSpec {
        name: body.name,
        price: body.price,
        stock: body.stock,
    };
    spec.validate().map_err(ApiError::Invalid)?;
    let product = products::create(
        &state.db,
        body.product_id,
        &spec.name,
        spec.price,
        spec.stock,
    )
    .await?;
    state
        .counters
        .load_products(&[(product.id, product.stock)], &[], true)
        .await?;
    Ok((StatusCode::CREATED, Json(product)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    coupon_id: Option<i64>,
    name: String,
    discount: Discount,
    total_quantity: i64,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    shards: Option<u32>,
}

pub async fn admin_create_coupon(State(state): State<AppState>, body: TimedBody) -> ApiResult {
    let (body, _): (NewCoupon, _) = read_json(body)?;
    if let Some(id) = body.coupon_id {
        crate::domain::validate::positive_id("coupon_id", id).map_err(ApiError::Invalid)?;
    }
    let spec = CouponSpec {
        name: body.name,
        discount: body.discount,
        total_quantity: body.total_quantity,
        expires_at: body.expires_at,
        shards: body.shards.unwrap_or(1),
    };
    spec.validate().map_err(ApiError::Invalid)?;
    let coupon = coupons::create(&state.db, body.coupon_id, &spec).await?;
    reconcile::load_coupon(&state.db, &state.counters, coupon.id, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "coupon_id": coupon.id,
            "name": coupon.name,
            "discount": coupon.discount(),
            "total_quantity": coupon.total_quantity,
            "issued": coupon.issued,
            "expires_at": coupon.expires_at,
            "shards": coupon.shards,
        })),
    )
        .into_response())
}
