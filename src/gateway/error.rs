//! The one place errors become HTTP answers: `{"error":{"code","message"}}`.

use crate::telemetry::error_chain;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::counters::CounterError;
use crate::store::StoreError;

/// What a handler answers: a response, or an error that becomes one.
pub type ApiResult = Result<axum::response::Response, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("{0}")]
    Malformed(String),
    /// JSON that breaks the contract's shape.
    #[error("{0}")]
    Invalid(String),
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {} ms", .0.as_millis())]
    TimedOut(std::time::Duration),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("Idempotency-Key {0} was already used with a different request")]
    IdempotencyConflict(String),
    #[error("missing or unknown credentials: send Authorization: Bearer <key>")]
    Unauthorized,
    #[error("this key may not call {0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the gateway is handling {0} requests already; retry shortly")]
    Overloaded(usize),
    #[error("too many requests; try again in {} ms", .0.as_millis())]
    RateLimited(std::time::Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::IdempotencyConflict(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) | ApiError::Invalid(_) => "invalid_request",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::TimedOut(_) => "request_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::IdempotencyConflict(_) => "idempotency_key_reused",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        match self.header() {
            Some(header) => (self.status(), [header], Json(body)).into_response(),
            None => (self.status(), Json(body)).into_response(),
        }
    }
}

impl ApiError {
    /// The header an answer carries beside its body, when it has one.
    fn header(&self) -> Option<(header::HeaderName, String)> {
        match self {
            ApiError::RateLimited(wait) => {
                // Whole seconds, rounded up: a client waiting that long finds a token.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Some((header::RETRY_AFTER, secs.max(1).to_string()))
            }
            ApiError::Overloaded(_) => Some((header::RETRY_AFTER, "1".into())),
            // A 401 names the scheme it takes (RFC 9110 §11.6.1).
            ApiError::Unauthorized => Some((header::WWW_AUTHENTICATE, "Bearer".into())),
            // The rest of a late body may still come: the connection ends.
            ApiError::TimedOut(_) => Some((header::CONNECTION, "close".into())),
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => ApiError::Conflict(message),
            e if e.is_retryable() => {
                ApiError::Unavailable(format!("database unavailable: {}", error_chain(&e)))
            }
            e => ApiError::Internal(error_chain(&e)),
        }
    }
}

impl From<CounterError> for ApiError {
    fn from(e: CounterError) -> Self {
        ApiError::Unavailable(format!("redis unavailable: {}", error_chain(&e)))
    }
}

impl From<crate::reconcile::ReconcileError> for ApiError {
    fn from(e: crate::reconcile::ReconcileError) -> Self {
        match e {
            crate::reconcile::ReconcileError::Store(s) => s.into(),
            crate::reconcile::ReconcileError::Counters(c) => c.into(),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        CounterError::from(e).into()
    }
}
