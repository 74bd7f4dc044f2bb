//! Coupons and the coupons issued to users. `coupons.issued ≤ total_quantity`
//! and unique (user, coupon) are enforced by the database itself.

use foldhash::{HashMap, HashMapExt};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::ids::{self, IdTable};
use super::Result;
use crate::domain::coupon::Discount;
use crate::domain::coupon_batch::Recorded;
use crate::domain::messages::CouponSpec;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CouponRow {
    pub id: i64,
    pub name: String,
    pub discount_kind: String,
    pub discount_value: i64,
    pub total_quantity: i64,
    pub issued: i64,
    pub expires_at: DateTime<Utc>,
    /// Redis sub-counters the stock is split over (1: kept whole).
    pub shards: i32,
}

impl CouponRow {
    pub fn discount(&self) -> Discount {
        Discount::from_columns(&self.discount_kind, self.discount_value)
            .unwrap_or(Discount::Fixed { amount: 0 })
    }

    pub fn left(&self) -> i64 {
        self.total_quantity - self.issued
    }

    pub fn shards(&self) -> u32 {
        self.shards
            .clamp(1, crate::domain::coupon::MAX_SHARDS as i32) as u32
    }
}

const COLUMNS: &str =
    "id, name, discount_kind, discount_value, total_quantity, issued, expires_at, shards";

pub async fn create(db: &PgPool, id: Option<i64>, spec: &CouponSpec) -> Result<CouponRow> {
    let (kind, value) = spec.discount.to_columns();
    let mut tx = db.begin().await?;
    let row = loop {
        let tried = ids::candidate(&mut tx, IdTable::Coupons, id).await?;
        let row: Option<CouponRow> = sqlx::query_as(&format!(
            "INSERT INTO coupons (id, name, discount_kind, discount_value, total_quantity, expires_at, shards)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(tried)
        .bind(&spec.name)
        .bind(kind)
        .bind(value)
        .bind(spec.total_quantity)
        .bind(spec.expires_at)
        .bind(spec.shards.clamp(1, crate::domain::coupon::MAX_SHARDS) as i32)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => break row,
            None => ids::taken(&mut tx, IdTable::Coupons, id, tried).await?,
        }
    };
    ids::written(&mut tx, IdTable::Coupons, (row.id, 1)).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn get(db: &PgPool, id: i64) -> Result<Option<CouponRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM coupons WHERE id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

pub async fn find_many(db: &PgPool, ids: &[i64]) -> Result<HashMap<i64, CouponRow>> {
    let rows: Vec<CouponRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM coupons WHERE id = ANY($1)"))
            .bind(ids)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

pub async fn all(db: &PgPool) -> Result<Vec<CouponRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM coupons ORDER BY id"))
            .fetch_all(db)
            .await?,
    )
}

/// Users holding a coupon.
pub async fn holders<'e>(db: impl sqlx::PgExecutor<'e>, coupon_id: i64) -> Result<Vec<i64>> {
    Ok(
        sqlx::query_scalar("SELECT user_id FROM user_coupons WHERE coupon_id = $1")
            .bind(coupon_id)
            .fetch_all(db)
            .await?,
    )
}

/// Locks one coupon's row for a counter reload: no issue of it commits
/// until the transaction ends. Issuing batches take the same lock.
pub async fn lock_one(conn: &mut PgConnection, id: i64) -> Result<Option<CouponRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM coupons WHERE id = $1 FOR NO KEY UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// One request that Redis granted a unit of a coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub request_id: String,
    pub user_id: i64,
    pub coupon_id: i64,
}

/// Makes grants durable inside `tx`. Coupon rows are locked first, so the
/// `issued ≤ total_quantity` check is exact even if Redis drifted: grants
/// beyond the stock become `SoldOut`, in arrival order.
pub async fn issue(tx: &mut Transaction<'_, Postgres>, grants: &[Grant]) -> Result<Vec<Recorded>> {
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    let mut coupon_ids: Vec<i64> = grants.iter().map(|g| g.coupon_id).collect();
    coupon_ids.sort_unstable();
    coupon_ids.dedup();
    let available: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT id, total_quantity - issued FROM coupons WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&coupon_ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();

    let users: Vec<i64> = grants.iter().map(|g| g.user_id).collect();
    let coupons: Vec<i64> = grants.iter().map(|g| g.coupon_id).collect();
    let requests: Vec<&str> = grants.iter().map(|g| g.request_id.as_str()).collect();
    let inserted: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "INSERT INTO user_coupons (user_id, coupon_id, request_id)
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[])
         ON CONFLICT DO NOTHING RETURNING request_id, id",
    )
    .bind(&users)
    .bind(&coupons)
    .bind(&requests)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();

    let mut taken: HashMap<i64, i64> = HashMap::new();
    let mut excess = Vec::new();
    let outcomes: Vec<Recorded> = grants
        .iter()
        .map(|g| match inserted.get(&g.request_id) {
            None => Recorded::AlreadyHeld,
            Some(&id) => {
                let n = taken.entry(g.coupon_id).or_default();
                if *n < available.get(&g.coupon_id).copied().unwrap_or(0) {
                    *n += 1;
                    Recorded::Issued { user_coupon_id: id }
                } else {
                    excess.push(id);
                    Recorded::SoldOut
                }
            }
        })
        .collect();
    if !excess.is_empty() {
        sqlx::query("DELETE FROM user_coupons WHERE id = ANY($1)")
            .bind(&excess)
            .execute(&mut **tx)
            .await?;
    }
    let (ids, counts): (Vec<i64>, Vec<i64>) = taken.into_iter().filter(|(_, n)| *n > 0).unzip();
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE coupons c SET issued = c.issued + v.n
             FROM UNNEST($1::int8[], $2::int8[]) AS v(id, n) WHERE c.id = v.id",
        )
        .bind(&ids)
        .bind(&counts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(outcomes)
}

/// One issued coupon found by the request that issued it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IssuedBy {
    pub request_id: String,
    pub user_id: i64,
    pub coupon_id: i64,
    pub shards: i32,
}

/// The coupons issued by these requests, with how their coupon is split:
/// found by each request's stored result (by request id, its primary key),
/// which names the `user_coupon_id` it issued.
pub async fn issued_by(db: &PgPool, request_ids: &[&str]) -> Result<Vec<IssuedBy>> {
    Ok(sqlx::query_as(
        "SELECT p.request_id, uc.user_id, uc.coupon_id, c.shards
         FROM processed_requests p
         JOIN user_coupons uc ON uc.id = (p.result::jsonb ->> 'user_coupon_id')::int8
         JOIN coupons c ON c.id = uc.coupon_id
         WHERE p.request_id = ANY($1) AND p.kind = 'coupon' AND p.status = 'succeeded'",
    )
    .bind(request_ids)
    .fetch_all(db)
    .await?)
}

/// A coupon as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct UserCoupon {
    pub user_coupon_id: i64,
    pub coupon_id: i64,
    pub name: String,
    #[serde(skip)]
    pub discount_kind: String,
    #[serde(skip)]
    pub discount_value: i64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
    pub used_order_id: Option<i64>,
}

pub async fn of_user(db: &PgPool, user_id: i64) -> Result<Vec<UserCoupon>> {
    Ok(sqlx::query_as(
        "SELECT uc.id AS user_coupon_id, uc.coupon_id, c.name, c.discount_kind, c.discount_value,
                uc.issued_at, c.expires_at, uc.used_at IS NOT NULL AS used, uc.used_order_id
         FROM user_coupons uc JOIN coupons c ON c.id = uc.coupon_id
         WHERE uc.user_id = $1 ORDER BY uc.id",
    )
    .bind(user_id)
    .fetch_all(db)
    .await?)
}

/// A free coupon id for generated data (see [`ids::free_block`]).
pub async fn free_id(db: &PgPool) -> Result<i64> {
    ids::free_block(db, IdTable::Coupons, 1).await
}
