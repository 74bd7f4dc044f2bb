//! `stampede seed`: bulk test data — users with a balance, products with
//! stock, first-come coupons — created in PostgreSQL with set-based
//! statements and loaded into Redis.

use chrono::{Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::counters::Counters;
use crate::domain::coupon::Discount;
use crate::domain::messages::{CouponSpec, ProductSpec};
use crate::reconcile::{self, ReconcileError};
use crate::store::{coupons, products, users};

/// What to create. Zero counts create nothing of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPlan {
    pub users: i64,
    pub first_user_id: i64,
    pub balance: i64,
    pub products: i64,
    pub first_product_id: i64,
    pub price: i64,
    pub stock: i64,
    pub coupons: i64,
    pub first_coupon_id: i64,
    pub coupon_stock: i64,
    pub discount: Discount,
    pub coupon_valid_days: i64,
}

impl Default for SeedPlan {
    fn default() -> Self {
        Self {
            users: 0,
            first_user_id: 1,
            balance: 50_000,
            products: 0,
            first_product_id: 1,
            price: 10_000,
            stock: 100,
            coupons: 0,
            first_coupon_id: 1,
            coupon_stock: 1_000,
            discount: Discount::Fixed { amount: 1_000 },
            coupon_valid_days: 30,
        }
    }
}

/// The farthest `--coupon-valid-days` reaches, either way (a negative
/// count makes coupons that have already expired).
pub const MOST_VALID_DAYS: i64 = 36_500;

impl SeedPlan {
    /// Why the plan cannot be carried out as asked, if it cannot: ids past
    /// the largest an id can be, an expiry beyond a century, or a product or
    /// coupon the admin API would refuse.
    pub fn check(&self) -> Result<(), String> {
        for (what, first, count) in [
            ("users", self.first_user_id, self.users),
            ("products", self.first_product_id, self.products),
            ("coupons", self.first_coupon_id, self.coupons),
        ] {
            if count > 0 && last_id(first, count).is_none() {
                return Err(format!(
                    "{count} {what} from id {first} would pass the largest id, {}",
                    i64::MAX
                ));
            }
        }
        if self.products > 0 {
            self.product(self.first_product_id).validate()?;
        }
        if self.coupons > 0 {
            if self.coupon_valid_days.unsigned_abs() > MOST_VALID_DAYS.unsigned_abs() {
                return Err(format!(
                    "coupons must expire within {MOST_VALID_DAYS} days either way, got {}",
                    self.coupon_valid_days
                ));
            }
            self.coupon(self.first_coupon_id).validate()?;
        }
        Ok(())
    }

    fn product(&self, id: i64) -> ProductSpec {
        ProductSpec {
            name: format!("product-{id}"),
            price: self.price,
            stock: self.stock,
        }
    }

    /// Coupon `id` of the plan; its `coupon_valid_days` must have passed [`SeedPlan::check`].
    fn coupon(&self, id: i64) -> CouponSpec {
        CouponSpec {
            name: format!("coupon-{id}"),
            discount: self.discount,
            total_quantity: self.coupon_stock,
            expires_at: Utc::now() + Duration::days(self.coupon_valid_days),
            shards: 1,
        }
    }
}

/// The last of `count` ids from `first`, if it is an id.
fn last_id(first: i64, count: i64) -> Option<i64> {
    first.checked_add(count.checked_sub(1)?)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    pub users_created: u64,
    pub products_created: u64,
    pub coupons_created: Vec<i64>,
    pub coupons_existing: Vec<i64>,
}

/// Most rows one statement of a seed writes: a fraction of a second each,
/// so a seed of millions shows its progress as it goes and no statement
/// runs long (each chunk is its own transaction; a seed stopped midway
/// keeps what it wrote, and run again creates the rest).
pub const CHUNK: i64 = 50_000;

/// `count` ids from `first` as chunks of at most [`CHUNK`]: (first id,
/// how many). The plan's check keeps the last id an id.
fn chunks(first: i64, count: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..count)
        .step_by(CHUNK as usize)
        .map(move |offset| (first + offset, CHUNK.min(count - offset)))
}

/// How far a seed has come: a bar on a terminal, else a log line per
/// chunk.
pub struct Progress {
    bar: indicatif::ProgressBar,
    /// Whether to log, the bar being drawn nowhere.
    log: bool,
}

impl Progress {
    /// Counts every row `plan` creates, on standard error.
    pub fn of(plan: &SeedPlan) -> Self {
        let bar = indicatif::ProgressBar::new((plan.users + plan.products + plan.coupons) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} rows ({per_sec}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let log = bar.is_hidden();
        Self { bar, log }
    }

    /// Shows nothing (loadgen's setup has its own).
    pub fn silent() -> Self {
        Self {
            bar: indicatif::ProgressBar::hidden(),
            log: false,
        }
    }

    /// `rows` more of `what` written, `done` of `of` in all.
    fn advance(&self, what: &'static str, rows: i64, done: i64, of: i64) {
        self.bar.set_message(what);
        self.bar.inc(rows as u64);
        if self.log && (done % CHUNK == 0 || done == of) {
            tracing::info!(done, of, "seeding {what}");
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Creates users `first..first+count` with `balance` each, a chunk at a
/// time; returns how many were new.
pub async fn users(
    db: &PgPool,
    (first, count): (i64, i64),
    balance: i64,
    progress: &Progress,
) -> Result<u64, ReconcileError> {
    let mut created = 0;
    for (from, n) in chunks(first, count) {
        created += users::seed(db, from, n, balance).await?;
        progress.advance("users", n, from - first + n, count);
    }
    Ok(created)
}

/// Creates products `first..first+count` at `price` with `stock` each and
/// loads the new ones' stock into Redis, a chunk at a time; returns how
/// many were new.
pub async fn products(
    db: &PgPool,
    counters: &Counters,
    (first, count): (i64, i64),
    (price, stock): (i64, i64),
    progress: &Progress,
) -> Result<u64, ReconcileError> {
    let mut created = 0;
    for (from, n) in chunks(first, count) {
        created += products::seed(db, from, n, price, stock).await?;
        let ids: Vec<i64> = (from..=from + (n - 1)).collect();
        reconcile::load_missing_products(db, counters, &ids).await?;
        progress.advance("products", n, from - first + n, count);
    }
    Ok(created)
}

/// Carries out a plan that passed [`SeedPlan::check`].
pub async fn seed(
    db: &PgPool,
    counters: &Counters,
    plan: &SeedPlan,
    progress: &Progress,
) -> Result<SeedReport, ReconcileError> {
    let mut report = SeedReport {
        users_created: users(db, (plan.first_user_id, plan.users), plan.balance, progress).await?,
        products_created: products(
            db,
            counters,
            (plan.first_product_id, plan.products),
            (plan.price, plan.stock),
            progress,
        )
        .await?,
        ..SeedReport::default()
    };
    for offset in 0..plan.coupons {
        let id = plan.first_coupon_id + offset;
        match coupons::create(db, Some(id), &plan.coupon(id)).await {
            Ok(_) => {
                reconcile::load_coupon(db, counters, id, true).await?;
                report.coupons_created.push(id);
            }
            Err(crate::store::StoreError::Conflict(_)) => report.coupons_existing.push(id),
            Err(e) => return Err(e.into()),
        }
        progress.advance("coupons", 1, offset + 1, plan.coupons);
    }
    progress.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_id_once_up_to_the_largest() {
        assert_eq!(chunks(1, 0).count(), 0);
        assert_eq!(chunks(5, 3).collect::<Vec<_>>(), vec![(5, 3)]);
        assert_eq!(
            chunks(1, 2 * CHUNK + 1).collect::<Vec<_>>(),
            vec![(1, CHUNK), (1 + CHUNK, CHUNK), (1 + 2 * CHUNK, 1)]
        );
        let first = i64::MAX - CHUNK;
        assert_eq!(
            chunks(first, CHUNK + 1).collect::<Vec<_>>(),
            vec![(first, CHUNK), (i64::MAX, 1)]
        );
    }

    #[test]
    fn a_plan_is_refused_when_its_ids_or_expiry_do_not_fit() {
        let plan = |f: fn(&mut SeedPlan)| {
            let mut p = SeedPlan {
                users: 1,
                products: 1,
                coupons: 1,
                ..SeedPlan::default()
            };
            f(&mut p);
            p.check()
        };
        assert_eq!(plan(|_| {}), Ok(()));
        assert_eq!(plan(|p| p.first_user_id = i64::MAX), Ok(()));
        let past = plan(|p| {
            p.users = 2;
            p.first_user_id = i64::MAX;
        });
        assert!(past
            .unwrap_err()
            .contains("2 users from id 9223372036854775807"));
        assert!(plan(|p| {
            p.products = 11;
            p.first_product_id = i64::MAX - 9;
        })
        .is_err());
        assert!(plan(|p| p.first_coupon_id = i64::MAX).is_ok());
        assert!(plan(|p| p.coupon_valid_days = -MOST_VALID_DAYS).is_ok());
        assert!(plan(|p| p.coupon_valid_days = MOST_VALID_DAYS + 1).is_err());
        assert!(plan(|p| p.coupon_valid_days = i64::MIN).is_err());
        // What the admin API refuses, seed refuses too.
        assert!(plan(|p| p.price = crate::domain::messages::MAX_PRICE + 1).is_err());
        assert!(plan(|p| p.discount = Discount::Percent { percent: 0 }).is_err());
        // Nothing of a kind asked for: its first id does not matter.
        assert_eq!(
            plan(|p| {
                p.users = 0;
                p.first_user_id = i64::MAX;
                p.coupons = 0;
                p.coupon_valid_days = i64::MAX;
            }),
            Ok(())
        );
    }
}
