//! Ids of users, products and coupons: given by the caller (any positive
//! i64, up to `i64::MAX`), or drawn from the table's identity sequence.
//!
//! Ids written with their own value by the admin API or `stampede seed`
//! move the sequence past them, so drawn ids come after every id given.
//! One written by a restore or another tool may still be drawn: the
//! sequence is then moved past the run of taken ids it hit, to the next
//! free one, and drawn again. And a row written with the largest id does
//! not spend the sequence for good: once the ids above are all taken,
//! drawing goes on from the lowest free id.

use sqlx::{PgPool, Postgres, Transaction};

use super::Result;

/// The tables whose ids are drawn here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTable {
    Users,
    Products,
    Coupons,
}

impl IdTable {
    pub fn table(self) -> &'static str {
        match self {
            IdTable::Users => "users",
            IdTable::Products => "products",
            IdTable::Coupons => "coupons",
        }
    }

    /// What a row of the table is called in a message.
    pub fn what(self) -> &'static str {
        match self {
            IdTable::Users => "user",
            IdTable::Products => "product",
            IdTable::Coupons => "coupon",
        }
    }
}

/// The id a create tries: the one asked for, or one drawn.
pub(crate) async fn candidate(
    tx: &mut Transaction<'_, Postgres>,
    t: IdTable,
    asked: Option<i64>,
) -> Result<i64> {
    match asked {
        Some(id) => Ok(id),
        None => draw(tx, t).await,
    }
}

/// What a create does when its insert of `tried` wrote nothing because the
/// id was taken: an id asked for is a conflict that names it; a drawn one
/// is stepped past, and the insert is to run again.
pub(crate) async fn taken(
    tx: &mut Transaction<'_, Postgres>,
    t: IdTable,
    asked: Option<i64>,
    tried: i64,
) -> Result<()> {
    match asked {
        Some(id) => Err(super::StoreError::Conflict(format!(
            "{} {id} already exists",
            t.what()
        ))),
        None => step_past(tx, t, tried).await,
    }
}

/// The next id of the table's sequence, unless it has reached `i64::MAX`:
/// then the sequence goes on from the lowest free id.
async fn draw(tx: &mut Transaction<'_, Postgres>, t: IdTable) -> Result<i64> {
    loop {
        let drawn: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT CASE WHEN pg_sequence_last_value(s::regclass) IS NOT DISTINCT FROM 9223372036854775807
                         THEN NULL ELSE nextval(s::regclass) END
             FROM pg_get_serial_sequence('{}', 'id') AS s",
            t.table()
        ))
        .fetch_one(&mut **tx)
        .await?;
        match drawn {
            Some(id) => return Ok(id),
            // The next draw is not called yet, so it cannot be spent.
            None => step_past(tx, t, 1).await?,
        }
    }
}

/// After a drawn `id` turned out taken: the sequence's next value becomes
/// the first free id from `id` on (past the run of taken ids that holds
/// it), or from the lowest id when that run reaches `i64::MAX`.
async fn step_past(tx: &mut Transaction<'_, Postgres>, t: IdTable, id: i64) -> Result<()> {
    let table = t.table();
    let free = match first_free(&mut **tx, table, id).await? {
        Some(free) => free,
        None => first_free(&mut **tx, table, 1).await?.ok_or_else(|| {
            super::StoreError::Conflict(format!("every {} id is taken", t.what()))
        })?,
    };
    sqlx::query(&format!(
        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), $1, false)"
    ))
    .bind(free)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The first id from `from` on that no row holds: `from` itself, or the
/// one after the run of taken ids that starts there (`None` when that run
/// reaches `i64::MAX`). One index range scan over the run.
async fn first_free<'c, E>(db: E, table: &str, from: i64) -> Result<Option<i64>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    Ok(sqlx::query_scalar(&format!(
        "SELECT CASE
           WHEN NOT EXISTS (SELECT 1 FROM {table} WHERE id = $1) THEN $1
           ELSE (SELECT a.id + 1 FROM {table} a
                 WHERE a.id >= $1 AND a.id < 9223372036854775807
                   AND NOT EXISTS (SELECT 1 FROM {table} b WHERE b.id = a.id + 1)
                 ORDER BY a.id LIMIT 1)
         END"
    ))
    .bind(from)
    .fetch_one(db)
    .await?)
}

/// After `count` ids from `first` on were written with their own values: a
/// sequence below the last of them moves past it at once, rather than
/// stepping over the run when it hits it (one index scan per run: seconds
/// for the millions of users a load test writes).
pub(crate) async fn written(
    tx: &mut Transaction<'_, Postgres>,
    t: IdTable,
    (first, count): (i64, i64),
) -> Result<()> {
    if count < 1 {
        return Ok(());
    }
    let last = first.saturating_add(count - 1);
    sqlx::query(&format!(
        "SELECT setval(s, $1) FROM pg_get_serial_sequence('{}', 'id') AS s
         WHERE COALESCE(pg_sequence_last_value(s::regclass), 0) < $1",
        t.table()
    ))
    .bind(last)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The first of `count` consecutive free ids, for data generated in bulk
/// (loadgen's users, products, coupon): after the highest id while there is
/// room above it, else the lowest gap wide enough.
pub async fn free_block(db: &PgPool, t: IdTable, count: i64) -> Result<i64> {
    let table = t.table();
    let count = count.max(1);
    let block: Option<i64> = sqlx::query_scalar(&format!(
        "WITH top AS (SELECT COALESCE(max(id), 0) AS id FROM {table})
         SELECT CASE
           WHEN (SELECT id FROM top) <= 9223372036854775807 - $1 THEN (SELECT id FROM top) + 1
           ELSE (SELECT g.start FROM (
                   SELECT COALESCE(lag(id) OVER (ORDER BY id), 0) + 1 AS start,
                          id - COALESCE(lag(id) OVER (ORDER BY id), 0) - 1 AS room
                   FROM {table}) g
                 WHERE g.room >= $1 ORDER BY g.start LIMIT 1)
         END"
    ))
    .bind(count)
    .fetch_one(db)
    .await?;
    block.ok_or_else(|| {
        super::StoreError::Conflict(format!("no {count} consecutive free {} ids", t.what()))
    })
}
