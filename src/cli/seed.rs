//! `stampede seed`: bulk users, products and coupons for trying stampede out.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::values::{not_negative, positive_id, units};
use crate::config::Settings;
use crate::counters::Counters;
use crate::domain::coupon::Discount;
use crate::seed::{seed, Progress, SeedPlan};
use crate::store;

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Users to create, with ids from --first-user-id.
    #[arg(long, default_value_t = 0, value_parser = not_negative)]
    pub users: i64,
    #[arg(long, default_value_t = 1, value_parser = positive_id)]
    pub first_user_id: i64,
    /// Opening balance of each created user, in KRW.
    #[arg(long, default_value_t = 50_000)]
    pub balance: i64,
    /// Products to create, with ids from --first-product-id.
    #[arg(long, default_value_t = 0, value_parser = not_negative)]
    pub products: i64,
    #[arg(long, default_value_t = 1, value_parser = positive_id)]
    pub first_product_id: i64,
    /// Unit price of each created product, in KRW (0 to 1,000,000,000).
    #[arg(long, default_value_t = 10_000, value_parser = not_negative)]
    pub price: i64,
    /// Stock of each created product.
    #[arg(long, default_value_t = 100, value_parser = units)]
    pub stock: i64,
    /// Coupons to create, with ids from --first-coupon-id.
    #[arg(long, default_value_t = 0, value_parser = not_negative)]
    pub coupons: i64,
    #[arg(long, default_value_t = 1, value_parser = positive_id)]
    pub first_coupon_id: i64,
    /// Units of each created coupon.
    #[arg(long, default_value_t = 1_000, value_parser = units)]
    pub coupon_stock: i64,
    /// Fixed discount in KRW (ignored when --coupon-percent is given).
    #[arg(long, default_value_t = 1_000)]
    pub coupon_amount: i64,
    /// Percent discount (1-100) instead of a fixed one.
    #[arg(long)]
    pub coupon_percent: Option<i64>,
    /// Days until created coupons expire (negative: already expired; at
    /// most 36,500 either way).
    #[arg(long, default_value_t = 30)]
    pub coupon_valid_days: i64,
}

pub async fn run(args: SeedArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let discount = match args.coupon_percent {
        Some(percent) => Discount::Percent { percent },
        None => Discount::Fixed {
            amount: args.coupon_amount,
        },
    };
    if args.balance < 0 || args.balance > settings.rules.max_balance {
        bail!("--balance must be 0 to {}", settings.rules.max_balance);
    }
    let plan = SeedPlan {
        users: args.users,
        first_user_id: args.first_user_id,
        balance: args.balance,
        products: args.products,
        first_product_id: args.first_product_id,
        price: args.price,
        stock: args.stock,
        coupons: args.coupons,
        first_coupon_id: args.first_coupon_id,
        coupon_stock: args.coupon_stock,
        discount,
        coupon_valid_days: args.coupon_valid_days,
    };
    plan.check().map_err(anyhow::Error::msg)?;
    let db = store::connect(&settings.database).await?;
    let counters = Counters::connect(&settings.redis).await?;
    let started = std::time::Instant::now();
    let report = seed(&db, &counters, &plan, &Progress::of(&plan)).await?;
    println!(
        "created {} users, {} products, coupons {:?} (already existed: {:?}) in {:.1}s",
        report.users_created,
        report.products_created,
        report.coupons_created,
        report.coupons_existing,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
