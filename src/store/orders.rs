//! Orders, their items, coupon use, and the transactional outbox of stats events.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::Result;
use crate::domain::coupon::Discount;
use crate::domain::order::PricedItem;
use crate::domain::order_batch::CouponHeld;

/// (user_coupon id, user, coupon, used, expires_at, discount kind, discount value)
type HoldingRow = (i64, i64, i64, bool, DateTime<Utc>, String, i64);

/// Locks and returns the holdings of (user, coupon) pairs.
pub async fn holdings(
    tx: &mut Transaction<'_, Postgres>,
    pairs: &[(i64, i64)],
) -> Result<foldhash::HashMap<(i64, i64), CouponHeld>> {
    if pairs.is_empty() {
        return Ok(foldhash::HashMap::default());
    }
    let (users, coupons): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
    let rows: Vec<HoldingRow> = sqlx::query_as(
        "SELECT uc.id, uc.user_id, uc.coupon_id, uc.used_at IS NOT NULL, c.expires_at, c.discount_kind, c.discount_value
         FROM user_coupons uc
         JOIN coupons c ON c.id = uc.coupon_id
         JOIN UNNEST($1::int8[], $2::int8[]) AS p(user_id, coupon_id)
           ON uc.user_id = p.user_id AND uc.coupon_id = p.coupon_id
         ORDER BY uc.id FOR UPDATE OF uc",
    )
    .bind(&users)
    .bind(&coupons)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, user, coupon, used, expires_at, kind, value)| {
            Some((
                (user, coupon),
                CouponHeld {
                    user_coupon_id: id,
                    used,
                    expires_at,
                    discount: Discount::from_columns(&kind, value)?,
                },
            ))
        })
        .collect())
}

/// A paid order to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub paid_amount: i64,
    pub coupon_id: Option<i64>,
    /// The holding marked used, when a valid coupon was applied.
    pub used_coupon: Option<i64>,
    pub coupon_applied: bool,
    pub ordered_at: DateTime<Utc>,
    pub items: Vec<PricedItem>,
}

/// `n` fresh order ids.
pub async fn next_ids(tx: &mut Transaction<'_, Postgres>, n: usize) -> Result<Vec<i64>> {
    Ok(
        sqlx::query_scalar("SELECT nextval('orders_id_seq') FROM generate_series(1, $1::int8)")
            .bind(n as i64)
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// Stores paid orders, their items, and marks applied coupons used.
pub async fn insert(tx: &mut Transaction<'_, Postgres>, orders: &[NewOrder]) -> Result<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = orders.iter().map(|o| o.id).collect();
    let requests: Vec<&str> = orders.iter().map(|o| o.request_id.as_str()).collect();
    let users: Vec<i64> = orders.iter().map(|o| o.user_id).collect();
    let totals: Vec<i64> = orders.iter().map(|o| o.total_amount).collect();
    let discounts: Vec<i64> = orders.iter().map(|o| o.discount_amount).collect();
    let paid: Vec<i64> = orders.iter().map(|o| o.paid_amount).collect();
    let coupons: Vec<Option<i64>> = orders.iter().map(|o| o.coupon_id).collect();
    let applied: Vec<bool> = orders.iter().map(|o| o.coupon_applied).collect();
    let at: Vec<DateTime<Utc>> = orders.iter().map(|o| o.ordered_at).collect();
    sqlx::query(
        "INSERT INTO orders (id, request_id, user_id, status, total_amount, discount_amount, paid_amount, coupon_id, coupon_applied, ordered_at)
         SELECT id, r, u, 'paid', t, d, p, c, a, at
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::bool[], $9::timestamptz[])
           AS v(id, r, u, t, d, p, c, a, at)",
    )
    .bind(&ids)
    .bind(&requests)
    .bind(&users)
    .bind(&totals)
    .bind(&discounts)
    .bind(&paid)
    .bind(&coupons)
    .bind(&applied)
    .bind(&at)
    .execute(&mut **tx)
    .await?;

    let mut item_orders = Vec::new();
    let mut item_products = Vec::new();
    let mut item_quantities = Vec::new();
    let mut item_prices = Vec::new();
    for order in orders {
        for item in &order.items {
            item_orders.push(order.id);
            item_products.push(item.product_id);
            item_quantities.push(item.quantity);
            item_prices.push(item.unit_price);
        }
    }
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[])",
    )
    .bind(&item_orders)
    .bind(&item_products)
    .bind(&item_quantities)
    .bind(&item_prices)
    .execute(&mut **tx)
    .await?;

    let (holdings, by_order): (Vec<i64>, Vec<i64>) = orders
        .iter()
        .filter_map(|o| o.used_coupon.map(|h| (h, o.id)))
        .unzip();
    if !holdings.is_empty() {
        sqlx::query(
            "UPDATE user_coupons uc SET used_at = now(), used_order_id = v.order_id
             FROM UNNEST($1::int8[], $2::int8[]) AS v(id, order_id)
             WHERE uc.id = v.id AND uc.used_at IS NULL",
        )
        .bind(&holdings)
        .bind(&by_order)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// An event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub key: String,
    pub payload: String,
    pub order_id: Option<i64>,
    /// The trace context of the request that caused the event.
    pub traceparent: Option<String>,
}

/// An event about one order, to be queued with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub order_id: i64,
    pub payload: String,
    pub traceparent: Option<String>,
}

/// Queues events in the transaction of the orders they describe.
/// The channel a relay listens on: told when events were queued (the
/// notification is delivered when the queuing transaction commits).
pub const OUTBOX_CHANNEL: &str = "stampede_outbox";

/// Queues events in the outbox inside `tx` and tells the relay, which wakes
/// when `tx` commits.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    events: &[NewEvent],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let orders: Vec<i64> = events.iter().map(|e| e.order_id).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let traces: Vec<Option<&str>> = events.iter().map(|e| e.traceparent.as_deref()).collect();
    sqlx::query(
        "INSERT INTO outbox (topic, key, payload, order_id, traceparent)
         SELECT $1, o::text, p, o, t
         FROM UNNEST($2::int8[], $3::text[], $4::text[]) AS v(o, p, t)",
    )
    .bind(topic)
    .bind(&orders)
    .bind(&payloads)
    .bind(&traces)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Which of `request_ids` paid an order: those whose stored result is a
/// succeeded order (an order commits with its result).
pub async fn paid_among(db: &PgPool, request_ids: &[&str]) -> Result<HashSet<String>> {
    Ok(sqlx::query_scalar(
        "SELECT request_id FROM processed_requests
         WHERE request_id = ANY($1) AND kind = 'order' AND status = 'succeeded'",
    )
    .bind(super::distinct(request_ids))
    .fetch_all(db)
    .await?
    .into_iter()
    .collect())
}

/// An outbox row's columns, read by position rather than by name: a relay's
/// batch has a thousand rows.
type OutboxColumns = (i64, String, String, Option<i64>, Option<String>);

/// The oldest events still to publish, in id order. (Rows an earlier
/// version's relay marked published, rather than deleting them, are not.)
pub async fn pending(conn: &mut PgConnection, limit: i64) -> Result<Vec<OutboxRow>> {
    let rows: Vec<OutboxColumns> = sqlx::query_as(
        "SELECT id, key, payload, order_id, traceparent FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, key, payload, order_id, traceparent)| OutboxRow {
            id,
            key,
            payload,
            order_id,
            traceparent,
        })
        .collect())
}

/// Where the relay's last marked batch ended, per partition of `topic`.
pub async fn relay_positions(db: &PgPool, topic: &str) -> Result<HashMap<i32, i64>> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM outbox_relay_position WHERE topic = $1")
            .bind(topic)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Deletes published events and moves the relay's positions past them, in
/// one transaction: everything before a position has been published and
/// deleted. Positions never move back (a late, fenced relay's update cannot
/// undo a newer one). Returns how many of `ids` were still queued.
pub async fn forget_published(
    db: &PgPool,
    ids: &[i64],
    topic: &str,
    positions: &HashMap<i32, i64>,
) -> Result<u64> {
    let mut tx = db.begin().await?;
    let mut deleted = 0;
    if !ids.is_empty() {
        deleted = sqlx::query("DELETE FROM outbox WHERE id = ANY($1) AND published_at IS NULL")
            .bind(ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    if !positions.is_empty() {
        let (partitions, offsets): (Vec<i32>, Vec<i64>) =
            positions.iter().map(|(p, o)| (*p, *o)).unzip();
        sqlx::query(
            "INSERT INTO outbox_relay_position (topic, partition, next_offset)
             SELECT $1, p, o FROM UNNEST($2::int4[], $3::int8[]) AS v(p, o)
             ON CONFLICT (topic, partition) DO UPDATE
             SET next_offset = GREATEST(outbox_relay_position.next_offset, EXCLUDED.next_offset)",
        )
        .bind(topic)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// The orders whose stats event is still queued in the outbox.
pub async fn queued_order_ids(db: &PgPool) -> Result<HashSet<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT order_id FROM outbox WHERE published_at IS NULL AND order_id IS NOT NULL",
    )
    .fetch_all(db)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Outbox rows not yet published.
pub async fn unpublished_count(db: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(db)
            .await?,
    )
}

/// Orders of the last `hours` whose stats event the relay has published:
/// those with no event left in the outbox.
pub async fn published_order_ids(db: &PgPool, hours: u64) -> Result<HashSet<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT o.id FROM orders o WHERE o.ordered_at > now() - $1::float8 * interval '1 hour'
           AND NOT EXISTS
           (SELECT 1 FROM outbox x WHERE x.order_id = o.id AND x.published_at IS NULL)",
    )
    .bind(hours as f64)
    .fetch_all(db)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Which of `ids` name an order, however old.
pub async fn existing_order_ids(db: &PgPool, ids: &[i64]) -> Result<HashSet<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT o.id FROM unnest($1::int8[]) AS k(id) JOIN orders o ON o.id = k.id",
    )
    .bind(super::distinct(ids))
    .fetch_all(db)
    .await?;
    Ok(ids.into_iter().collect())
}

/// The PostgreSQL advisory lock whose holder is the one relay publishing.
const RELAY_LOCK: i64 = 0x5354_4154_5331; // "STATS1"

/// Takes the relay's lead on `conn` if no other session holds it; the lead
/// lasts as long as that session.
pub async fn try_lead_relay(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *conn)
        .await?)
}
