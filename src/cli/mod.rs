//! The `stampede` command line. Each subcommand loads settings (defaults →
//! `--config` file → `STAMPEDE_*` environment), then calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

pub mod dlq;
pub mod ledger;
pub mod loadgen;
pub mod seed;
pub mod top;
pub mod topics;
mod values;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Roles};
use crate::config::Settings;
use crate::telemetry;
use crate::workers::WorkerKind;

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
    Topics(topics::TopicsCommand),
    /// Bulk-create users, products and coupons for trying or load-testing stampede.
    Seed(seed::SeedArgs),
    /// Rebuild Redis counters (coupon stock, product stock) from PostgreSQL and report drift.
    Reconcile(ledger::ReconcileArgs),
    /// Check every invariant against PostgreSQL, Redis and the stats topic; exits 1 on any violation.
    Audit(ledger::AuditArgs),
    /// Watch running stampede processes in the terminal: throughput, lag, latency, stock left.
    Top(top::TopArgs),
    /// Generate load against a running stampede and measure it end to end, with a correctness verdict.
    Loadgen(loadgen::LoadgenArgs),
    /// Render loadgen JSON reports as one HTML page, side by side (e.g. before/after, stampede vs passthrough).
    Report(loadgen::ReportArgs),
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

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::telemetry::error_chain(e.as_ref()));
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
    let brokers = settings.kafka.brokers.clone();
    let outcome = dispatch(cli.command, settings)
        .await
        .map_err(|e| name_the_brokers(e, &brokers));
    // Exporting the last spans waits on the exporter's own thread.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    outcome
}

/// An error that comes of no Kafka broker answering says where they were
/// looked for (librdkafka's own words name neither the setting nor, for
/// most calls, the address). Read from the error's text: librdkafka's code
/// is in it whether a cause carries the client's error or only its message
/// (the audit's).
fn name_the_brokers(error: anyhow::Error, brokers: &str) -> anyhow::Error {
    use rdkafka::types::RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure};
    let said = telemetry::error_chain(error.as_ref());
    let unreachable = [BrokerTransportFailure, AllBrokersDown]
        .iter()
        .any(|code| said.contains(&format!("{code:?}")));
    if unreachable && !said.contains("(kafka.brokers)") {
        error.context(format!(
            "no Kafka broker answered at {brokers} (kafka.brokers)"
        ))
    } else {
        error
    }
}

async fn dispatch(command: Command, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => serve(settings, Roles::everything()).await,
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
        Command::Migrate => ledger::migrate(&settings).await,
        Command::Topics(command) => topics::run(command, &settings).await,
        Command::Seed(args) => seed::run(args, &settings).await,
        Command::Reconcile(args) => ledger::reconcile(args, &settings).await,
        Command::Audit(args) => ledger::audit(args, &settings).await,
        Command::Top(args) => top::run(args, &settings, shutdown_on_signals()).await,
        Command::Loadgen(args) => loadgen::run(args, &settings).await,
        Command::Report(args) => loadgen::report(args),
        Command::Dlq(command) => dlq::run(command, settings).await,
    }
}
