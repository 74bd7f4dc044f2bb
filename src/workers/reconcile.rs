//! Rebuilds Redis counter state from PostgreSQL, the source of truth.
//!
//! Workers load what Redis is missing (at start, and whenever a script finds a
//! coupon or product unloaded, e.g. after Redis restarted empty); `stampede
//! reconcile` forces every counter back to PostgreSQL's figures and reports
//! the drift it found. Loading never oversells: it writes PostgreSQL's
//! remaining stock minus what pending (not yet committed) requests hold, and
//! PostgreSQL's own checks reject anything Redis still gets wrong.

use serde::Serialize;
use sqlx::PgPool;

use super::WorkerError;
use crate::counters::{Counters, LoadOutcome};
use crate::store::{coupons, products};
use crate::telemetry::metrics;

/// What reconciling one coupon found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CouponReport {
    pub coupon_id: i64,
    /// Units Redis handed out before, `None` when it held nothing.
    pub redis_before: Option<i64>,
    /// Units left per PostgreSQL (total - issued).
    pub left: i64,
    pub loaded: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub coupons: Vec<CouponReport>,
    pub products: i64,
    pub products_written: i64,
    /// Σ |Redis − PostgreSQL| over forced products.
    pub product_drift: i64,
}

impl ReconcileReport {
    /// Σ |Redis − PostgreSQL| over coupons that Redis held.
    pub fn coupon_drift(&self) -> i64 {
        self.coupons
            .iter()
            .filter_map(|c| c.redis_before.map(|b| (b - c.left).abs()))
            .sum()
    }
}

/// Loads one coupon; `Ok(None)` when it does not exist in PostgreSQL.
pub async fn load_coupon(
    db: &PgPool,
    counters: &Counters,
    coupon_id: i64,
    force: bool,
) -> Result<Option<CouponReport>, WorkerError> {
    let Some(row) = coupons::get(db, coupon_id).await? else {
        return Ok(None);
    };
    let holders = coupons::holders(db, coupon_id).await?;
    let outcome = counters
        .load_coupon(coupon_id, row.left(), &holders, force)
        .await?;
    let report = match outcome {
        LoadOutcome::AlreadyLoaded => CouponReport {
            coupon_id,
            redis_before: None,
            left: row.left(),
            loaded: false,
        },
        LoadOutcome::Loaded { previous } => {
            tracing::info!(
                coupon_id,
                left = row.left(),
                ?previous,
                force,
                "coupon counter loaded from PostgreSQL"
            );
            if let Some(before) = previous {
                metrics::drift("coupon", (before - row.left()).abs());
            }
            CouponReport {
                coupon_id,
                redis_before: previous,
                left: row.left(),
                loaded: true,
            }
        }
    };
    Ok(Some(report))
}

/// Loads every product; returns (products, written, drift).
pub async fn load_products(
    db: &PgPool,
    counters: &Counters,
    force: bool,
) -> Result<(i64, i64, i64), WorkerError> {
    let stock = products::all_stock(db).await?;
    let mut written = 0;
    let mut drift = 0;
    for chunk in stock.chunks(5_000) {
        let (w, d) = counters.load_products(chunk, force).await?;
        written += w;
        drift += d;
    }
    if force {
        metrics::drift("product", drift);
    }
    Ok((stock.len() as i64, written, drift))
}

/// Loads the given products only if Redis lacks them.
pub async fn load_missing_products(
    db: &PgPool,
    counters: &Counters,
    ids: &[i64],
) -> Result<(), WorkerError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT id, stock FROM products WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await
        .map_err(crate::store::StoreError::from)?;
    counters.load_products(&rows, false).await?;
    Ok(())
}

/// Every coupon and product: loaded where missing, or forced to PostgreSQL's figures.
pub async fn reconcile_all(
    db: &PgPool,
    counters: &Counters,
    force: bool,
) -> Result<ReconcileReport, WorkerError> {
    let mut report = ReconcileReport::default();
    for coupon in coupons::all(db).await? {
        if let Some(r) = load_coupon(db, counters, coupon.id, force).await? {
            report.coupons.push(r);
        }
    }
    let (products, written, drift) = load_products(db, counters, force).await?;
    report.products = products;
    report.products_written = written;
    report.product_drift = drift;
    Ok(report)
}
