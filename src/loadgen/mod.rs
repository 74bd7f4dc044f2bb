//! `stampede loadgen`: generates a drop, an order rush, charges, or a mix
//! against a running stampede, and measures it end to end.
//!
//! It sets up its own data (fresh users, products, a coupon), publishes
//! requests straight to Kafka (default) or through the gateway (`--via
//! http`), either at full speed or at a fixed offered rate (open loop: each
//! request has a scheduled send time and latency is measured from it, so a
//! slow system cannot hide its queueing), and follows the result topics.
//! Every run ends with a correctness verdict checked against PostgreSQL,
//! Redis and the topics; a run that breaks an invariant fails.

pub mod cpu;
pub mod html;
mod http;
mod report;
mod scenario;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use report::{Fairness, Report};
pub use scenario::Scenario;

use crate::config::Settings;
use crate::counters::Counters;
use crate::kafka::{Flow, OutMessage, Producer, Topics};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("setup failed")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http: {0}")]
    Http(String),
    #[error("io")]
    Io(#[from] std::io::Error),
    #[error("a send task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("encoding a request")]
    Encode(#[from] serde_json::Error),
}

/// How requests reach stampede.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Published straight to the request topics.
    Kafka,
    /// Posted to the gateway over HTTP/1.1, one request per connection at a
    /// time.
    Http,
    /// Posted to the gateway over HTTP/2 without TLS (prior knowledge), many
    /// requests at once on each of a few connections, as a proxy in front
    /// of the gateway would send them.
    Http2,
}

impl Via {
    /// Whether requests go through the gateway.
    pub fn is_http(self) -> bool {
        matches!(self, Via::Http | Via::Http2)
    }
}

/// The HTTP/2 connections requests are spread over: one connection's frames
/// are read and written by one task, so a few keep both the client and the
/// gateway using every core.
const HTTP2_CONNECTIONS: usize = 8;

#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    pub scenario: Scenario,
    pub requests: usize,
    /// Distinct users; fewer than requests means repeats.
    pub users: usize,
    pub stock: i64,
    /// Redis sub-counters the drop's coupon is split over (1: kept whole).
    pub coupon_shards: u32,
    pub products: usize,
    pub rate: Option<u64>,
    pub via: Via,
    /// Requests awaiting their acknowledgement at once (None: the default of `via`).
    pub concurrency: Option<usize>,
    pub http_url: String,
    pub timeout: Duration,
    pub verify: bool,
    pub progress: bool,
    /// Limits the run must stay within, checked in its verdict.
    pub thresholds: Thresholds,
    /// Processes whose CPU time over the run is reported per request.
    pub cpu: Vec<cpu::Watched>,
}

/// Limits a run must meet (like k6 thresholds): each one given becomes a
/// check in the verdict, so a run that misses it fails.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub max_p99_ms: Option<f64>,
    pub max_p999_ms: Option<f64>,
    /// Results per second, first request to last result.
    pub min_throughput: Option<f64>,
    /// The largest FCFS inversion (a coupon winner accepted this much later
    /// than a sold-out loser).
    pub max_inversion_ms: Option<f64>,
}

impl Thresholds {
    /// Adds one check per threshold given.
    pub fn check(&self, report: &mut Report) {
        if let Some(limit) = self.max_p99_ms {
            let p99 = report.latency.p99_ms;
            report.check(
                "p99 latency",
                p99 <= limit,
                format!("{p99:.1} ms (limit {limit} ms)"),
            );
        }
        if let Some(limit) = self.max_p999_ms {
            let p999 = report.latency.p999_ms;
            report.check(
                "p99.9 latency",
                p999 <= limit,
                format!("{p999:.1} ms (limit {limit} ms)"),
            );
        }
        if let Some(floor) = self.min_throughput {
            let rate = report.throughput_per_sec;
            report.check(
                "throughput",
                rate >= floor,
                format!("{rate:.0} results/s (at least {floor}/s)"),
            );
        }
        if let Some(limit) = self.max_inversion_ms {
            let (passed, detail) = match &report.fairness {
                Some(f) => (
                    f.max_inversion_ms <= limit,
                    format!(
                        "largest {:.1} ms (limit {limit} ms), {} of {} winners accepted after a loser",
                        f.max_inversion_ms, f.inverted_winners, f.winners
                    ),
                ),
                None => (true, "no coupon winners and losers to compare".into()),
            };
            report.check("FCFS inversion", passed, detail);
        }
    }
}

/// One planned request.
pub struct Planned {
    pub flow: Flow,
    pub user_id: i64,
    pub request_id: String,
    pub body: serde_json::Value,
}

/// What the follower saw of one result.
struct Seen {
    request_id: String,
    at: Instant,
    outcome: String,
    /// A coupon issued (the result names the issued coupon).
    coupon_won: bool,
    payload: Vec<u8>,
}

/// Runs a load test and returns its report (verdict included).
///
/// One function a little over 80 lines, as it reads as the run itself:
/// set up, start following results, publish, collect, verify.
pub async fn run(settings: &Settings, options: &LoadgenOptions) -> Result<Report, LoadgenError> {
    let db = store::connect(&settings.database)
        .await
        .map_err(|e| LoadgenError::Setup(e.into()))?;
    let counters = Counters::connect(&settings.redis)
        .await
        .map_err(|e| LoadgenError::Setup(e.into()))?;
    let producer = Producer::new(&settings.kafka)?;
    let topics = Topics::new(settings.kafka.topic_prefix.clone());
    let run_id = format!("lg{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);

    let setup = scenario::setup(&db, &counters, settings, options, &run_id)
        .await
        .map_err(LoadgenError::Setup)?;
    let plan = scenario::plan(options, &setup, &run_id);
    let flows: Vec<Flow> = {
        let mut f: Vec<Flow> = plan.iter().map(|p| p.flow).collect();
        f.sort_by_key(|f| f.kind());
        f.dedup();
        f
    };
    let follow_topics: Vec<String> = if options.scenario == Scenario::Passthrough {
        vec![setup.passthrough_out.clone().unwrap_or_default()]
    } else {
        flows.iter().map(|f| topics.results(*f)).collect()
    };

    // Connect the producer before the clock starts: a client's first
    // connection is not stampede's latency.
    producer.check(Duration::from_secs(10)).await?;
    let (tx, mut rx) = mpsc::channel::<Seen>(65_536);
    let follower = start_follower(settings, &follow_topics, &run_id, tx).await?;
    let passthrough = match &setup.passthrough_in {
        Some(input) => Some(scenario::start_passthrough(
            settings,
            input,
            setup.passthrough_out.as_deref().unwrap_or_default(),
            producer.clone(),
        )),
        None => None,
    };
    if let Some(p) = &passthrough {
        p.assigned(Duration::from_secs(30))
            .await
            .map_err(LoadgenError::Setup)?;
    }

    let bar = progress_bar(options, plan.len());

    let cpu_before = cpu::Sample::take(&options.cpu);
    let started = Instant::now();
    // With `--cpu`, the same processes' CPU per quarter second of the run.
    let slicing = CancellationToken::new();
    let slices = (!options.cpu.is_empty()).then(|| {
        tokio::spawn(cpu::Slices::take(
            options.cpu.clone(),
            started,
            Duration::from_secs_f64(report::BUCKET_SECS),
            slicing.clone(),
        ))
    });
    let sent_at: SentAt = Arc::new(std::sync::Mutex::new(HashMap::with_capacity(plan.len())));
    let expected = plan.len();
    let mut publish = spawn_publish(
        plan,
        producer.clone(),
        topics.clone(),
        setup.passthrough_in.clone(),
        options.clone(),
        started,
        sent_at.clone(),
    );

    let (results, published) = collect_results(
        &mut rx,
        &mut publish,
        started + options.timeout,
        expected,
        &bar,
    )
    .await;
    let cpu_after = cpu::Sample::take(&options.cpu);
    slicing.cancel();
    let slices = match slices {
        Some(sampling) => sampling.await.unwrap_or_default(),
        None => cpu::Slices::default(),
    };
    bar.finish_and_clear();
    let publish_outcome = match published {
        Some(outcome) => outcome,
        None => joined(publish.await),
    };
    follower.abort();
    if let Some(p) = passthrough {
        p.stop().await;
        scenario::drop_passthrough_topics(settings, &setup).await;
    }
    let turned_away = publish_outcome?;
    let sent_at = std::mem::take(&mut *sent_at.lock().unwrap_or_else(|p| p.into_inner()));
    let mut report = report::build(options, started, &sent_at, &results, &slices);
    report.turned_away = turned_away;
    report.cpu_us_per_request = cpu_before.per_request(&cpu_after, report.answered);
    options.thresholds.check(&mut report);
    if options.verify && options.scenario != Scenario::Passthrough {
        scenario::verify(
            &db,
            &counters,
            settings,
            options,
            &setup,
            &results_outcomes(&results),
            &mut report,
        )
        .await;
    }
    Ok(report)
}

/// When each request was sent, by request id.
type SentAt = Arc<std::sync::Mutex<HashMap<String, Instant>>>;

/// Publishes the plan in the background; the task answers how many
/// requests the gateway turned away.
fn spawn_publish(
    plan: Vec<Planned>,
    producer: Producer,
    topics: Topics,
    passthrough_in: Option<String>,
    options: LoadgenOptions,
    started: Instant,
    sent_at: SentAt,
) -> tokio::task::JoinHandle<Result<u64, LoadgenError>> {
    tokio::spawn(async move {
        publish_all(
            plan,
            &producer,
            &topics,
            passthrough_in.as_deref(),
            &options,
            started,
            sent_at,
        )
        .await
    })
}

/// The progress bar of a run (hidden with `--quiet`).
fn progress_bar(options: &LoadgenOptions, len: usize) -> indicatif::ProgressBar {
    let bar = if options.progress {
        indicatif::ProgressBar::new(len as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} results ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} via {:?}", options.scenario.name(), options.via));
    bar
}

/// Every result seen per request id, until each of `expected` requests has
/// one, the deadline passes, or publishing fails (no more results come for
/// what it did not send). Also the publish outcome, when it ended first.
async fn collect_results(
    rx: &mut mpsc::Receiver<Seen>,
    publish: &mut tokio::task::JoinHandle<Result<u64, LoadgenError>>,
    deadline: Instant,
    expected: usize,
    bar: &indicatif::ProgressBar,
) -> (
    HashMap<String, Vec<Seen>>,
    Option<Result<u64, LoadgenError>>,
) {
    let mut results: HashMap<String, Vec<Seen>> = HashMap::with_capacity(expected);
    let mut published: Option<Result<u64, LoadgenError>> = None;
    while results.len() < expected {
        tokio::select! {
            seen = tokio::time::timeout_at(deadline.into(), rx.recv()) => match seen {
                Ok(Some(seen)) => {
                    let entry = results.entry(seen.request_id.clone()).or_default();
                    if entry.is_empty() {
                        bar.inc(1);
                    }
                    entry.push(seen);
                }
                Ok(None) | Err(_) => break,
            },
            outcome = &mut *publish, if published.is_none() => {
                let outcome = joined(outcome);
                let failed = outcome.is_err();
                published = Some(outcome);
                if failed {
                    break;
                }
            }
        }
    }
    (results, published)
}

fn results_outcomes(
    results: &HashMap<String, Vec<Seen>>,
) -> HashMap<String, (String, usize, bool)> {
    results
        .iter()
        .map(|(id, seen)| {
            let identical = seen.iter().all(|s| s.payload == seen[0].payload);
            (id.clone(), (seen[0].outcome.clone(), seen.len(), identical))
        })
        .collect()
}

async fn publish_all(
    plan: Vec<Planned>,
    producer: &Producer,
    topics: &Topics,
    passthrough_in: Option<&str>,
    options: &LoadgenOptions,
    started: Instant,
    sent_at: SentAt,
) -> Result<u64, LoadgenError> {
    let mut turned_away = 0;
    let gateway = match options.via {
        Via::Kafka => None,
        Via::Http => Some(http::Version::Http1),
        Via::Http2 => Some(http::Version::Http2),
    }
    .map(|version| http::Gateway::new(&options.http_url, version, HTTP2_CONNECTIONS))
    .transpose()?
    .map(Arc::new);
    let max_in_flight = options.concurrency.unwrap_or(match options.via {
        Via::Kafka => 20_000,
        Via::Http => 256,
        Via::Http2 => 1_024,
    });
    let mut in_flight = FuturesUnordered::new();
    for (i, request) in plan.into_iter().enumerate() {
        // Open loop: the i-th request is due at i / rate, whatever happened before.
        let due = options
            .rate
            .map(|rate| started + Duration::from_secs_f64(i as f64 / rate as f64));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        while in_flight.len() >= max_in_flight {
            if let Some(r) = in_flight.next().await {
                turned_away += r?;
            }
        }
        let stamp = due.unwrap_or_else(Instant::now);
        sent_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.request_id.clone(), stamp);
        let producer = producer.clone();
        let gateway = gateway.clone();
        let topic = passthrough_in
            .map(str::to_owned)
            .unwrap_or_else(|| topics.requests(request.flow));
        let give_up = started + options.timeout;
        // Each request goes out when it is due, not when this loop next
        // looks at the ones in flight: handed to the Kafka client at once, or
        // posted by a task of its own.
        let sent: BoxFuture<'static, Result<u64, LoadgenError>> = match gateway {
            None => {
                // Stamped as the gateway stamps what it accepts.
                let mut body = request.body;
                body["requested_at"] = chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .into();
                match serde_json::to_vec(&body) {
                    Ok(payload) => {
                        let message = OutMessage::new(topic, request.user_id.to_string(), payload);
                        producer
                            .start(&message)
                            .map(|r| r.map(|_| 0).map_err(LoadgenError::Kafka))
                            .boxed()
                    }
                    Err(e) => futures::future::ready(Err(LoadgenError::Encode(e))).boxed(),
                }
            }
            Some(gateway) => {
                tokio::spawn(async move { scenario::post(&gateway, &request, give_up).await })
                    .map(joined)
                    .boxed()
            }
        };
        in_flight.push(sent);
    }
    while let Some(r) = in_flight.next().await {
        turned_away += r?;
    }
    Ok(turned_away)
}

/// The outcome of a task that returns one, its failing to run included.
fn joined<T>(
    outcome: Result<Result<T, LoadgenError>, tokio::task::JoinError>,
) -> Result<T, LoadgenError> {
    outcome?
}

/// Follows `topics` from their current end, sending results of this run.
async fn start_follower(
    settings: &Settings,
    topics: &[String],
    run_id: &str,
    tx: mpsc::Sender<Seen>,
) -> Result<tokio::task::JoinHandle<()>, LoadgenError> {
    let mut config = crate::kafka::client_config(&settings.kafka);
    config
        .set("group.id", format!("{}.loadgen", settings.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "500");
    let consumer: StreamConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in crate::kafka::partitions_of(&consumer, topic, Duration::from_secs(30))? {
            // Explicit offsets, so nothing produced after this point is missed.
            let (_, high) = crate::kafka::watermarks(&consumer, topic, p, Duration::from_secs(30))?;
            assignment.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
    }
    consumer.assign(&assignment)?;
    let prefix = format!("{run_id}-");
    Ok(tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(item) = stream.next().await {
            // A broker restart surfaces as errors here; the client reconnects
            // and reading goes on where it was.
            let message = match item {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(error = %e, "result follower: broker error, reading on");
                    continue;
                }
            };
            let Some(payload) = message.payload() else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
                continue;
            };
            let Some(id) = value.get("request_id").and_then(|v| v.as_str()) else {
                continue;
            };
            if !id.starts_with(&prefix) {
                continue;
            }
            let outcome = value
                .pointer("/error/code")
                .and_then(|c| c.as_str())
                .unwrap_or(match value.get("status").and_then(|s| s.as_str()) {
                    Some("rejected") => "rejected",
                    _ => "succeeded",
                });
            let seen = Seen {
                request_id: id.to_owned(),
                at: Instant::now(),
                outcome: outcome.to_owned(),
                coupon_won: value.get("user_coupon_id").is_some(),
                payload: payload.to_vec(),
            };
            if tx.send(seen).await.is_err() {
                return;
            }
        }
    }))
}

/// The default folder for reports.
pub fn default_output(scenario: Scenario) -> PathBuf {
    PathBuf::from("bench/results").join(format!(
        "loadgen-{}-{}",
        scenario.name(),
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ))
}
