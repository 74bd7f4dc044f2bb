//! `stampede seed`: bulk test data — users with a balance, products with
//! stock, first-come coupons — created in PostgreSQL with set-based
//! statements and loaded into Redis.

use chrono::{Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::counters::Counters;
use crate::domain::coupon::Discount;
use crate::domain::messages::CouponSpec;
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    pub users_created: u64,
    pub products_created: u64,
    pub coupons_created: Vec<i64>,
    pub coupons_existing: Vec<i64>,
}

pub async fn seed(
    db: &PgPool,
    counters: &Counters,
    plan: &SeedPlan,
) -> Result<SeedReport, ReconcileError> {
    let mut report = SeedReport::default();
    if plan.users > 0 {
        report.users_created =
            users::seed(db, plan.first_user_id, plan.users, plan.balance).await?;
    }
    if plan.products > 0 {
        report.products_created = products::seed(
            db,
            plan.first_product_id,
            plan.products,
            plan.price,
            plan.stock,
        )
        .await?;
        let ids: Vec<i64> =
            (plan.first_product_id..plan.first_product_id + plan.products).collect();
        reconcile::load_missing_products(db, counters, &ids).await?;
    }
    for id in plan.first_coupon_id..plan.first_coupon_id + plan.coupons {
        let spec = CouponSpec {
            name: format!("coupon-{id}"),
            discount: plan.discount,
            total_quantity: plan.coupon_stock,
            expires_at: Utc::now() + Duration::days(plan.coupon_valid_days),
            shards: 1,
        };
        match coupons::create(db, Some(id), &spec).await {
            Ok(_) => {
                reconcile::load_coupon(db, counters, id, true).await?;
                report.coupons_created.push(id);
            }
            Err(crate::store::StoreError::Conflict(_)) => report.coupons_existing.push(id),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}
