//! The `stampede` command line. Each subcommand loads settings (defaults →
//! `--config` file → `STAMPEDE_*` environment), then calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

pub mod dlq;
pub mod top;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Roles};
use crate::config::Settings;
use crate::counters::Counters;
use crate::domain::coupon::Discount;
use crate::kafka::admin::{create_topics, TopicOutcome};
use crate::loadgen::{self, LoadgenOptions, Scenario, Via};
use crate::reconcile;
use crate::seed::{seed, SeedPlan};
use crate::workers::WorkerKind;
use crate::{audit, contracts, store, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "stampede",
    version,
    about = "Message-driven commerce backend for coupon drops and flash sales.",
    long_about = "stampede takes balance charges, first-come coupon issues and orders as Kafka messages (directly, or through its HTTP gateway), decides them with Redis atomic counters, records them in PostgreSQL, and answers on result topics.\n\nSettings come from built-in defaults, then the --config TOML file, then STAMPEDE_* environment variables (nested keys joined by __, e.g. STAMPEDE_KAFKA__BROKERS=127.0.0.1:9092)."
)]
pub struct Cli {
    /// TOML settings file (see README for every key).
    #[arg(long, global = true, env = "STAMPEDE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway and every worker in one process.
    Run,
    /// Run only the HTTP ingest gateway.
    Gateway,
    /// Run workers only (all of them unless --only says which).
    Worker(WorkerArgs),
    /// Create the database if missing and apply every migration.
    Migrate,
    /// Manage the contract's topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Bulk-create users, products and coupons for trying or load-testing stampede.
    Seed(SeedArgs),
    /// Rebuild Redis counters (coupon stock, product stock) from PostgreSQL and report drift.
    Reconcile(ReconcileArgs),
    /// Check every invariant against PostgreSQL, Redis and the stats topic; exits 1 on any violation.
    Audit(AuditArgs),
    /// Watch running stampede processes in the terminal: throughput, lag, latency, stock left.
    Top(TopArgs),
    /// Generate load against a running stampede and measure it end to end, with a correctness verdict.
    Loadgen(LoadgenArgs),
    /// Render loadgen JSON reports as one HTML page, side by side (e.g. before/after, stampede vs passthrough).
    Report(ReportArgs),
    /// Inspect and replay the request topics' dead-letter queues.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Comma-separated workers to run: charge, coupon, order, stats.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<WorkerKind>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every request, result, stats and DLQ topic (existing ones are left alone).
    Create,
    /// Delete every contract topic under the configured prefix, with everything on it.
    Delete {
        /// Confirm: the topics and every message on them are gone for good.
        #[arg(long)]
        yes: bool,
    },
    /// Write or check the JSON Schemas and AsyncAPI document generated from the message types.
    Schemas {
        /// Folder holding the contract files.
        #[arg(long, default_value = "topics")]
        dir: PathBuf,
        /// Fail when the files differ from the types instead of writing them.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Users to create, with ids from --first-user-id.
    #[arg(long, default_value_t = 0)]
    pub users: i64,
    #[arg(long, default_value_t = 1)]
    pub first_user_id: i64,
    /// Opening balance of each created user, in KRW.
    #[arg(long, default_value_t = 50_000)]
    pub balance: i64,
    /// Products to create, with ids from --first-product-id.
    #[arg(long, default_value_t = 0)]
    pub products: i64,
    #[arg(long, default_value_t = 1)]
    pub first_product_id: i64,
    /// Unit price of each created product, in KRW.
    #[arg(long, default_value_t = 10_000)]
    pub price: i64,
    /// Stock of each created product.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Coupons to create, with ids from --first-coupon-id.
    #[arg(long, default_value_t = 0)]
    pub coupons: i64,
    #[arg(long, default_value_t = 1)]
    pub first_coupon_id: i64,
    /// Units of each created coupon.
    #[arg(long, default_value_t = 1_000)]
    pub coupon_stock: i64,
    /// Fixed discount in KRW (ignored when --coupon-percent is given).
    #[arg(long, default_value_t = 1_000)]
    pub coupon_amount: i64,
    /// Percent discount (1-100) instead of a fixed one.
    #[arg(long)]
    pub coupon_percent: Option<i64>,
    /// Days until created coupons expire.
    #[arg(long, default_value_t = 30)]
    pub coupon_valid_days: i64,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only load what Redis is missing; leave loaded counters alone.
    #[arg(long)]
    pub missing_only: bool,
}

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// What to generate.
    #[arg(long, value_enum, default_value = "coupon-drop")]
    pub scenario: Scenario,
    /// Requests to send.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// Distinct users (default: one per request); fewer means repeat requests.
    #[arg(long)]
    pub users: Option<usize>,
    /// Coupon stock (coupon-drop, mixed) or stock of each product (orders, mixed).
    #[arg(long, default_value_t = 10_000)]
    pub stock: i64,
    /// Split the drop's coupon stock over this many Redis sub-counters (1 to
    /// 64): one mega-drop spread over the shards of a Redis Cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub coupon_shards: u32,
    /// Products to order from.
    #[arg(long, default_value_t = 100)]
    pub products: usize,
    /// Offered load in requests/s (open loop); full speed when absent.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Publish straight to Kafka, or post to the gateway.
    #[arg(long, value_enum, default_value = "kafka")]
    pub via: Via,
    /// The gateway's base URL for --via http (default: gateway.listen).
    #[arg(long)]
    pub http_url: Option<String>,
    /// Requests awaiting their 202 (HTTP) or broker ack (Kafka) at once;
    /// default 256 over HTTP, 20000 to Kafka.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Give up waiting for results after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Skip the correctness verdict.
    #[arg(long)]
    pub no_verify: bool,
    /// Fail the run (exit 1) when its p99 publish → result latency is above this (ms).
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail the run when its p99.9 latency is above this (ms).
    #[arg(long)]
    pub max_p999_ms: Option<f64>,
    /// Fail the run when fewer results per second than this came back (first request → last result).
    #[arg(long)]
    pub min_throughput: Option<f64>,
    /// Fail the run when a coupon winner was accepted more than this many
    /// ms after a sold-out loser (the largest FCFS inversion).
    #[arg(long)]
    pub max_inversion_ms: Option<f64>,
    /// Write the JSON report here (an SVG chart is written next to it);
    /// default bench/results/loadgen-<scenario>-<time>.json.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Loadgen JSON reports (`stampede loadgen --json …`), shown in this order.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(long, short, default_value = "report.html")]
    pub output: PathBuf,
    /// The page's title.
    #[arg(long, default_value = "stampede loadgen runs")]
    pub title: String,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// `/metrics` URLs to watch (default: the gateway's).
    #[arg(long = "url")]
    pub urls: Vec<String>,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Draw one frame and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip reading the stats topic.
    #[arg(long)]
    pub no_topics: bool,
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing the batch in flight");
        cancel.cancel();
    });
    token
}

async fn serve(settings: Settings, roles: Roles) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signals();
    let running = app::run(settings, roles, shutdown).await?;
    if let Some(addr) = running.http_addr {
        println!("stampede gateway listening on http://{addr}");
    }
    if let Some(addr) = running.metrics_addr {
        println!("stampede worker metrics on http://{addr}/metrics");
    }
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    let telemetry = telemetry::init(&settings.log)?;
    tracing::debug!(?settings, "settings loaded");
    let outcome = dispatch(cli.command, settings).await;
    // Exporting the last spans waits on the exporter's own thread.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    outcome
}

async fn dispatch(command: Command, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => serve(settings, Roles::everything()).await,
        Command::Dlq(command) => dlq::run(command, settings).await,
        Command::Report(args) => {
            let mut runs = Vec::with_capacity(args.reports.len());
            for path in &args.reports {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let report: loadgen::Report = serde_json::from_str(&text).with_context(|| {
                    format!("{} is not a stampede loadgen JSON report", path.display())
                })?;
                let label = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string());
                runs.push((label, report));
            }
            if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&args.output, loadgen::html::page(&args.title, &runs))?;
            println!("wrote {} ({} runs)", args.output.display(), runs.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway => serve(settings, Roles::gateway_only()).await,
        Command::Worker(args) => {
            if args.metrics_addr.is_some() {
                settings.worker.metrics_addr = args.metrics_addr;
            }
            let kinds = if args.only.is_empty() {
                WorkerKind::ALL.to_vec()
            } else {
                args.only
            };
            serve(settings, Roles::workers(kinds)).await
        }
        Command::Migrate => {
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
        Command::Topics(TopicsCommand::Create) => {
            for outcome in create_topics(&settings.kafka).await? {
                match outcome {
                    TopicOutcome::Created(t) => {
                        println!("created {t} ({} partitions)", settings.kafka.partitions)
                    }
                    TopicOutcome::Existed(t) => println!("exists  {t}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics(TopicsCommand::Delete { yes }) => {
            if !yes {
                bail!(
                    "this deletes every topic under the prefix {:?} and all their messages; add --yes to confirm",
                    settings.kafka.topic_prefix
                );
            }
            for topic in crate::kafka::admin::delete_topics(&settings.kafka).await? {
                println!("deleted {topic}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics(TopicsCommand::Schemas { dir, check }) => {
            if check {
                let drift = contracts::drift(&dir);
                if !drift.is_empty() {
                    bail!("contract files out of date in {}: {drift:?}; run `stampede topics schemas --dir {}`", dir.display(), dir.display());
                }
                println!(
                    "contract files in {} match the message types",
                    dir.display()
                );
            } else {
                for name in contracts::write(&dir)? {
                    println!("wrote {}", dir.join(name).display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed(args) => {
            let db = store::connect(&settings.database).await?;
            let counters = Counters::connect(&settings.redis).await?;
            let discount = match args.coupon_percent {
                Some(percent) => Discount::Percent { percent },
                None => Discount::Fixed {
                    amount: args.coupon_amount,
                },
            };
            discount.validate().map_err(anyhow::Error::msg)?;
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
            let started = std::time::Instant::now();
            let report = seed(&db, &counters, &plan).await?;
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
        Command::Reconcile(args) => {
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
        Command::Audit(args) => {
            let db = store::connect(&settings.database).await?;
            let counters = Counters::connect(&settings.redis).await?;
            let report =
                audit::audit(&db, &counters, (!args.no_topics).then_some(&settings)).await?;
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
        Command::Top(args) => {
            let urls = if args.urls.is_empty() {
                vec![format!("http://{}/metrics", settings.gateway.listen)]
            } else {
                args.urls
            };
            let client = reqwest::Client::new();
            let interval = std::time::Duration::from_millis(args.interval_ms.max(100));
            let shutdown = shutdown_on_signals();
            let mut before = top::scrape(&client, &urls)
                .await
                .map_err(anyhow::Error::msg)?;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
                    _ = tokio::time::sleep(interval) => {}
                }
                let now = top::scrape(&client, &urls)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let frame = top::render(&before, &now);
                if args.once {
                    print!("{frame}");
                    return Ok(ExitCode::SUCCESS);
                }
                print!("\x1b[2J\x1b[H{frame}");
                before = now;
            }
        }
        Command::Loadgen(args) => {
            if args.requests == 0 {
                bail!("--requests must be at least 1");
            }
            let options = LoadgenOptions {
                scenario: args.scenario,
                requests: args.requests,
                users: args.users.unwrap_or(args.requests).max(1),
                stock: args.stock,
                coupon_shards: args.coupon_shards,
                products: args.products.max(1),
                rate: args.rate.filter(|r| *r > 0),
                via: args.via,
                concurrency: args.concurrency.filter(|c| *c > 0),
                http_url: args
                    .http_url
                    .unwrap_or_else(|| format!("http://{}", settings.gateway.listen)),
                timeout: std::time::Duration::from_secs(args.timeout_secs),
                verify: !args.no_verify,
                progress: !args.quiet,
                thresholds: loadgen::Thresholds {
                    max_p99_ms: args.max_p99_ms,
                    max_p999_ms: args.max_p999_ms,
                    min_throughput: args.min_throughput,
                    max_inversion_ms: args.max_inversion_ms,
                },
            };
            let report = loadgen::run(&settings, &options).await?;
            print!("{}", report.summary());
            let json_path = args
                .json
                .unwrap_or_else(|| loadgen::default_output(args.scenario).with_extension("json"));
            if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
            let html_path = json_path.with_extension("html");
            let label = json_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            std::fs::write(
                &html_path,
                loadgen::html::page(
                    &format!("stampede loadgen: {label}"),
                    &[(label, report.clone())],
                ),
            )?;
            println!(
                "report: {} and {}",
                json_path.display(),
                html_path.display()
            );
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
