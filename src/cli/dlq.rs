//! `stampede dlq list|show|replay|history`: the dead-letter queues of the
//! request topics, for operators.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::values::at_least_one;
use crate::config::Settings;
use crate::dlq::{self, DeadLetter, ReplayOptions, Selection};
use crate::kafka::topics::Topics;
use crate::kafka::Flow;
use crate::store::{self, replays::Outcome};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters of a request topic's DLQ (oldest first), with why each was dead-lettered.
    List(ListArgs),
    /// Show one dead letter in full: headers, key and payload.
    Show(ShowArgs),
    /// Publish selected dead letters to their request topic again, once their cause is fixed.
    ///
    /// Each keeps its key, bytes and so its request_id: a request already decided is answered
    /// from its stored result (never decided twice), one never decided is decided now, and
    /// poison goes back to the DLQ with `replay.id`/`replay.of` headers. Copies cut to fit the
    /// broker are never replayed; records an earlier replay sent are skipped unless --again.
    /// Every replay (dry runs too) is recorded in PostgreSQL: see `stampede dlq history`.
    Replay(ReplayArgs),
    /// Past replays, newest first: who, when, what was selected, and where each record went.
    History(HistoryArgs),
}

/// The request flow whose DLQ to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowArg {
    Charge,
    Coupon,
    Order,
}

impl From<FlowArg> for Flow {
    fn from(f: FlowArg) -> Self {
        match f {
            FlowArg::Charge => Flow::Charge,
            FlowArg::Coupon => Flow::Coupon,
            FlowArg::Order => Flow::Order,
        }
    }
}

#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// The request flow: charge, coupon or order (its DLQ is `<request topic>.dlq`).
    #[arg(long, value_enum)]
    pub flow: FlowArg,
    /// Only dead letters whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Only those dead-lettered at or after this time (RFC 3339, e.g. 2026-11-25T18:00:00Z).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only those dead-lettered before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Only this DLQ partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Only DLQ offsets from this one (inclusive).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Only DLQ offsets up to this one (inclusive).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Only the dead letters of this request id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// At most this many, the oldest first.
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
}

impl SelectionArgs {
    fn selection(&self) -> anyhow::Result<Selection> {
        if let (Some(from), Some(to)) = (self.from_offset, self.to_offset) {
            anyhow::ensure!(from <= to, "--from-offset {from} is after --to-offset {to}");
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            anyhow::ensure!(
                since < until,
                "--since {since} is not before --until {until}"
            );
        }
        Ok(Selection {
            error: self.error.clone(),
            since: self.since,
            until: self.until,
            partition: self.partition,
            from_offset: self.from_offset,
            to_offset: self.to_offset,
            request_id: self.request_id.clone(),
            limit: self.limit,
        })
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    /// One JSON object per dead letter instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The request flow: charge, coupon or order.
    #[arg(long, value_enum)]
    pub flow: FlowArg,
    /// DLQ partition of the record.
    #[arg(long)]
    pub partition: i32,
    /// DLQ offset of the record.
    #[arg(long)]
    pub offset: i64,
    /// Write only the payload's bytes, as they are, to stdout.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Show and record what would be replayed; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Records published per second at most.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Also replay records an earlier replay already sent.
    #[arg(long)]
    pub again: bool,
    /// Who replays, for the record (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only replays of this flow's DLQ.
    #[arg(long, value_enum)]
    pub flow: Option<FlowArg>,
    /// How many replays to show.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub limit: usize,
    /// Also list what each replay did with every record.
    #[arg(long)]
    pub records: bool,
}

fn dlq_topic(settings: &Settings, flow: FlowArg) -> (String, String) {
    let requests = Topics::new(settings.kafka.topic_prefix.clone()).requests(flow.into());
    (Topics::dlq_of(&requests), requests)
}

fn one_line(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= width {
        flat
    } else {
        format!("{}…", flat.chars().take(width - 1).collect::<String>())
    }
}

fn table_row(l: &DeadLetter) -> String {
    format!(
        "{:<14} {:<24} {:<24} {}{}",
        format!("{}:{}", l.partition, l.offset),
        l.timestamp
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| "-".into()),
        one_line(l.request_id().as_deref().unwrap_or("-"), 24),
        if l.truncated() { "[truncated] " } else { "" },
        one_line(&l.error(), 100)
    )
}

pub async fn run(command: DlqCommand, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List(args) => list(args, &settings).await,
        DlqCommand::Show(args) => show(args, &settings).await,
        DlqCommand::Replay(args) => replay(args, &settings).await,
        DlqCommand::History(args) => history(args, &settings).await,
    }
}

/// Lists the selected dead letters (a table, or JSON lines).
async fn list(args: ListArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (topic, _) = dlq_topic(settings, args.select.flow);
    let letters = dlq::read(&settings.kafka, &topic, &args.select.selection()?).await?;
    if args.json {
        let mut out = std::io::stdout().lock();
        for l in &letters {
            let mut v = serde_json::to_value(l)?;
            v["request_id"] = l.request_id().into();
            v["error"] = l.error().into();
            v["truncated"] = l.truncated().into();
            writeln!(out, "{v}")?;
        }
    } else {
        println!("{topic}: {} dead letter(s) selected", letters.len());
        if !letters.is_empty() {
            println!(
                "{:<14} {:<24} {:<24} ERROR",
                "PARTITION:OFF", "DEAD-LETTERED AT", "REQUEST_ID"
            );
            for l in &letters {
                println!("{}", table_row(l));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows one dead letter whole: headers, key, payload.
async fn show(args: ShowArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (topic, _) = dlq_topic(settings, args.flow);
    let l = dlq::find(&settings.kafka, &topic, args.partition, args.offset).await?;
    if args.raw {
        std::io::stdout().lock().write_all(&l.payload)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{topic} partition {} offset {}", l.partition, l.offset);
    if let Some(t) = l.timestamp {
        println!("dead-lettered at {}", t.to_rfc3339());
    }
    println!(
        "request_id: {}",
        l.request_id().as_deref().unwrap_or("(unreadable)")
    );
    println!("headers:");
    for (k, v) in &l.headers {
        println!("  {k}: {}", String::from_utf8_lossy(v));
    }
    println!(
        "key ({} bytes): {}",
        l.key.len(),
        String::from_utf8_lossy(&l.key)
    );
    let body = match serde_json::from_slice::<serde_json::Value>(&l.payload) {
        Ok(v) => serde_json::to_string_pretty(&v)?,
        Err(_) => String::from_utf8_lossy(&l.payload).into_owned(),
    };
    println!("payload ({} bytes):\n{body}", l.payload.len());
    Ok(ExitCode::SUCCESS)
}

/// Sends the selected dead letters back to their request topic, recorded in PostgreSQL.
async fn replay(args: ReplayArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (topic, target) = dlq_topic(settings, args.select.flow);
    let db = store::connect(&settings.database)
        .await
        .context("the replay record is kept in PostgreSQL")?;
    let options = ReplayOptions {
        operator: args
            .operator
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into()),
        dry_run: args.dry_run,
        rate: args.rate,
        again: args.again,
    };
    let mut last_shown = std::time::Instant::now();
    let report = dlq::replay(
        &settings.kafka,
        &db,
        &topic,
        &target,
        &args.select.selection()?,
        &options,
        |done, of| {
            if last_shown.elapsed().as_secs() >= 1 {
                last_shown = std::time::Instant::now();
                eprintln!("replaying: {done} of {of}");
            }
        },
    )
    .await?;
    for e in &report.entries {
        let place = format!("{}:{}", e.dlq_partition, e.dlq_offset);
        let went = e
            .target
            .map(|(p, o)| format!(" → {target} {p}:{o}"))
            .unwrap_or_default();
        println!(
            "{place:<14} {:<24} {}{went}",
            e.request_id.as_deref().unwrap_or("-"),
            e.outcome.as_str()
        );
    }
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    let sent = report.count(Outcome::Replayed) + report.count(Outcome::WouldReplay);
    println!(
            "replay {} of {topic}{}: {verb} {sent}; skipped {} truncated, {} already replayed (recorded in dlq_replays)",
            report.replay_id,
            if args.dry_run { " (dry run)" } else { "" },
            report.count(Outcome::Truncated),
            report.count(Outcome::AlreadyReplayed),
        );
    Ok(ExitCode::SUCCESS)
}

/// The replays recorded, newest first.
async fn history(args: HistoryArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let db = store::connect(&settings.database).await?;
    let topic = args.flow.map(|f| dlq_topic(settings, f).0);
    let limit = i64::try_from(args.limit).unwrap_or(i64::MAX);
    let rows = store::replays::history(&db, topic.as_deref(), limit).await?;
    if rows.is_empty() {
        println!("no replays recorded");
    }
    for r in rows {
        println!(
            "replay {} by {}@{} at {}{}: {} → {}, {} {}, {} skipped, selection {}{}",
            r.id,
            r.operator,
            r.host,
            r.started_at.to_rfc3339(),
            if r.dry_run { " (dry run)" } else { "" },
            r.dlq_topic,
            r.target_topic,
            if r.dry_run {
                "would replay"
            } else {
                "replayed"
            },
            r.replayed,
            r.skipped,
            r.filter,
            if r.finished_at.is_none() {
                " (unfinished)"
            } else {
                ""
            },
        );
        if args.records {
            for e in store::replays::entries(&db, r.id).await? {
                println!(
                    "  {}:{} {} {}{}",
                    e.dlq_partition,
                    e.dlq_offset,
                    e.request_id.as_deref().unwrap_or("-"),
                    e.outcome.as_str(),
                    e.target
                        .map(|(p, o)| format!(" → {p}:{o}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
