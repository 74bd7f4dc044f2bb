//! Which Redis server the counters were last loaded into from PostgreSQL
//! (its `run_id`): a worker that finds another server reloads every counter
//! (see the reconcile module).

use sqlx::PgPool;

use super::Result;

/// The `run_id` of the Redis server last loaded, if any.
pub async fn recorded(db: &PgPool) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT redis_run_id FROM counter_source WHERE id = 1")
            .fetch_optional(db)
            .await?,
    )
}

/// Records that the counters were loaded into the server `run_id`.
pub async fn record(db: &PgPool, run_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO counter_source (id, redis_run_id) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET redis_run_id = EXCLUDED.redis_run_id, loaded_at = now()",
    )
    .bind(run_id)
    .execute(db)
    .await?;
    Ok(())
}
