//! The ledger's upkeep: `stampede migrate`, `reconcile` (Redis rebuilt from
//! PostgreSQL) and `audit` (every invariant checked).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::counters::Counters;
use crate::{audit, reconcile, store};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only load what Redis is missing; leave loaded counters alone.
    #[arg(long)]
    pub missing_only: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip reading the stats topic. Published stats events are counted
    /// only there (the outbox keeps just the queued ones), so without it the
    /// audit cannot tell whether each paid order's event was published once.
    #[arg(long)]
    pub no_topics: bool,
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let applied = store::migrate(&settings.database)
        .await
        .context("migration failed")?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        println!("applied {} migration(s): {applied:?}", applied.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(args: ReconcileArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let db = store::connect(&settings.database).await?;
    let counters = Counters::connect(&settings.redis).await?;
    let report = reconcile::reconcile_all(&db, &counters, !args.missing_only).await?;
    for c in &report.coupons {
        println!(
            "coupon {:>8}: redis had {:>10}, postgres says {:>10} left{}",
            c.coupon_id,
            c.redis_before
                .map_or("nothing".to_owned(), |v| v.to_string()),
            c.left,
            if c.loaded { "" } else { " (left alone)" }
        );
    }
    println!(
        "products: {} in postgres, {} written to redis, drift {} units",
        report.products, report.products_written, report.product_drift
    );
    println!("coupon drift: {} units", report.coupon_drift());
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(args: AuditArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let db = store::connect(&settings.database).await?;
    let counters = Counters::connect(&settings.redis).await?;
    let report = audit::audit(&db, &counters, (!args.no_topics).then_some(settings)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
