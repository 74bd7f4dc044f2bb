//! Downstream analytics kept by the stats consumer: sales per product per day,
//! deduplicated by `order_id`, built only from `order.stats.v1`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::Result;
use crate::domain::messages::OrderStats;

/// Records events not seen before; returns how many were new.
pub async fn record(db: &PgPool, events: &[OrderStats]) -> Result<usize> {
    let mut seen = HashSet::new();
    let events: Vec<&OrderStats> = events.iter().filter(|e| seen.insert(e.order_id)).collect();
    if events.is_empty() {
        return Ok(0);
    }
    let mut tx = db.begin().await?;
    let ids: Vec<i64> = events.iter().map(|e| e.order_id).collect();
    let at: Vec<DateTime<Utc>> = events.iter().map(|e| e.ordered_at).collect();
    let new: HashSet<i64> = sqlx::query_scalar(
        "INSERT INTO stats_orders (order_id, ordered_at) SELECT * FROM UNNEST($1::int8[], $2::timestamptz[])
         ON CONFLICT DO NOTHING RETURNING order_id",
    )
    .bind(&ids)
    .bind(&at)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut sales: HashMap<(i64, NaiveDate), (i64, i64)> = HashMap::new();
    for event in events.iter().filter(|e| new.contains(&e.order_id)) {
        for item in &event.items {
            let entry = sales
                .entry((item.product_id, event.ordered_at.date_naive()))
                .or_default();
            entry.0 += item.quantity;
            entry.1 += item.quantity * item.unit_price;
        }
    }
    if !sales.is_empty() {
        let mut products = Vec::with_capacity(sales.len());
        let mut days = Vec::with_capacity(sales.len());
        let mut quantities = Vec::with_capacity(sales.len());
        let mut revenues = Vec::with_capacity(sales.len());
        for ((product, day), (quantity, revenue)) in sales {
            products.push(product);
            days.push(day);
            quantities.push(quantity);
            revenues.push(revenue);
        }
        sqlx::query(
            "INSERT INTO product_sales_daily (product_id, day, quantity, revenue)
             SELECT * FROM UNNEST($1::int8[], $2::date[], $3::int8[], $4::int8[])
             ON CONFLICT (product_id, day) DO UPDATE
             SET quantity = product_sales_daily.quantity + EXCLUDED.quantity,
                 revenue = product_sales_daily.revenue + EXCLUDED.revenue",
        )
        .bind(&products)
        .bind(&days)
        .bind(&quantities)
        .bind(&revenues)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(new.len())
}

/// A product among the best sellers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Popular {
    pub rank: i64,
    pub product_id: i64,
    pub name: Option<String>,
    pub quantity: i64,
    pub revenue: i64,
}

/// Top `limit` products by quantity sold over the last `days` days (today
/// included), ties broken by product id.
pub async fn popular(db: &PgPool, days: i64, limit: i64, today: NaiveDate) -> Result<Vec<Popular>> {
    let since = today - chrono::Duration::days(days - 1);
    Ok(sqlx::query_as(
        "SELECT row_number() OVER (ORDER BY sum(s.quantity) DESC, s.product_id) AS rank,
                s.product_id, p.name, sum(s.quantity)::int8 AS quantity, sum(s.revenue)::int8 AS revenue
         FROM product_sales_daily s LEFT JOIN products p ON p.id = s.product_id
         WHERE s.day BETWEEN $1 AND $2
         GROUP BY s.product_id, p.name
         ORDER BY quantity DESC, s.product_id LIMIT $3",
    )
    .bind(since)
    .bind(today)
    .bind(limit)
    .fetch_all(db)
    .await?)
}
