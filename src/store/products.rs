//! Products and their stock. `products.stock ≥ 0` is enforced by the database.

use foldhash::HashMap;

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::ids::{self, IdTable};
use super::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ProductRow {
    #[serde(rename = "product_id")]
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
}

pub async fn create(
    db: &PgPool,
    id: Option<i64>,
    name: &str,
    price: i64,
    stock: i64,
) -> Result<ProductRow> {
    let mut tx = db.begin().await?;
    let row = loop {
        let tried = ids::candidate(&mut tx, IdTable::Products, id).await?;
        let row: Option<ProductRow> = sqlx::query_as(
            "INSERT INTO products (id, name, price, stock) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING RETURNING id, name, price, stock",
        )
        .bind(tried)
        .bind(name)
        .bind(price)
        .bind(stock)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => break row,
            None => ids::taken(&mut tx, IdTable::Products, id, tried).await?,
        }
    };
    ids::written(&mut tx, IdTable::Products, (row.id, 1)).await?;
    tx.commit().await?;
    Ok(row)
}

/// Creates products `first..first+count` named `name-<id>`; returns how many were new.
pub async fn seed(db: &PgPool, first: i64, count: i64, price: i64, stock: i64) -> Result<u64> {
    let mut tx = db.begin().await?;
    let created = sqlx::query(
        "INSERT INTO products (id, name, price, stock)
         SELECT g, 'product-' || g, $3, $4 FROM generate_series($1::int8, $1::int8 + ($2::int8 - 1)) AS g
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(first)
    .bind(count)
    .bind(price)
    .bind(stock)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    ids::written(&mut tx, IdTable::Products, (first, count)).await?;
    tx.commit().await?;
    Ok(created)
}

pub async fn get(db: &PgPool, id: i64) -> Result<Option<ProductRow>> {
    Ok(
        sqlx::query_as("SELECT id, name, price, stock FROM products WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Every product's (id, stock), for reconciliation.
pub async fn all_stock(db: &PgPool) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as("SELECT id, stock FROM products ORDER BY id")
        .fetch_all(db)
        .await?)
}

/// Locks the stock of `ids` (every product when `None`) for a counter
/// reload, ascending id: no order of them commits until the transaction
/// ends. Returns (id, stock).
pub async fn lock_stock(conn: &mut PgConnection, ids: Option<&[i64]>) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT id, stock FROM products WHERE $1::int8[] IS NULL OR id = ANY($1)
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// Locks the products' rows (ascending id) and returns (price, stock) by id.
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<HashMap<i64, (i64, i64)>> {
    catalogue(
        tx,
        "SELECT id, price, stock FROM products WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        ids,
    )
    .await
}

/// The products' (price, stock) by id, unlocked.
pub async fn read(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<HashMap<i64, (i64, i64)>> {
    catalogue(
        tx,
        "SELECT id, price, stock FROM products WHERE id = ANY($1)",
        ids,
    )
    .await
}

/// (price, stock) by id, as `query` (over `$1`: the ids) selects them.
async fn catalogue(
    tx: &mut Transaction<'_, Postgres>,
    query: &'static str,
    ids: &[i64],
) -> Result<HashMap<i64, (i64, i64)>> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(query).bind(ids).fetch_all(&mut **tx).await?;
    Ok(rows
        .into_iter()
        .map(|(id, price, stock)| (id, (price, stock)))
        .collect())
}

/// Takes sold units off the stock.
pub async fn decrement(tx: &mut Transaction<'_, Postgres>, sold: &HashMap<i64, i64>) -> Result<()> {
    if sold.is_empty() {
        return Ok(());
    }
    let (ids, quantities): (Vec<i64>, Vec<i64>) = sold.iter().map(|(k, v)| (*k, *v)).unzip();
    sqlx::query(
        "UPDATE products p SET stock = p.stock - v.q
         FROM UNNEST($1::int8[], $2::int8[]) AS v(id, q) WHERE p.id = v.id",
    )
    .bind(&ids)
    .bind(&quantities)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The first of `count` consecutive free product ids (see [`ids::free_block`]).
pub async fn free_block(db: &PgPool, count: i64) -> Result<i64> {
    ids::free_block(db, IdTable::Products, count).await
}
