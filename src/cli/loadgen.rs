//! `stampede loadgen` (load with a verdict, JSON and HTML reports) and
//! `stampede report` (several runs side by side).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::values::{at_least_one, units};
use crate::config::Settings;
use crate::loadgen::{self, LoadgenOptions, Scenario, Via};

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// What to generate.
    #[arg(long, value_enum, default_value = "coupon-drop")]
    pub scenario: Scenario,
    /// Requests to send (at least 1).
    #[arg(long, default_value_t = 200_000, value_parser = at_least_one)]
    pub requests: usize,
    /// Distinct users (default: one per request); fewer means repeat requests.
    #[arg(long, value_parser = at_least_one)]
    pub users: Option<usize>,
    /// Coupon stock (coupon-drop, mixed) or stock of each product (orders,
    /// mixed); 0 is a drop that is sold out from the start.
    #[arg(long, default_value_t = 10_000, value_parser = units)]
    pub stock: i64,
    /// Split the drop's coupon stock over this many Redis sub-counters (1 to
    /// 64): one mega-drop spread over the shards of a Redis Cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub coupon_shards: u32,
    /// Products to order from (at least 1).
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub products: usize,
    /// Offered load in requests/s (open loop, at least 1); full speed when absent.
    #[arg(long, value_parser = at_least_one)]
    pub rate: Option<usize>,
    /// Publish straight to Kafka, or post to the gateway over HTTP/1.1 or
    /// HTTP/2 (cleartext, prior knowledge, 8 connections).
    #[arg(long, value_enum, default_value = "kafka")]
    pub via: Via,
    /// The gateway's base URL for --via http or http2 (default:
    /// gateway.listen).
    #[arg(long)]
    pub http_url: Option<String>,
    /// Requests awaiting their 202 (HTTP) or broker ack (Kafka) at once;
    /// default 256 over HTTP/1.1, 1024 over HTTP/2, 20000 to Kafka.
    #[arg(long, value_parser = at_least_one)]
    pub concurrency: Option<usize>,
    /// Give up waiting for results after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Skip the correctness verdict. The verdict checks every request got
    /// one result content and the scenario's own rules, then runs `stampede
    /// audit`, waiting up to 120 s for PostgreSQL, Redis and the brokers to
    /// answer; a check that still cannot run is reported SKIP and the run
    /// fails as NOT VERIFIED.
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
    /// Write the JSON report here (an HTML report is written next to it);
    /// default `bench/results/loadgen-<scenario>-<time>.json`.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Report the CPU time of these processes per request, counted from the
    /// first publish to the last result (setup and verdict excluded):
    /// LABEL=PID[,PID…] or LABEL=PROCESS-NAME (every process of that name,
    /// e.g. `PostgreSQL=postgres`); repeatable. The load generator's own is
    /// always reported. Linux (/proc).
    #[arg(long = "cpu", value_name = "LABEL=WHO")]
    pub cpu: Vec<loadgen::cpu::Watched>,
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

pub async fn run(args: LoadgenArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let options = LoadgenOptions {
        scenario: args.scenario,
        requests: args.requests,
        users: args.users.unwrap_or(args.requests),
        stock: args.stock,
        coupon_shards: args.coupon_shards,
        products: args.products,
        rate: args.rate.map(|r| r as u64),
        via: args.via,
        concurrency: args.concurrency,
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
        cpu: args.cpu,
    };
    let report = loadgen::run(settings, &options).await?;
    print!("{}", report.summary());
    let json_path = args
        .json
        .unwrap_or_else(|| loadgen::default_output(args.scenario).with_extension("json"));
    create_parent(&json_path)?;
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

pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let mut runs = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: loadgen::Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a stampede loadgen JSON report", path.display()))?;
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        runs.push((label, report));
    }
    create_parent(&args.output)?;
    std::fs::write(&args.output, loadgen::html::page(&args.title, &runs))?;
    println!("wrote {} ({} runs)", args.output.display(), runs.len());
    Ok(ExitCode::SUCCESS)
}

/// Creates the folder a report is written into.
fn create_parent(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}
