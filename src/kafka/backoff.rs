//! Exponential backoff with jitter: how workers retry a batch (or a publish,
//! or a relay round) while a dependency is down.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::handler::HandlerError;
use crate::telemetry::metrics;

/// Exponential backoff with jitter for retryable failures.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// Runs `attempt` until it succeeds or fails fatally. Returns `None` when
    /// shutdown came while waiting to retry.
    pub async fn retry<T, F, Fut>(
        &self,
        worker: &str,
        what: &str,
        shutdown: &CancellationToken,
        mut attempt: F,
    ) -> Option<Result<T, HandlerError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, HandlerError>>,
    {
        let mut delay = self.initial;
        loop {
            match attempt().await {
                Err(e @ HandlerError::Retryable { cause, .. }) => {
                    metrics::retry(worker, cause);
                    let error = crate::telemetry::error_chain(&e);
                    warn!(worker, what, cause, %error, retry_in_ms = delay.as_millis() as u64, "retrying");
                    let jitter =
                        Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 4));
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay + jitter) => {}
                    }
                    delay = (delay * 2).min(self.max);
                }
                done => return Some(done),
            }
        }
    }
}
