//! Operations: liveness, readiness, metrics, and the answer to unknown paths.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::telemetry::metrics;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = crate::store::ping(&state.db)
        .await
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
    // Each flag read once: the answer's status and its body agree even when
    // an assignment arrives while it is being written.
    let joined: Vec<(&String, bool)> = state
        .consumers
        .iter()
        .map(|(worker, joined)| (worker, joined.is_set()))
        .collect();
    let consumers: serde_json::Map<String, serde_json::Value> = joined
        .iter()
        .map(|(worker, joined)| {
            (
                (*worker).clone(),
                json!(if *joined { "assigned" } else { "joining" }),
            )
        })
        .collect();
    let assigned = joined.iter().all(|(_, joined)| *joined);
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

/// A path that exists, asked with a method it does not answer.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
