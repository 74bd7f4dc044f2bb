//! What the ledger need not keep forever: stored results past the window in
//! which their request can still be redelivered, and outbox rows published
//! long ago (a relay deletes what it publishes; a relay of an earlier
//! version marked them instead). Deleted in bounded chunks so a sweep never
//! holds long locks.

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
    Ok(Swept {
        results: delete_in_chunks(
            db,
            "DELETE FROM processed_requests WHERE request_id IN (
                 SELECT request_id FROM processed_requests WHERE processed_at < $1 LIMIT $2)",
            before,
        )
        .await?,
        outbox: delete_in_chunks(
            db,
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE published_at < $1 LIMIT $2)",
            before,
        )
        .await?,
    })
}

/// Runs `delete` (bound to `before` and a chunk size) until a chunk comes
/// back short; returns the rows deleted.
async fn delete_in_chunks(db: &PgPool, delete: &str, before: DateTime<Utc>) -> Result<u64> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(delete)
            .bind(before)
            .bind(CHUNK)
            .execute(db)
            .await?
            .rows_affected();
        deleted += n;
        if n < CHUNK as u64 {
            return Ok(deleted);
        }
    }
}
