//! Intake: the three write endpoints. A POST body is shape-checked with the
//! domain's own validation (so the gateway and the workers refuse exactly the
//! same inputs), stamped with its acceptance time, published to its flow's
//! request topic, and answered 202 — or, with `?wait`, with its result.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info_span, Instrument, Span};

use super::error::{ApiError, ApiResult};
use super::line::Place;
use super::server::TimedBody;
use super::{idempotency, AppState};
use crate::domain::messages::RequestMessage;
use crate::domain::messages::{ChargeRequest, CouponIssueRequest, OrderItem, OrderRequest};
use crate::domain::RequestId;
use crate::kafka::{Flow, OutMessage};
use crate::telemetry::{metrics, trace_context};

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

/// Reads a JSON body: not JSON → 400, wrong shape → 422, too big → 413,
/// too late → 408.
pub(super) fn read_json<T: DeserializeOwned>(body: TimedBody) -> Result<(T, Bytes), ApiError> {
    let bytes = body.0?;
    let parsed = decode_body(&bytes)?;
    Ok((parsed, bytes))
}

/// A POST body's shape: not JSON → `Malformed` (400), JSON of the wrong
/// shape → `Invalid` (422). Pure, so it can be fuzzed on its own.
/// Whether a body that did not decode is JSON at all is decided apart from
/// the decoding error, which may come before the text breaks (`{"user_id":
/// [` fails on the bracket) or for valid JSON (serde_json calls `1e400` and
/// nesting past its depth limit syntax errors).
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let body = serde_json::from_slice(bytes).map_err(|e| match json_text(bytes) {
        Ok(()) => ApiError::Invalid(format!("body does not match the API: {e}")),
        Err(syntax) => ApiError::Malformed(format!("body is not valid JSON: {syntax}")),
    })?;
    if !crate::domain::validate::is_object(bytes) {
        return Err(ApiError::Invalid(
            "body does not match the API: a body is a JSON object".into(),
        ));
    }
    Ok(body)
}

/// Whether `bytes` are one JSON text (UTF-8, one value), whatever its
/// values hold: the scan converts nothing, so any number and any depth pass.
fn json_text(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
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
    /// The `Idempotency-Key` fingerprint (route and body), when the id came
    /// from one.
    keyed: Option<idempotency::Fingerprint>,
    /// W3C trace context to carry into Kafka.
    traceparent: String,
}

/// A 202's body: `{"request_id": …}`.
#[derive(Serialize)]
struct Accepted<'a> {
    request_id: &'a RequestId,
}

async fn publish<T: Serialize>(state: &AppState, p: Publication<'_>, request: &T) -> ApiResult {
    let Publication {
        endpoint,
        flow,
        user_id,
        request_id,
        keyed,
        traceparent,
    } = p;
    let claimed = keyed.is_some();
    if let Some(fingerprint) = keyed {
        state.claims.claim(request_id.as_str(), fingerprint).await?;
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
            if claimed {
                state.claims.release(request_id.as_str()).await;
            }
            metrics::gateway_request(endpoint, 503, "unavailable");
            return Err(ApiError::Unavailable(format!(
                "the broker did not take the request: {e}"
            )));
        }
    }
    metrics::gateway_request(endpoint, 202, "accepted");
    Ok((StatusCode::ACCEPTED, Json(Accepted { request_id })).into_response())
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
    body: TimedBody,
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
        let (body, raw): (B, _) = read_json(body)?;
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
            keyed: keyed.then(|| idempotency::fingerprint(route, &raw)),
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
    body: TimedBody,
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
    body: TimedBody,
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
    body: TimedBody,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_malformed_or_of_the_wrong_shape() {
        let malformed = |b: &str| {
            matches!(
                decode_body::<CouponIssueBody>(b.as_bytes()),
                Err(ApiError::Malformed(_))
            )
        };
        let invalid = |b: &str| {
            matches!(
                decode_body::<CouponIssueBody>(b.as_bytes()),
                Err(ApiError::Invalid(_))
            )
        };
        assert!(decode_body::<CouponIssueBody>(br#"{"user_id": 7, "extra": [1]}"#).is_ok());
        for body in [
            "",
            "{",
            r#"{"user_id": 7"#,
            r#"{"user_id": 7} trailing"#,
            "nul",
            r#"{"user_id": [7"#,
            r#"{"user_id": "7"#,
            "{\"user_id\": 7, \"x\": \"\u{fffd}\"}\n\u{0}",
        ] {
            assert!(malformed(body), "{body:?} is not JSON: 400");
        }
        for body in [
            r#""seven""#,
            "{}",
            r#"{"user_id": "7"}"#,
            r#"{"user_id": 7.5}"#,
            r#"{"user_id": 1, "user_id": 2}"#,
            r#"{"user_id": 1e400}"#,
            r#"{"user_id": -1e400}"#,
        ] {
            assert!(invalid(body), "{body:?} is JSON of the wrong shape: 422");
        }
        let deep = format!(r#"{{"user_id": {}7{}}}"#, "[".repeat(500), "]".repeat(500));
        assert!(
            invalid(&deep),
            "nesting past serde_json's limit is JSON: 422"
        );
        let unclosed = format!(r#"{{"user_id": {}7}}"#, "[".repeat(500));
        assert!(malformed(&unclosed), "unclosed nesting is not JSON: 400");
        let not_utf8 = b"{\"user_id\": \"\xff\"}";
        assert!(
            matches!(
                decode_body::<CouponIssueBody>(not_utf8),
                Err(ApiError::Malformed(_))
            ),
            "JSON text is UTF-8: 400"
        );
        // An unknown field is skipped unread, as the workers skip it.
        assert!(decode_body::<CouponIssueBody>(b"{\"user_id\": 7, \"x\": \"\xff\"}").is_ok());
    }
}
