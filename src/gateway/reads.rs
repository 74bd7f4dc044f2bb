//! Reads: a request's result (or its place in line), balances, a user's
//! coupons, products and the popular-products ranking.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::query::Query;
use super::AppState;
use crate::domain::coupon::Discount;
use crate::domain::RequestId;
use crate::store::{coupons, processed, products, stats, users};

#[derive(Deserialize)]
pub struct WaitQuery {
    wait_ms: Option<u64>,
}

pub async fn get_request(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> ApiResult {
    let request_id = RequestId::parse(&raw_id).map_err(|e| ApiError::Malformed(e.to_string()))?;
    let wait = Duration::from_millis(
        query
            .wait_ms
            .unwrap_or(0)
            .min(state.settings.gateway.max_wait_ms),
    );
    let deadline = Instant::now() + wait;
    let guard = state.waiters.register(request_id.as_str());
    loop {
        let notified = guard.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(stored) = processed::get(&state.db, request_id.as_str()).await? {
            return Ok(
                ([(header::CONTENT_TYPE, "application/json")], stored.result).into_response(),
            );
        }
        let now = Instant::now();
        if now >= deadline {
            let mut pending = json!({"request_id": request_id, "status": "pending"});
            if let Some(place) = state.line.place_of(request_id.as_str()) {
                state
                    .line
                    .refresh_from_committed(&state.settings, place)
                    .await;
                let standing = state.line.standing(place);
                pending["position"] = standing.position.into();
                if let Some(eta) = standing.eta_ms {
                    pending["eta_ms"] = eta.into();
                }
            }
            return Ok((StatusCode::ACCEPTED, Json(pending)).into_response());
        }
        // Woken by the result follower; the periodic re-check covers a result
        // that was stored before we started following.
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep((deadline - now).min(Duration::from_millis(250))) => {}
        }
    }
}

fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::Malformed(format!("{what} id {raw:?} is not a positive integer")))
}

pub async fn get_balance(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "user")?;
    match users::balance(&state.db, id).await? {
        Some(balance) => Ok(Json(json!({"user_id": id, "balance": balance})).into_response()),
        None => Err(ApiError::NotFound(format!("user {id} does not exist"))),
    }
}

#[derive(Serialize)]
struct UserCouponView {
    user_coupon_id: i64,
    coupon_id: i64,
    name: String,
    discount: Discount,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    used: bool,
    used_order_id: Option<i64>,
}

pub async fn get_user_coupons(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "user")?;
    if users::balance(&state.db, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("user {id} does not exist")));
    }
    let list: Vec<UserCouponView> = coupons::of_user(&state.db, id)
        .await?
        .into_iter()
        .map(|c| UserCouponView {
            user_coupon_id: c.user_coupon_id,
            coupon_id: c.coupon_id,
            discount: Discount::from_columns(&c.discount_kind, c.discount_value)
                .unwrap_or(Discount::Fixed { amount: 0 }),
            name: c.name,
            issued_at: c.issued_at,
            expires_at: c.expires_at,
            used: c.used,
            used_order_id: c.used_order_id,
        })
        .collect();
    Ok(Json(list).into_response())
}

pub async fn get_product(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id, "product")?;
    match products::get(&state.db, id).await? {
        Some(product) => Ok(Json(product).into_response()),
        None => Err(ApiError::NotFound(format!("product {id} does not exist"))),
    }
}

#[derive(Deserialize)]
pub struct PopularQuery {
    days: Option<i64>,
    limit: Option<i64>,
}

pub async fn get_popular(
    State(state): State<AppState>,
    Query(q): Query<PopularQuery>,
) -> ApiResult {
    let days = q.days.unwrap_or(3);
    let limit = q.limit.unwrap_or(5);
    if !(1..=365).contains(&days) {
        return Err(ApiError::Invalid(format!(
            "days must be 1 to 365, got {days}"
        )));
    }
    if !(1..=100).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be 1 to 100, got {limit}"
        )));
    }
    let top = stats::popular(&state.db, days, limit, Utc::now().date_naive()).await?;
    Ok(Json(top).into_response())
}
