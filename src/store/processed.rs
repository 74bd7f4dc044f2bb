//! Idempotency: the stored result of every processed request, by `request_id`.

use foldhash::{HashMap, HashMapExt};

use sqlx::{PgConnection, PgPool};

use super::Result;

/// A result as it was first published.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredResult {
    pub request_id: String,
    pub kind: String,
    pub user_id: Option<i64>,
    pub result: String,
}

/// A result to store with the effects of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewResult {
    pub request_id: String,
    pub user_id: Option<i64>,
    pub error_code: Option<&'static str>,
    pub result: String,
}

/// The statement of [`lookup`] (`$1`: distinct request ids).
pub const LOOKUP: &str = "SELECT p.request_id, p.kind, p.user_id, p.result
     FROM unnest($1::text[]) AS k(id) JOIN processed_requests p ON p.request_id = k.id";

/// The stored results among `request_ids`.
pub async fn lookup(db: &PgPool, request_ids: &[&str]) -> Result<HashMap<String, StoredResult>> {
    if request_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StoredResult> = sqlx::query_as(LOOKUP)
        .bind(super::distinct(request_ids))
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect())
}

/// Which of `request_ids` PostgreSQL has decided (a stored result exists).
pub async fn decided(conn: &mut PgConnection, request_ids: &[String]) -> Result<Vec<String>> {
    if request_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "SELECT p.request_id FROM unnest($1::text[]) AS k(id)
             JOIN processed_requests p ON p.request_id = k.id",
    )
    .bind(super::distinct(request_ids))
    .fetch_all(conn)
    .await?)
}

/// One stored result.
pub async fn get(db: &PgPool, request_id: &str) -> Result<Option<StoredResult>> {
    Ok(sqlx::query_as(
        "SELECT request_id, kind, user_id, result FROM processed_requests WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(db)
    .await?)
}

/// Stores results in the transaction that carries their effects (or, for
/// results with no effect, as a statement of its own: atomic alike). A
/// request stored concurrently by another worker fails it (unique
/// violation), which the caller retries and then answers as a replay.
pub async fn insert_all<'e>(
    db: impl sqlx::PgExecutor<'e>,
    kind: &str,
    rows: &[NewResult],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut users = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut codes = Vec::with_capacity(rows.len());
    let mut results = Vec::with_capacity(rows.len());
    for r in rows {
        ids.push(r.request_id.as_str());
        users.push(r.user_id);
        statuses.push(if r.error_code.is_some() {
            "rejected"
        } else {
            "succeeded"
        });
        codes.push(r.error_code);
        results.push(r.result.as_str());
    }
    sqlx::query(
        "INSERT INTO processed_requests (request_id, kind, user_id, status, error_code, result)
         SELECT id, $1, u, s, c, r FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[]) AS t(id, u, s, c, r)",
    )
    .bind(kind)
    .bind(&ids)
    .bind(&users)
    .bind(&statuses)
    .bind(&codes)
    .bind(&results)
    .execute(db)
    .await?;
    Ok(())
}
