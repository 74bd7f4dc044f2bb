//! The gateway's HTTP server: the router on hyper's connection builder
//! (HTTP/1.1, and HTTP/2 by prior knowledge on the same port), with the
//! deadlines a public edge needs. A client that sends its headers slowly,
//! or a body it never finishes, holds a connection until its deadline and
//! no longer: `gateway.header_timeout_ms`, `gateway.body_timeout_ms`. A
//! connection with no request in flight for `header_timeout_ms` is closed
//! gracefully, over HTTP/1.1 and HTTP/2 alike ([`super::idle`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, Request};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::error::ApiError;
use super::idle::Activity;
use super::AppState;
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
    let connections = TaskTracker::new();
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    if let Some((failed, lasted)) = failures.accepted(Instant::now()) {
                        tracing::info!(failed, lasted_ms = lasted.as_millis() as u64, "accepting connections again");
                    }
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was taken: the listener itself is fine.
                    if let Some(failed) = failures.failed(Instant::now()) {
                        tracing::warn!(error = %e, failed, "could not accept a connection");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let activity = Activity::new();
        let service = app
            .clone()
            .map_request(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            })
            .map_future({
                let activity = activity.clone();
                move |answer| {
                    let in_flight = activity.begin();
                    async move {
                        let answer = answer.await;
                        drop(in_flight);
                        answer
                    }
                }
            });
        let builder = builder.clone();
        let stopping = shutdown.clone();
        connections.spawn(async move {
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
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            close_when_done(connection, &activity, header_timeout, &stopping, peer).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Failed accepts, told once when they begin, then at most once per
/// [`AcceptFailures::REPORT_EVERY`] while they go on (with how many failed
/// since), and once when a connection is accepted again. Out of file
/// descriptors, the loop tries again every 50 ms: a warning each time would
/// be twenty a second for as long as it lasts.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// When the current run of failures began.
    began: Option<Instant>,
    failed: u64,
    reported: Option<Instant>,
    unreported: u64,
}

impl AcceptFailures {
    const REPORT_EVERY: Duration = Duration::from_secs(10);

    /// Counts a failure; `Some(n)` when it is to be reported now, `n` the
    /// failures since the last report (this one included).
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.began.get_or_insert(now);
        self.failed += 1;
        self.unreported += 1;
        let due = self
            .reported
            .is_none_or(|at| now.duration_since(at) >= Self::REPORT_EVERY);
        due.then(|| {
            self.reported = Some(now);
            std::mem::take(&mut self.unreported)
        })
    }

    /// A connection was accepted: how many accepts failed, and for how
    /// long, when it ends a run of failures.
    fn accepted(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let began = self.began?;
        let ended = (self.failed, now.duration_since(began));
        *self = Self::default();
        Some(ended)
    }
}

/// Drives `connection` to its end. Stopping, or idle for `idle_after`: no
/// new requests, and the ones in flight are answered before it closes
/// (HTTP/2 sends GOAWAY). A client that does not take part in that close
/// (HTTP/2 waits for the answer to its ping) is cut off once idle for
/// another `idle_after`.
async fn close_when_done<C>(
    connection: C,
    activity: &Activity,
    idle_after: Duration,
    stopping: &CancellationToken,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::trace!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = activity.idle(idle_after), if closing => return,
            _ = stopping.cancelled(), if !closing => {}
            _ = activity.idle(idle_after), if !closing => {}
        }
        closing = true;
        activity.restart();
        connection.as_mut().graceful_shutdown();
    }
}

/// A request's body, read whole within `gateway.body_timeout_ms` and
/// `gateway.body_limit_bytes`: a body still arriving at the deadline is
/// [`ApiError::TimedOut`] (408, and the connection closed), one over the
/// limit [`ApiError::TooLarge`] (413). An extractor, not a layer around
/// every route: only the handlers that read a body pay for its deadline.
pub(super) struct TimedBody(pub Result<Bytes, ApiError>);

impl FromRequest<AppState> for TimedBody {
    type Rejection = Infallible;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Infallible> {
        let gateway = &state.settings.gateway;
        let limit = gateway.body_limit_bytes;
        let timeout = Duration::from_millis(gateway.body_timeout_ms);
        let read = axum::body::to_bytes(request.into_body(), limit);
        Ok(TimedBody(match tokio::time::timeout(timeout, read).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => {
                let too_large = e
                    .into_inner()
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                Err(if too_large {
                    ApiError::TooLarge(limit)
                } else {
                    ApiError::Malformed("the request body could not be read".into())
                })
            }
            Err(_) => Err(ApiError::TimedOut(timeout)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failed_accepts_is_told_at_its_start_every_ten_seconds_and_at_its_end() {
        let start = Instant::now();
        let mut failures = AcceptFailures::default();
        assert_eq!(failures.accepted(start), None, "nothing failed");
        // Out of descriptors for 25 s, one try every 50 ms.
        let reports: Vec<(u128, u64)> = (0..500u64)
            .filter_map(|n| {
                let at = start + Duration::from_millis(50 * n);
                let told = failures.failed(at)?;
                Some((at.duration_since(start).as_millis(), told))
            })
            .collect();
        assert_eq!(reports, vec![(0, 1), (10_000, 200), (20_000, 200)]);
        let again = start + Duration::from_secs(25);
        assert_eq!(
            failures.accepted(again),
            Some((500, Duration::from_secs(25)))
        );
        assert_eq!(failures.accepted(again), None, "told once");
        assert_eq!(failures.failed(again), Some(1), "a new run is told at once");
    }
}
