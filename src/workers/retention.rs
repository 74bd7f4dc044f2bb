//! The retention sweeper: now and then deletes stored results older than
//! `worker.retention_hours`, so the table does not grow without bound (and
//! outbox rows that a relay of an earlier version marked published instead
//! of deleting). Every worker process may run it: deleting is idempotent.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::WorkerSettings;
use crate::store::retention;

pub async fn run_sweeper(settings: WorkerSettings, db: PgPool, shutdown: CancellationToken) {
    let every = Duration::from_secs(settings.retention_sweep_secs);
    let keep = chrono::Duration::hours(
        i64::try_from(settings.retention_hours).unwrap_or(i64::MAX / 3_600_000),
    );
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match retention::sweep(&db, chrono::Utc::now() - keep).await {
            Ok(swept) if swept.results + swept.outbox > 0 => info!(
                results = swept.results,
                outbox = swept.outbox,
                "deleted stored results and published outbox rows past retention"
            ),
            Ok(_) => {}
            // The next sweep tries again; nothing depends on this one.
            Err(e) => warn!(error = %crate::telemetry::error_chain(&e), "retention sweep failed"),
        }
    }
}
