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
use crate::store::ledger::{self, Invariant};
use crate::store::StoreError;
use crate::store::{coupons, orders, products};

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

impl AuditError {
    /// Whether running the audit again can succeed: PostgreSQL, Redis or
    /// the brokers did not answer (paused, restarting, failing over).
    pub fn is_retryable(&self) -> bool {
        match self {
            AuditError::Store(e) => e.is_retryable(),
            AuditError::Counters(e) => e.is_retryable(),
            AuditError::StatsTopic(_) => true,
        }
    }
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

/// What each ledger invariant is called in the report, and what it promises.
fn describe(invariant: Invariant) -> (&'static str, &'static str) {
    match invariant {
        Invariant::IssuedWithinStock => (
            "coupon issued <= stock",
            "no coupon issued beyond its total quantity",
        ),
        Invariant::IssuedMatchesRows => (
            "coupon issued = rows",
            "every coupon's issued count equals its issued rows",
        ),
        Invariant::OneCouponPerUser => ("one coupon per user", "no user holds the same coupon twice"),
        Invariant::BalanceNotNegative => ("balance >= 0", "no negative balance"),
        Invariant::BalanceIsHistory => (
            "balance = sum(history)",
            "every balance equals the sum of its history",
        ),
        Invariant::ProductStockNotNegative => ("product stock >= 0", "no product oversold"),
        Invariant::OrderAmountsAddUp => (
            "order amounts add up",
            "every order pays total minus discount",
        ),
        Invariant::OneResultPerRequest => (
            "one result per request",
            "every effect has exactly one stored succeeded result, and every succeeded result its effect",
        ),
        Invariant::CouponUsedOnce => ("coupon used once", "no coupon discounted two orders"),
        Invariant::OneStatsEventPerOrder => (
            "one stats event per order",
            "every stats event still queued names a paid order, and no order has two (published ones are counted on the stats topic)",
        ),
        Invariant::ReferencesExist => (
            "references exist",
            "no history row, order, order item or issued coupon names a user, product, coupon or order that is not there",
        ),
    }
}

/// Checks PostgreSQL and Redis. With `settings`, also reads the stats topic.
pub async fn audit(
    db: &PgPool,
    counters: &Counters,
    settings: Option<&Settings>,
) -> Result<AuditReport, AuditError> {
    let mut r = AuditReport::default();
    // Stored results and published outbox rows are kept for the retention
    // window only (`worker.retention_hours`).
    let retention_hours = settings
        .map(|s| s.worker.retention_hours)
        .unwrap_or_else(|| crate::config::WorkerSettings::default().retention_hours);
    for invariant in Invariant::ALL {
        let (name, what) = describe(invariant);
        r.add(
            name,
            ledger::violations(db, invariant, retention_hours).await?,
            what,
        );
    }
    audit_redis(db, counters, &mut r).await?;
    if let Some(settings) = settings {
        audit_stats_topic(db, settings, retention_hours, &mut r).await?;
    }
    Ok(r)
}

/// [`audit`], run again while it fails only because a dependency does not
/// answer (paused, restarting; a connection broken by the fault reconnects on
/// the next call), for up to `patience`; then the last error.
pub async fn audit_when_reachable(
    db: &PgPool,
    counters: &Counters,
    settings: Option<&Settings>,
    patience: std::time::Duration,
) -> Result<AuditReport, AuditError> {
    let deadline = std::time::Instant::now() + patience;
    let mut told = false;
    loop {
        match audit(db, counters, settings).await {
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                if !told {
                    tracing::warn!(
                        error = %crate::telemetry::error_chain(&e),
                        "the audit waits for PostgreSQL, Redis and the brokers to answer"
                    );
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Redis's counters against PostgreSQL's figures (meaningful when idle). A
/// counter that is not a number is a violation the check names, not a
/// reason the audit cannot run.
async fn audit_redis(
    db: &PgPool,
    counters: &Counters,
    r: &mut AuditReport,
) -> Result<(), AuditError> {
    let mut drift = Drift::default();
    for coupon in coupons::all(db).await? {
        let read = counters
            .coupon_stock_total(coupon.id, coupon.shards())
            .await;
        drift.compare(format!("coupon {}", coupon.id), read, coupon.left())?;
    }
    drift.report(
        r,
        "redis coupon stock",
        "Redis coupon stock (summed over a split coupon's sub-counters) equals PostgreSQL's total - issued (when idle)",
    );
    let mut drift = Drift::default();
    for (id, stock) in products::all_stock(db).await? {
        let read = counters.product_stock(id).await;
        drift.compare(format!("product {id}"), read, stock)?;
    }
    drift.report(
        r,
        "redis product stock",
        "Redis product stock equals PostgreSQL's (when idle)",
    );
    Ok(())
}

/// Counters that differ from PostgreSQL's figures, and those Redis holds
/// that are not numbers.
#[derive(Default)]
struct Drift {
    differing: i64,
    unreadable: Vec<String>,
}

impl Drift {
    /// One counter as read (`None`: not loaded, nothing to compare) against
    /// PostgreSQL's `want`. A counter that is not a number is noted; any
    /// other error (Redis unreachable) stops the audit.
    fn compare(
        &mut self,
        what: String,
        read: Result<Option<i64>, CounterError>,
        want: i64,
    ) -> Result<(), AuditError> {
        match read {
            Ok(Some(left)) if left != want => self.differing += 1,
            Ok(_) => {}
            Err(e) if !e.is_not_a_number() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(counter = %what, error = %crate::telemetry::error_chain(&e), "a counter Redis holds is not a number");
                self.unreadable.push(what);
            }
        }
        Ok(())
    }

    fn report(self, r: &mut AuditReport, name: &'static str, what: &str) {
        let violations = self.differing + self.unreadable.len() as i64;
        if self.unreadable.is_empty() {
            return r.add(name, violations, what);
        }
        let mut named = self.unreadable;
        let more = named.len().saturating_sub(5);
        named.truncate(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        r.add(
            name,
            violations,
            &format!("{what}; not a number in Redis: {}{more}", named.join(", ")),
        );
    }
}

/// Every published order has exactly one event on the stats topic: each
/// order of the retention window that has no event left in the outbox,
/// exactly one; an older order, at most one (the topic may have dropped
/// its event since); an order still queued, none; and no event names an
/// order that does not exist.
async fn audit_stats_topic(
    db: &PgPool,
    settings: &Settings,
    retention_hours: u64,
    r: &mut AuditReport,
) -> Result<(), AuditError> {
    let queued = orders::queued_order_ids(db).await?;
    let events = stats_events_per_order(settings)
        .await
        .map_err(|e| AuditError::StatsTopic(crate::telemetry::error_chain(&e)))?;
    let published = orders::published_order_ids(db, ledger::window_hours(retention_hours)).await?;
    let wrong = published
        .iter()
        .filter(|id| events.get(id).copied().unwrap_or(0) != 1)
        .count() as i64;
    let others: Vec<i64> = events
        .keys()
        .copied()
        .filter(|id| !published.contains(id))
        .collect();
    let existing = orders::existing_order_ids(db, &others).await?;
    let strays = others
        .iter()
        .filter(|id| !existing.contains(id) || queued.contains(id) || events[id] > 1)
        .count() as i64;
    r.add(
        "stats topic",
        wrong + strays,
        &format!(
            "every published order has exactly one event on the stats topic ({} events, {} still queued)",
            events.values().sum::<i64>(),
            queued.len()
        ),
    );
    Ok(())
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
