//! `stampede audit`: checks every promise stampede makes against PostgreSQL,
//! Redis and the stats topic, and says plainly which hold.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::Message;

use crate::kafka::tail::{read_to_end, reader, Start};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::Settings;
use crate::counters::CounterError;
use crate::counters::Counters;
use crate::kafka::Topics;
use crate::store::StoreError;
use crate::store::{coupons, products};

/// Why the audit could not finish (a violation is a finding, not an error).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Counters(#[from] CounterError),
    #[error("reading the stats topic: {0}")]
    StatsTopic(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub checks: Vec<Check>,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn violations(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    fn add(&mut self, name: &'static str, violations: i64, what: &str) {
        self.checks.push(Check {
            name,
            passed: violations == 0,
            detail: if violations == 0 {
                format!("ok: {what}")
            } else {
                format!("{violations} violation(s): {what}")
            },
        });
    }

    /// A report a person reads.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{} {:<28} {}\n",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out.push_str(if self.passed() {
            "audit passed: every invariant holds\n"
        } else {
            "audit FAILED\n"
        });
        out
    }
}

async fn count(db: &PgPool, sql: &str) -> Result<i64, AuditError> {
    Ok(sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .map_err(crate::store::StoreError::from)?)
}

/// Checks PostgreSQL and Redis. With `settings`, also reads the stats topic.
pub async fn audit(
    db: &PgPool,
    counters: &Counters,
    settings: Option<&Settings>,
) -> Result<AuditReport, AuditError> {
    let mut r = AuditReport::default();
    r.add(
        "coupon issued <= stock",
        count(
            db,
            "SELECT count(*) FROM coupons WHERE issued > total_quantity",
        )
        .await?,
        "no coupon issued beyond its total quantity",
    );
    r.add(
        "coupon issued = rows",
        count(db, "SELECT count(*) FROM coupons c WHERE c.issued <> (SELECT count(*) FROM user_coupons uc WHERE uc.coupon_id = c.id)").await?,
        "every coupon's issued count equals its issued rows",
    );
    r.add(
        "one coupon per user",
        count(db, "SELECT count(*) FROM (SELECT 1 FROM user_coupons GROUP BY user_id, coupon_id HAVING count(*) > 1) d").await?,
        "no user holds the same coupon twice",
    );
    r.add(
        "balance >= 0",
        count(db, "SELECT count(*) FROM users WHERE balance < 0").await?,
        "no negative balance",
    );
    r.add(
        "balance = sum(history)",
        count(db, "SELECT count(*) FROM users u LEFT JOIN (SELECT user_id, sum(amount) AS total FROM balance_history GROUP BY user_id) h ON h.user_id = u.id WHERE u.balance <> COALESCE(h.total, 0)").await?,
        "every balance equals the sum of its history",
    );
    r.add(
        "product stock >= 0",
        count(db, "SELECT count(*) FROM products WHERE stock < 0").await?,
        "no product oversold",
    );
    r.add(
        "order amounts add up",
        count(db, "SELECT count(*) FROM orders o WHERE o.paid_amount <> o.total_amount - o.discount_amount").await?,
        "every order pays total minus discount",
    );
    // Stored results and published outbox rows are kept for the retention
    // window only (`worker.retention_hours`); effects older than that (with an
    // hour's margin) are no longer matched against them.
    let retention_hours = settings
        .map(|s| s.worker.retention_hours)
        .unwrap_or_else(|| crate::config::WorkerSettings::default().retention_hours);
    let recent = format!(
        "now() - interval '{} hours'",
        retention_hours.saturating_sub(1)
    );
    r.add(
        "one result per request",
        count(db, &format!("SELECT (SELECT count(*) FROM orders o WHERE o.ordered_at > {recent} AND NOT EXISTS (SELECT 1 FROM processed_requests p WHERE p.request_id = o.request_id AND p.status = 'succeeded'))
                        + (SELECT count(*) FROM user_coupons uc WHERE uc.issued_at > {recent} AND NOT EXISTS (SELECT 1 FROM processed_requests p WHERE p.request_id = uc.request_id AND p.status = 'succeeded'))
                        + (SELECT count(*) FROM balance_history h WHERE h.kind = 'charge' AND h.created_at > {recent} AND NOT EXISTS (SELECT 1 FROM processed_requests p WHERE p.request_id = h.request_id AND p.status = 'succeeded'))
                        + (SELECT count(*) FROM processed_requests p WHERE p.status = 'succeeded' AND p.kind = 'order' AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.request_id = p.request_id))
                        + (SELECT count(*) FROM processed_requests p WHERE p.status = 'succeeded' AND p.kind = 'coupon' AND NOT EXISTS (SELECT 1 FROM user_coupons uc WHERE uc.request_id = p.request_id))")).await?,
        "every effect has exactly one stored succeeded result, and every succeeded result its effect",
    );
    r.add(
        "coupon used once",
        count(db, "SELECT count(*) FROM (SELECT coupon_id FROM orders o WHERE o.coupon_applied GROUP BY user_id, coupon_id HAVING count(*) > 1) d").await?,
        "no coupon discounted two orders",
    );
    r.add(
        "one stats event per order",
        count(db, &format!("SELECT (SELECT count(*) FROM orders o WHERE o.ordered_at > {recent} AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.id))
                        + (SELECT count(*) FROM outbox x WHERE x.order_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = x.order_id))")).await?,
        "every paid order queued exactly one stats event",
    );

    let mut redis_drift = 0i64;
    for coupon in coupons::all(db).await? {
        if let Some(stock) = counters
            .coupon_stock_total(coupon.id, coupon.shards())
            .await?
        {
            if stock != coupon.left() {
                redis_drift += 1;
            }
        }
    }
    r.add(
        "redis coupon stock",
        redis_drift,
        "Redis coupon stock (summed over a split coupon's sub-counters) equals PostgreSQL's total - issued (when idle)",
    );
    let mut product_drift = 0i64;
    for (id, stock) in products::all_stock(db).await? {
        if let Some(available) = counters.product_stock(id).await? {
            if available != stock {
                product_drift += 1;
            }
        }
    }
    r.add(
        "redis product stock",
        product_drift,
        "Redis product stock equals PostgreSQL's (when idle)",
    );

    if let Some(settings) = settings {
        let pending = count(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await?;
        let events = stats_events_per_order(settings)
            .await
            .map_err(|e| AuditError::StatsTopic(crate::telemetry::error_chain(&e)))?;
        let paid: std::collections::HashSet<i64> = sqlx::query_scalar("SELECT o.id FROM orders o JOIN outbox x ON x.order_id = o.id WHERE x.published_at IS NOT NULL")
            .fetch_all(db)
            .await
            .map_err(crate::store::StoreError::from)?
            .into_iter()
            .collect();
        let wrong = paid
            .iter()
            .filter(|id| events.get(id).copied().unwrap_or(0) != 1)
            .count() as i64;
        let strays = events.keys().filter(|id| !paid.contains(id)).count() as i64;
        r.add("stats topic", wrong + strays, &format!("every published order has exactly one event on the stats topic ({} events, {pending} still queued)", events.values().sum::<i64>()));
    }
    Ok(r)
}

/// How many events the stats topic holds per order id.
pub async fn stats_events_per_order(
    settings: &Settings,
) -> Result<HashMap<i64, i64>, rdkafka::error::KafkaError> {
    let topic = Topics::new(settings.kafka.topic_prefix.clone()).stats();
    let consumer = reader(
        &settings.kafka,
        &format!("{}.audit", settings.kafka.group_id),
    )?;
    tokio::task::spawn_blocking(move || {
        let mut counts = HashMap::new();
        read_to_end(
            &consumer,
            &topic,
            &Start::Earliest,
            Duration::from_secs(120),
            |message| {
                let order = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v.get("order_id").and_then(|o| o.as_i64()));
                if let Some(id) = order {
                    *counts.entry(id).or_insert(0) += 1;
                }
            },
        )?;
        Ok(counts)
    })
    .await
    .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
}
