//! Rebuilds Redis counter state from PostgreSQL, the source of truth.
//!
//! Workers load what Redis is missing (at start, and whenever a script finds a
//! coupon or product unloaded, e.g. after Redis restarted empty); `stampede
//! reconcile` forces every counter back to PostgreSQL's figures and reports
//! the drift it found. Loading never oversells: it writes PostgreSQL's
//! remaining stock minus what pending (not yet committed) requests hold, and
//! PostgreSQL's own checks reject anything Redis still gets wrong.
//!
//! "Pending" is decided by PostgreSQL, not by what Redis happens to hold: a
//! grant or hold whose request already has a stored result is spent (its
//! clean-up after commit failed, Redis came back from an older snapshot, or
//! the request id was used on another topic) and is deleted, never
//! subtracted again. A reload holds the row locks of what it loads, the same
//! locks an issuing or ordering batch takes to commit, so no batch commits
//! between reading PostgreSQL's figures and writing Redis's.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::counters::{CounterError, Counters, CouponShard, LoadOutcome};
use crate::domain::{self, coupon::home_shard};
use crate::store::coupons::CouponRow;
use crate::store::{counter_source, coupons, processed, products, StoreError};
use crate::telemetry::metrics;

/// Why a reload could not finish; every cause is the store's or Redis's.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Counters(#[from] CounterError),
}

impl ReconcileError {
    /// Whether trying again can succeed (a dependency was unreachable).
    pub fn is_retryable(&self) -> bool {
        match self {
            ReconcileError::Store(e) => e.is_retryable(),
            ReconcileError::Counters(e) => e.is_retryable(),
        }
    }
}

/// What reconciling one coupon found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CouponReport {
    pub coupon_id: i64,
    /// Redis sub-counters its stock is split over (1: kept whole).
    pub shards: u32,
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
///
/// A coupon split over several sub-counters is loaded as a whole: its
/// remaining stock is dealt over them evenly (each keeps its own pending
/// grants and the holders whose home it is), and when any sub-counter is
/// missing every one is reloaded, since one part's share only follows from
/// all of them.
pub async fn load_coupon(
    db: &PgPool,
    counters: &Counters,
    coupon_id: i64,
    force: bool,
) -> Result<Option<CouponReport>, ReconcileError> {
    let mut tx = db.begin().await.map_err(StoreError::from)?;
    let Some(row) = coupons::lock_one(&mut tx, coupon_id).await? else {
        return Ok(None);
    };
    let report = load_locked_coupon(&mut tx, counters, &row, force).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Some(report))
}

/// [`load_coupon`] for a coupon whose row lock `conn` holds.
async fn load_locked_coupon(
    conn: &mut PgConnection,
    counters: &Counters,
    row: &CouponRow,
    mut force: bool,
) -> Result<CouponReport, ReconcileError> {
    let shards = row.shards();
    let unloaded = CouponReport {
        coupon_id: row.id,
        shards,
        redis_before: None,
        left: row.left(),
        loaded: false,
    };
    // One sub-counter missing means all are dealt again.
    if !force && shards > 1 {
        if !any_shard_missing(counters, row.id, shards).await? {
            return Ok(unloaded);
        }
        force = true;
    }
    let homes = holders_by_home(conn, row.id, shards).await?;
    let mut previous_total: Option<i64> = None;
    let mut carry = 0;
    let mut spent = 0;
    let mut loaded = false;
    for ((shard, share), holders) in CouponShard::all(row.id, shards)
        .zip(domain::coupon::shares(row.left(), shards))
        .zip(&homes)
    {
        let grants = counters.grant_ids(shard).await?;
        let decided = processed::decided(&mut *conn, &grants).await?;
        spent += decided.len();
        match counters
            .load_coupon(shard, share - carry, &decided, holders, force)
            .await?
        {
            LoadOutcome::AlreadyLoaded => {}
            LoadOutcome::Loaded { previous, pending } => {
                loaded = true;
                carry = domain::coupon::settle_share(share - carry, pending).1;
                if let Some(p) = previous {
                    previous_total = Some(previous_total.unwrap_or(0) + p);
                }
            }
        }
    }
    take_back(counters, row.id, shards, carry).await?;
    if spent > 0 {
        tracing::info!(
            coupon_id = row.id,
            spent,
            "grants of requests already decided were dropped from Redis"
        );
    }
    if !loaded {
        return Ok(unloaded);
    }
    tracing::info!(
        coupon_id = row.id,
        shards,
        left = row.left(),
        previous = ?previous_total,
        force,
        "coupon counter loaded from PostgreSQL"
    );
    if let Some(before) = previous_total {
        metrics::drift("coupon", (before - row.left()).abs());
    }
    Ok(CouponReport {
        redis_before: previous_total,
        loaded: true,
        ..unloaded
    })
}

async fn any_shard_missing(
    counters: &Counters,
    coupon_id: i64,
    shards: u32,
) -> Result<bool, ReconcileError> {
    for shard in CouponShard::all(coupon_id, shards) {
        if counters.coupon_stock(shard).await?.is_none() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The coupon's holders per PostgreSQL, by the sub-counter each is homed on.
async fn holders_by_home(
    conn: &mut PgConnection,
    coupon_id: i64,
    shards: u32,
) -> Result<Vec<Vec<i64>>, ReconcileError> {
    let mut homes: Vec<Vec<i64>> = vec![Vec::new(); shards as usize];
    for user in coupons::holders(&mut *conn, coupon_id).await? {
        homes[home_shard(user, shards) as usize].push(user);
    }
    Ok(homes)
}

/// Pending grants of the last sub-counters that the stock dealt to them
/// could not cover (`carry` units) come out of the stock written to the
/// others.
async fn take_back(
    counters: &Counters,
    coupon_id: i64,
    shards: u32,
    mut carry: i64,
) -> Result<(), ReconcileError> {
    for shard in CouponShard::all(coupon_id, shards) {
        if carry <= 0 {
            break;
        }
        carry -= counters.take_stock(shard, carry).await?;
    }
    Ok(())
}

/// Reloads a split coupon whose sub-counters together hold less than
/// PostgreSQL has left: units taken from one sub-counter for another by a
/// process that died before adding them (see the coupon worker's hand-over)
/// are otherwise missing until the next reload. Called when every
/// sub-counter answered sold out; returns whether it reloaded.
pub async fn repair_if_short(
    db: &PgPool,
    counters: &Counters,
    coupon_id: i64,
) -> Result<bool, ReconcileError> {
    let mut tx = db.begin().await.map_err(StoreError::from)?;
    let Some(row) = coupons::lock_one(&mut tx, coupon_id).await? else {
        return Ok(false);
    };
    if row.shards() <= 1 {
        return Ok(false);
    }
    let mut held = 0;
    for shard in CouponShard::all(row.id, row.shards()) {
        held += counters.coupon_stock(shard).await?.unwrap_or(0);
        held += counters.grant_count(shard).await?;
    }
    let short = held < row.left();
    if short {
        tracing::warn!(
            coupon_id,
            held,
            left = row.left(),
            "the sub-counters of a split coupon hold less than PostgreSQL has left: reloading it"
        );
        load_locked_coupon(&mut tx, counters, &row, true).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(short)
}

/// Loads every product; returns (products, written, drift).
pub async fn load_products(
    db: &PgPool,
    counters: &Counters,
    force: bool,
) -> Result<(i64, i64, i64), ReconcileError> {
    let mut tx = db.begin().await.map_err(StoreError::from)?;
    let (count, written, drift) = load_locked_products(&mut tx, counters, None, force).await?;
    tx.commit().await.map_err(StoreError::from)?;
    if force {
        metrics::drift("product", drift);
    }
    Ok((count, written, drift))
}

/// Loads the given products only if Redis lacks them.
pub async fn load_missing_products(
    db: &PgPool,
    counters: &Counters,
    ids: &[i64],
) -> Result<(), ReconcileError> {
    let mut tx = db.begin().await.map_err(StoreError::from)?;
    load_locked_products(&mut tx, counters, Some(ids), false).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// [`load_missing_products`] inside an order batch's transaction, which
/// holds the products' row locks already.
pub async fn load_missing_products_in(
    batch: &mut PgConnection,
    counters: &Counters,
    ids: &[i64],
) -> Result<(), ReconcileError> {
    load_locked_products(batch, counters, Some(ids), false).await?;
    Ok(())
}

async fn load_locked_products(
    conn: &mut PgConnection,
    counters: &Counters,
    ids: Option<&[i64]>,
    force: bool,
) -> Result<(i64, i64, i64), ReconcileError> {
    let stock = products::lock_stock(conn, ids).await?;
    let holds = counters.hold_ids().await?;
    let decided = processed::decided(conn, &holds).await?;
    let mut written = 0;
    let mut drift = 0;
    // The first call drops the decided holds; later chunks need not repeat them.
    let mut spent: &[String] = &decided;
    for chunk in stock.chunks(5_000) {
        let (w, d) = counters.load_products(chunk, spent, force).await?;
        spent = &[];
        written += w;
        drift += d;
    }
    Ok((stock.len() as i64, written, drift))
}

/// Reloads every counter when Redis is not the server whose counters were
/// last loaded from PostgreSQL: a Redis restarted, restored from an older
/// snapshot or failed over to a replica holds figures from another time
/// (stock sold since comes back, holders vanish), which no per-key check
/// notices. The server last loaded is recorded in PostgreSQL, so a process
/// started after such a change notices it too. Called by the coupon and
/// order workers before each batch and, between batches, by their watch of
/// the server ([`crate::workers::counter_watch`]); costs one `INFO` when
/// nothing changed. Returns whether it reloaded.
pub async fn reload_if_redis_replaced(
    db: &PgPool,
    counters: &Counters,
) -> Result<bool, ReconcileError> {
    let Some(server) = counters.server_id().await? else {
        return Ok(false);
    };
    if counters.known_server().as_deref() == Some(server.as_str()) {
        return Ok(false);
    }
    let _gate = counters.reload_gate().await;
    // Another task of this process may have reloaded it meanwhile.
    if counters.known_server().as_deref() == Some(server.as_str()) {
        return Ok(false);
    }
    let recorded = counter_source::recorded(db).await?;
    let replaced = recorded.as_deref() != Some(server.as_str());
    if replaced {
        tracing::warn!(
            redis_run_id = %server,
            previous = recorded.as_deref().unwrap_or("none"),
            "Redis is not the server the counters were loaded into (restarted, restored from a snapshot, failed over): reloading every counter from PostgreSQL"
        );
        reconcile_all(db, counters, true).await?;
        counter_source::record(db, &server).await?;
    }
    counters.remember_server(server);
    Ok(replaced)
}

/// Every coupon and product: loaded where missing, or forced to PostgreSQL's figures.
pub async fn reconcile_all(
    db: &PgPool,
    counters: &Counters,
    force: bool,
) -> Result<ReconcileReport, ReconcileError> {
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
