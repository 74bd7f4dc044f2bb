//! The gateway's HTTP server: the router on hyper's connection builder
//! (HTTP/1.1, and HTTP/2 by prior knowledge on the same port), with the
//! deadlines a public edge needs. A client that sends its headers slowly,
//! or a body it never finishes, holds a connection until its deadline and
//! no longer: `gateway.header_timeout_ms`, `gateway.body_timeout_ms`.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::error::ApiError;
use crate::config::GatewaySettings;

/// Serves `app` on `listener` until `shutdown`; then stops taking
/// connections and lets the open ones finish what they are doing.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    gateway: &GatewaySettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let header_timeout = Duration::from_millis(gateway.header_timeout_ms);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was taken: the listener itself is fine.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let service =
            app.clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.map(Body::new)
                });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            // A connection that sends nothing is closed like one that sends
            // its headers too slowly (hyper's deadline starts at the first
            // byte), and at once when the gateway stops.
            let mut first = [0u8; 1];
            tokio::select! {
                biased;
                _ = stopping.cancelled() => return,
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
            }
            let connection = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service),
                )
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What [`read_body_in_time`] allows a body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyRule {
    pub limit: usize,
    pub timeout: Duration,
}

impl BodyRule {
    pub fn of(gateway: &GatewaySettings) -> Self {
        Self {
            limit: gateway.body_limit_bytes,
            timeout: Duration::from_millis(gateway.body_timeout_ms),
        }
    }
}

/// Reads a request's whole body before its handler runs, within the body
/// deadline and the size limit: a body still arriving at the deadline is
/// answered 408 and its connection closed; one over the limit, 413.
pub(super) async fn read_body_in_time(
    State(rule): State<BodyRule>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(rule.timeout, axum::body::to_bytes(body, rule.limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if too_large {
                ApiError::TooLarge(rule.limit).into_response()
            } else {
                ApiError::Malformed("the request body could not be read".into()).into_response()
            }
        }
        Err(_) => {
            let mut response = ApiError::TimedOut(rule.timeout).into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}
