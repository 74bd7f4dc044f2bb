//! The HTTP ingest gateway (axum). It checks the *shape* of requests and
//! publishes them to the request topics (202 once the broker has them durably,
//! 503 when it cannot take them); the workers check *state*. It also serves
//! reads from PostgreSQL, admin writes, health and metrics.

mod admin;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod idempotency;
mod idle;
mod intake;
pub mod limits;
pub mod line;
mod ops;
mod query;
mod reads;
pub mod results;
mod server;

pub use intake::{decode_body, ChargeBody, CouponIssueBody, OrderBody};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::counters::Counters;
use crate::kafka::{Producer, Topics};

pub use results::Waiters;

/// What every handler shares, behind one `Arc`: axum hands each request its
/// own clone of the state, and cloning this is one reference count (cloning
/// the fields themselves was a tenth of the gateway's CPU per request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub counters: Counters,
    /// `Idempotency-Key` claims, sent to Redis together.
    pub claims: idempotency::Claims,
    pub producer: Producer,
    pub topics: Topics,
    pub waiters: Waiters,
    /// Each worker of this process and whether its consumer holds an assignment.
    pub consumers: Vec<(String, crate::kafka::Joined)>,
    /// Permits for write requests being handled (`gateway.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Rate limits per user and client address (`gateway.limits`).
    pub limits: Arc<limits::Limiters>,
    /// Where pending requests stand in their partition's line.
    pub line: line::Line,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/charges", post(intake::post_charge))
        .route(
            "/v1/coupons/{coupon_id}/issue",
            post(intake::post_coupon_issue),
        )
        .route("/v1/orders", post(intake::post_order))
        .route("/v1/requests/{request_id}", get(reads::get_request))
        .route("/v1/users/{id}/balance", get(reads::get_balance))
        .route("/v1/users/{id}/coupons", get(reads::get_user_coupons))
        .route("/v1/products/popular", get(reads::get_popular))
        .route("/v1/products/{id}", get(reads::get_product))
        .route("/v1/admin/users", post(admin::admin_create_user))
        .route("/v1/admin/products", post(admin::admin_create_product))
        .route("/v1/admin/coupons", post(admin::admin_create_coupon))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/dashboard", get(dashboard::page))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(auth::RequireKeyLayer::new(Arc::clone(&state.settings)))
        .with_state(state)
}

/// Health, readiness and metrics only: what a worker process serves.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

/// Binds the gateway (port 0 picks a free port) and serves it until shutdown.
pub async fn serve(
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let gateway = &state.settings.gateway;
    if gateway.client_keys.is_empty() && gateway.admin_keys.is_empty() {
        tracing::warn!("NO API KEYS CONFIGURED: the gateway is open to anyone who can reach {}; set gateway.client_keys and gateway.admin_keys", gateway.listen);
    }
    let listener = TcpListener::bind(gateway.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    tokio::spawn(results::follow_results(
        (*state.settings).clone(),
        state.waiters.clone(),
        state.line.clone(),
        shutdown.clone(),
    ));
    let limiters = state.limits.clone();
    let idle = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = idle.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => limiters.forget_idle(),
            }
        }
    });
    let settings = Arc::clone(&state.settings);
    let app = router(state);
    let handle =
        tokio::spawn(
            async move { server::serve(listener, app, &settings.gateway, shutdown).await },
        );
    Ok((addr, handle))
}
