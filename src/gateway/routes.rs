//! The gateway's handlers. Shape checks reuse the domain's validation, so the
//! gateway and the workers refuse exactly the same inputs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info_span, Instrument, Span};

use super::error::ApiError;
use super::line::Place;
use super::{idempotency, AppState};
use crate::domain::coupon::Discount;
use crate::domain::messages::RequestMessage;
use crate::domain::messages::{
    ChargeRequest, CouponIssueRequest, CouponSpec, OrderItem, OrderRequest,
};
use crate::domain::RequestId;
use crate::kafka::{Flow, OutMessage};
use crate::reconcile;
use crate::store::{coupons, processed, products, stats, users};
use crate::telemetry::{metrics, trace_context};

type ApiResult = Result<Response, ApiError>;

/// The span of one accepted request, a child of the caller's trace, and the
/// trace context to carry into Kafka: the span itself when spans are
/// exported, else the caller's trace continued (or a new one).
fn accept_span(endpoint: &'static str, headers: &HeaderMap) -> (Span, String) {
    let incoming = headers
        .get(trace_context::HEADER)
        .and_then(|v| v.to_str().ok());
    let span = info_span!("accept", endpoint, request_id = tracing::field::Empty);
    trace_context::adopt(&span, incoming);
    let traceparent = trace_context::outgoing(&span)
        .unwrap_or_else(|| trace_context::continue_or_start(incoming));
    (span, traceparent)
}

/// Reads a JSON body: not JSON → 400, wrong shape → 422, too big → 413.
fn read_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<(T, Bytes), ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::Malformed(rejection.body_text())
        }
    })?;
    let parsed = decode_body(&bytes)?;
    Ok((parsed, bytes))
}

/// A POST body's shape: not JSON → `Malformed` (400), JSON of the wrong
/// shape → `Invalid` (422). Pure, so it can be fuzzed on its own.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Malformed(format!("body is not valid JSON: {e}")))?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::Invalid(format!("body does not match the API: {e}")))
}

/// The request id: the `Idempotency-Key` header when given, else a fresh one.
fn request_id(headers: &HeaderMap, prefix: &str) -> Result<(RequestId, bool), ApiError> {
    match headers.get("idempotency-key") {
        None => Ok((RequestId::generate(prefix), false)),
        Some(value) => {
            let raw = value
                .to_str()
                .map_err(|_| ApiError::Malformed("Idempotency-Key must be ASCII".into()))?;
            let id = RequestId::parse(raw)
                .map_err(|e| ApiError::Malformed(format!("Idempotency-Key: {e}")))?;
            Ok((id, true))
        }
    }
}

/// Where and how one request is published.
struct Publication<'a> {
    endpoint: &'static str,
    flow: Flow,
    user_id: i64,
    request_id: &'a RequestId,
    /// Whether the id came from an `Idempotency-Key`.
    keyed: bool,
    fingerprint: String,
    /// W3C trace context to carry into Kafka.
    traceparent: String,
}

async fn publish<T: Serialize>(state: &AppState, p: Publication<'_>, request: &T) -> ApiResult {
    let Publication {
        endpoint,
        flow,
        user_id,
        request_id,
        keyed,
        fingerprint,
        traceparent,
    } = p;
    if keyed {
        idempotency::claim(
            &state.counters,
            state.settings.gateway.idempotency_ttl_secs,
            request_id.as_str(),
            &fingerprint,
        )
        .await?;
    }
    let payload = serde_json::to_vec(request).map_err(|e| ApiError::Internal(e.to_string()))?;
    let message = OutMessage::new(state.topics.requests(flow), user_id.to_string(), payload)
        .header(trace_context::HEADER, traceparent);
    match state.producer.send(&message).await {
        Ok((partition, offset)) => state.line.placed(
            request_id.as_str(),
            Place {
                flow,
                partition,
                offset,
            },
        ),
        Err(e) => {
            if keyed {
                idempotency::release(&state.counters, request_id.as_str()).await;
            }
            metrics::gateway_request(endpoint, 503, "unavailable");
            return Err(ApiError::Unavailable(format!(
                "the broker did not take the request: {e}"
            )));
        }
    }
    metrics::gateway_request(endpoint, 202, "accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"request_id": request_id})),
    )
        .into_response())
}

fn counted(endpoint: &'static str, result: ApiResult) -> ApiResult {
    if let Err(e) = &result {
        metrics::gateway_request(endpoint, e.status().as_u16(), e.code());
    }
    result
}

/// One of the `gateway.max_in_flight` write requests being handled; given
/// back when the request ends, however it ends (a client hanging up too).
struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl<'a> Slot<'a> {
    fn take(state: &'a AppState) -> Option<Self> {
        let permit = state.in_flight.try_acquire().ok()?;
        metrics::gateway_in_flight(1.0);
        Some(Slot { _permit: permit })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        metrics::gateway_in_flight(-1.0);
    }
}

/// Shape-checks a POST body, turns it into the flow's request message, and
/// publishes it: the same path for charges, coupon issues and orders.
async fn accept<B: DeserializeOwned, R: RequestMessage + Serialize>(
    state: &AppState,
    (headers, client): (&HeaderMap, Option<Extension<ConnectInfo<SocketAddr>>>),
    body: Result<Bytes, BytesRejection>,
    (endpoint, flow, route): (&'static str, Flow, &str),
    build: impl FnOnce(B, RequestId) -> R,
) -> ApiResult {
    let Some(_slot) = Slot::take(state) else {
        let limit = state.settings.gateway.max_in_flight;
        return counted(endpoint, Err(ApiError::Overloaded(limit)));
    };
    if let Some(Extension(ConnectInfo(peer))) = client {
        if let Err(wait) = state.limits.check_client(flow, peer.ip()) {
            return counted(endpoint, Err(ApiError::RateLimited(wait)));
        }
    }
    let (span, traceparent) = accept_span(endpoint, headers);
    let accepted = async {
        let (body, raw): (B, _) = read_json(body, state.settings.gateway.body_limit_bytes)?;
        let prefix = match flow {
            Flow::Charge => "c",
            Flow::Coupon => "k",
            Flow::Order => "o",
        };
        let (request_id, keyed) = request_id(headers, prefix)?;
        Span::current().record("request_id", request_id.as_str());
        let request = build(body, request_id.clone());
        request.validate().map_err(ApiError::Invalid)?;
        state
            .limits
            .check_user(flow, request.user_id())
            .map_err(ApiError::RateLimited)?;
        let publication = Publication {
            endpoint,
            flow,
            user_id: request.user_id(),
            request_id: &request_id,
            keyed,
            fingerprint: idempotency::fingerprint(route, &raw),
            traceparent,
        };
        publish(state, publication, &request).await
    };
    counted(endpoint, accepted.instrument(span).await)
}

#[derive(Deserialize)]
pub struct ChargeBody {
    user_id: i64,
    amount: i64,
}

pub async fn post_charge(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    accept(
        &state,
        (&headers, client),
        body,
        ("charges", Flow::Charge, "charges"),
        |b: ChargeBody, request_id| ChargeRequest {
            request_id,
            user_id: b.user_id,
            amount: b.amount,
            requested_at: Some(Utc::now()),
        },
    )
    .await
}

#[derive(Deserialize)]
pub struct CouponIssueBody {
    user_id: i64,
}

pub async fn post_coupon_issue(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(coupon_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Ok(coupon_id) = coupon_id.parse::<i64>() else {
        return counted(
            "coupon_issue",
            Err(ApiError::Malformed(format!(
                "coupon id {coupon_id:?} is not a number"
            ))),
        );
    };
    let route = format!("coupons/{coupon_id}");
    accept(
        &state,
        (&headers, client),
        body,
        ("coupon_issue", Flow::Coupon, &route),
        |b: CouponIssueBody, request_id| CouponIssueRequest {
            request_id,
            user_id: b.user_id,
            coupon_id,
            requested_at: Some(Utc::now()),
        },
    )
    .await
}

#[derive(Deserialize)]
pub struct OrderBody {
    user_id: i64,
    items: Vec<OrderItem>,
    #[serde(default)]
    coupon_id: Option<i64>,
}

pub async fn post_order(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    accept(
        &state,
        (&headers, client),
        body,
        ("orders", Flow::Order, "orders"),
        |b: OrderBody, request_id| OrderRequest {
            request_id,
            user_id: b.user_id,
            items: b.items,
            coupon_id: b.coupon_id,
            requested_at: Some(Utc::now()),
        },
    )
    .await
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    user_id: Option<i64>,
    #[serde(default)]
    balance: i64,
}

pub async fn admin_create_user(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (body, _): (NewUser, _) = read_json(body, state.settings.gateway.body_limit_bytes)?;
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

pub use crate::domain::messages::MAX_PRICE;

pub async fn admin_create_product(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (body, _): (NewProduct, _) = read_json(body, state.settings.gateway.body_limit_bytes)?;
    if let Some(id) = body.product_id {
        crate::domain::validate::positive_id("product_id", id).map_err(ApiError::Invalid)?;
    }
    if body.name.trim().is_empty() || body.name.len() > 200 {
        return Err(ApiError::Invalid("name must be 1 to 200 characters".into()));
    }
    if !(0..=MAX_PRICE).contains(&body.price) {
        return Err(ApiError::Invalid(format!("price must be 0 to {MAX_PRICE}")));
    }
    if body.stock < 0 {
        return Err(ApiError::Invalid("stock must not be negative".into()));
    }
    let product = products::create(
        &state.db,
        body.product_id,
        &body.name,
        body.price,
        body.stock,
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

pub async fn admin_create_coupon(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (body, _): (NewCoupon, _) = read_json(body, state.settings.gateway.body_limit_bytes)?;
    if let Some(id) = body.coupon_id {
        crate::domain::validate::positive_id("coupon_id", id).map_err(ApiError::Invalid)?;
    }
    if body.name.trim().is_empty() || body.name.len() > 200 {
        return Err(ApiError::Invalid("name must be 1 to 200 characters".into()));
    }
    body.discount.validate().map_err(ApiError::Invalid)?;
    if body.total_quantity < 0 {
        return Err(ApiError::Invalid(
            "total_quantity must not be negative".into(),
        ));
    }
    let shards = body.shards.unwrap_or(1);
    if !(1..=crate::domain::coupon::MAX_SHARDS).contains(&shards) {
        return Err(ApiError::Invalid(format!(
            "shards must be 1 to {}, got {shards}",
            crate::domain::coupon::MAX_SHARDS
        )));
    }
    let spec = CouponSpec {
        name: body.name,
        discount: body.discount,
        total_quantity: body.total_quantity,
        expires_at: body.expires_at,
        shards,
    };
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

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = sqlx::query("SELECT 1")
        .execute(&state.db)
        .await
        .map(|_| ())
        .map_err(|e| crate::telemetry::error_chain(&e));
    let redis = state
        .counters
        .ping()
        .await
        .map_err(|e| crate::telemetry::error_chain(&e));
    let kafka = state
        .producer
        .check(Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string());
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let joined =
        |flag: &std::sync::atomic::AtomicBool| flag.load(std::sync::atomic::Ordering::Relaxed);
    let consumers: serde_json::Map<String, serde_json::Value> = state
        .consumers
        .iter()
        .map(|(worker, flag)| {
            (
                worker.clone(),
                json!(if joined(flag) { "assigned" } else { "joining" }),
            )
        })
        .collect();
    let assigned = state.consumers.iter().all(|(_, flag)| joined(flag));
    let ready = postgres.is_ok() && redis.is_ok() && kafka.is_ok() && assigned;
    let body = Json(
        json!({"ready": ready, "postgres": show(&postgres), "redis": show(&redis), "kafka": show(&kafka), "consumers": consumers}),
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
