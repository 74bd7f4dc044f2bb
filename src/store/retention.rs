//! What the ledger need not keep forever: stored results past the window in
//! which their request can still be redelivered, and outbox rows published
//! long ago. Deleted in bounded chunks so a sweep never holds long locks.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Result;

/// Rows one statement deletes at most.
const CHUNK: i64 = 10_000;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub results: u64,
    pub outbox: u64,
}

/// Deletes stored results decided before `before` and outbox rows published
/// before it. Unpublished outbox rows are never touched.
pub async fn sweep(db: &PgPool, before: DateTime<Utc>) -> Result<Swept> {
    let mut swept = Swept::default();
    loop {
        let n = sqlx::query(
            "DELETE FROM processed_requests WHERE request_id IN (
                 SELECT request_id FROM processed_requests WHERE processed_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(CHUNK)
        .execute(db)
        .await?
        .rows_affected();
        swept.results += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    loop {
        let n = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE published_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(CHUNK)
        .execute(db)
        .await?
        .rows_affected();
        swept.outbox += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    Ok(swept)
}
