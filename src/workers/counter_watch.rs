//! Watches which Redis server holds the counters, between batches too.
//!
//! The coupon and order workers check the server before each batch, which
//! keeps every decision right; but a Redis restarted, restored from an older
//! snapshot or failed over while no request arrives would keep the figures
//! of another time (stock sold since back on sale, holders gone) until the
//! next request, and `stampede audit` would find them. So every process that
//! runs one of those workers also asks every `redis.watch_interval_ms` (one
//! `INFO`), once at start, and once more as it stops.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::counters::Counters;
use crate::reconcile::{self, ReconcileError};

/// How long the check as the process stops may wait for Redis.
const LAST_CHECK: Duration = Duration::from_secs(5);
/// Pause between tries of the last check while Redis does not answer.
const LAST_CHECK_RETRY: Duration = Duration::from_millis(100);

/// Runs until `shutdown`, then checks once more (for at most [`LAST_CHECK`]).
pub async fn run(db: PgPool, counters: Counters, every: Duration, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        let outcome = reconcile::reload_if_redis_replaced(&db, &counters).await;
        failing = report(outcome, failing);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    // A Redis replaced just before the process stops is reloaded still: the
    // next process may be started much later.
    let last = async {
        loop {
            match reconcile::reload_if_redis_replaced(&db, &counters).await {
                Err(e) if e.is_retryable() => tokio::time::sleep(LAST_CHECK_RETRY).await,
                outcome => {
                    report(outcome, false);
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(LAST_CHECK, last).await.is_err() {
        warn!(
            "Redis did not answer the last check of its counters before stopping; the next worker start checks it"
        );
    }
}

/// Logs an outcome; returns whether the check is failing now. An outage is
/// reported once, when it starts, and once when it ends (the batches report
/// their own retries).
fn report(outcome: Result<bool, ReconcileError>, failing: bool) -> bool {
    match outcome {
        Ok(reloaded) => {
            if reloaded {
                info!("counters reloaded into the Redis server answering now");
            }
            if failing {
                info!("the watch of the Redis server answers again");
            }
            false
        }
        Err(e) => {
            if !failing {
                warn!(
                    error = %crate::telemetry::error_chain(&e),
                    retryable = e.is_retryable(),
                    "could not check which Redis server holds the counters; trying again"
                );
            }
            true
        }
    }
}
