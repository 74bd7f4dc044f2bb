//! Users, balances and balance history. Σ history amounts = balance, always:
//! every balance change writes its history row in the same transaction.

use foldhash::{HashMap, HashSet, HashSetExt};

use sqlx::{PgPool, Postgres, Transaction};

use super::ids::{self, IdTable};
use super::Result;

/// A balance change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub user_id: i64,
    pub kind: &'static str,
    pub amount: i64,
    pub balance_after: i64,
    pub request_id: Option<String>,
    pub order_id: Option<i64>,
}

/// The statement of [`missing`] (`$1`: distinct user ids).
pub const MISSING: &str = "SELECT k.id FROM unnest($1::int8[]) AS k(id)
     WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = k.id)";

/// The users among `ids` that do not exist. Asked this way round, a batch
/// of known users (the usual case) returns no rows: reading back 2,000 ids
/// that exist was 6% of a coupon worker's CPU.
pub async fn missing(db: &PgPool, ids: &[i64]) -> Result<HashSet<i64>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<i64> = sqlx::query_scalar(MISSING)
        .bind(super::distinct(ids))
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Locks the users' rows (ascending id) and returns their balances.
pub async fn lock_balances(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<HashMap<i64, i64>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT u.id, u.balance FROM unnest($1::int8[]) AS k(id) JOIN users u ON u.id = k.id
         ORDER BY u.id FOR NO KEY UPDATE OF u",
    )
    .bind(super::distinct(ids))
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Writes new balances and their history rows.
pub async fn write_balances(
    tx: &mut Transaction<'_, Postgres>,
    balances: &HashMap<i64, i64>,
    history: &[HistoryRow],
) -> Result<()> {
    if !balances.is_empty() {
        let (ids, values): (Vec<i64>, Vec<i64>) = balances.iter().map(|(k, v)| (*k, *v)).unzip();
        sqlx::query(
            "UPDATE users u SET balance = v.balance, updated_at = now()
             FROM UNNEST($1::int8[], $2::int8[]) AS v(id, balance) WHERE u.id = v.id",
        )
        .bind(&ids)
        .bind(&values)
        .execute(&mut **tx)
        .await?;
    }
    insert_history(tx, history).await
}

pub async fn insert_history(
    tx: &mut Transaction<'_, Postgres>,
    history: &[HistoryRow],
) -> Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    let users: Vec<i64> = history.iter().map(|h| h.user_id).collect();
    let kinds: Vec<&str> = history.iter().map(|h| h.kind).collect();
    let amounts: Vec<i64> = history.iter().map(|h| h.amount).collect();
    let after: Vec<i64> = history.iter().map(|h| h.balance_after).collect();
    let requests: Vec<Option<&str>> = history.iter().map(|h| h.request_id.as_deref()).collect();
    let orders: Vec<Option<i64>> = history.iter().map(|h| h.order_id).collect();
    sqlx::query(
        "INSERT INTO balance_history (user_id, kind, amount, balance_after, request_id, order_id)
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[])",
    )
    .bind(&users)
    .bind(&kinds)
    .bind(&amounts)
    .bind(&after)
    .bind(&requests)
    .bind(&orders)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates a user (id chosen by the database when `None`) with an opening
/// balance recorded in history. Fails with a conflict when the id is taken.
pub async fn create(db: &PgPool, id: Option<i64>, balance: i64) -> Result<i64> {
    let mut tx = db.begin().await?;
    let id = loop {
        let tried = ids::candidate(&mut tx, IdTable::Users, id).await?;
        let created: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (id, balance) VALUES ($1, $2)
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(tried)
        .bind(balance)
        .fetch_optional(&mut *tx)
        .await?;
        match created {
            Some(created) => break created,
            None => ids::taken(&mut tx, IdTable::Users, id, tried).await?,
        }
    };
    ids::written(&mut tx, IdTable::Users, (id, 1)).await?;
    if balance > 0 {
        insert_history(
            &mut tx,
            &[HistoryRow {
                user_id: id,
                kind: "initial",
                amount: balance,
                balance_after: balance,
                request_id: None,
                order_id: None,
            }],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Creates users `first..first+count` with `balance` each; existing ids are
/// left untouched. Returns how many were created.
pub async fn seed(db: &PgPool, first: i64, count: i64, balance: i64) -> Result<u64> {
    let mut tx = db.begin().await?;
    let created: i64 = sqlx::query_scalar(
        "WITH new AS (
            INSERT INTO users (id, balance)
            SELECT g, $3 FROM generate_series($1::int8, $1::int8 + ($2::int8 - 1)) AS g
            ON CONFLICT (id) DO NOTHING RETURNING id, balance),
         history AS (
            INSERT INTO balance_history (user_id, kind, amount, balance_after)
            SELECT id, 'initial', balance, balance FROM new WHERE balance > 0)
         SELECT count(*) FROM new",
    )
    .bind(first)
    .bind(count)
    .bind(balance)
    .fetch_one(&mut *tx)
    .await?;
    ids::written(&mut tx, IdTable::Users, (first, count)).await?;
    tx.commit().await?;
    Ok(created as u64)
}

/// A user's balance, or `None` when the user does not exist.
pub async fn balance(db: &PgPool, id: i64) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT balance FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// The first of `count` consecutive free user ids (see [`ids::free_block`]).
pub async fn free_block(db: &PgPool, count: i64) -> Result<i64> {
    ids::free_block(db, IdTable::Users, count).await
}
