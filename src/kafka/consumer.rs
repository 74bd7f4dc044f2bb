//! The micro-batch consumer loop every worker runs.
//!
//! Batches are formed from the assigned partitions in acceptance order
//! ([`super::merge`]), not in the order the broker's fetches arrive.
//!
//! At-least-once, in this order for each batch: the handler makes the effects
//! durable (Redis, PostgreSQL) and returns the messages to publish (results,
//! dead letters); they are published with acks=all; only then are the batch's
//! offsets stored. Stored offsets are committed in the background, on every
//! partition revoke, and synchronously at shutdown. A crash anywhere before
//! the store means redelivery, which idempotency by `request_id` makes
//! harmless. Infrastructure failures are retried with backoff on the same
//! batch, so a partition never skips a message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::merge::{Assignment, Frontiers, Merger, Take};
use super::producer::{OutMessage, Producer};
use crate::config::Settings;
use crate::telemetry::metrics;

/// One consumed message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// When the producer created the message (ms since the epoch), if known.
    pub timestamp_ms: Option<i64>,
    /// When the request counts as accepted (ms since the epoch), as the
    /// handler reads it ([`BatchHandler::accepted_ms`]): the order batches
    /// are formed and decided in.
    pub accepted_ms: i64,
}

impl Incoming {
    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
            accepted_ms: i64::MAX,
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// A header's value as text, when it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A failure while handling a batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency hiccup (database, Redis, broker): the same batch is
    /// retried. `cause` names the dependency, for the retry metric.
    #[error("{reason}")]
    Retryable { cause: &'static str, reason: String },
    /// Nothing can be done by retrying: the worker stops without storing offsets.
    #[error("{0}")]
    Fatal(String),
}

impl HandlerError {
    pub fn retryable(cause: &'static str, reason: impl Into<String>) -> Self {
        HandlerError::Retryable {
            cause,
            reason: reason.into(),
        }
    }
}

/// What a worker does with a batch.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    /// Makes the effects of the batch durable and returns what to publish.
    async fn handle(&self, batch: &[Incoming]) -> Result<Vec<OutMessage>, HandlerError>;

    /// When a message counts as accepted, for first come, first served
    /// across partitions: by default its Kafka timestamp (unstamped last).
    fn accepted_ms(&self, message: &Incoming) -> i64 {
        message.timestamp_ms.unwrap_or(i64::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("worker {worker} stopped: {reason}")]
    Fatal { worker: String, reason: String },
}

/// Commits stored offsets before partitions are taken away, so the next owner
/// starts exactly after what this worker finished.
pub struct CommitOnRevoke {
    worker: String,
    joined: Arc<AtomicBool>,
    /// Assignment changes not yet applied to the batch merger, in order.
    changes: Mutex<Vec<Assignment>>,
}

impl CommitOnRevoke {
    /// Assignment changes since the last call, oldest first.
    fn take_changes(&self) -> Vec<Assignment> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn record(&self, change: Assignment) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change);
    }
}

fn partition_list(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    partitions
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for CommitOnRevoke {
    /// librdkafka's periodic statistics: consumer lag per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::consumer_lag(&self.worker, topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                info!(worker = %self.worker, partitions = partitions.count(), "partitions revoked, committing");
                commit_stored(consumer, &self.worker);
                self.record(Assignment::Revoked(partition_list(partitions)));
                metrics::assigned_partitions(&self.worker, 0);
                self.joined.store(false, Ordering::Relaxed);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(worker = %self.worker, error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            info!(worker = %self.worker, partitions = partitions.count(), "partitions assigned");
            metrics::assigned_partitions(&self.worker, partitions.count());
            self.record(Assignment::Assigned(partition_list(partitions)));
            self.joined.store(true, Ordering::Relaxed);
        }
    }
}

fn commit_stored<C: Consumer<CommitOnRevoke>>(consumer: &C, worker: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => debug!(worker, "offsets committed"),
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => warn!(worker, error = %e, "offset commit failed; the next owner may redeliver"),
    }
}

/// Where and how a worker consumes.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub worker: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Set while the consumer holds an assignment (for `/readyz`).
    pub joined: Arc<AtomicBool>,
    /// How long an empty partition that was just delivering is waited for
    /// before later messages of other partitions are decided
    /// ([`super::merge`]); zero merges only what has arrived.
    pub fcfs_wait: Duration,
    /// Where the group's processes report how far they have come, so none
    /// runs more than `fcfs_wait` ahead of another; `None`: each process on
    /// its own.
    pub frontiers: Option<Arc<dyn Frontiers>>,
}

/// Creates the group consumer a worker uses.
pub fn group_consumer(
    settings: &Settings,
    options: &ConsumerOptions,
) -> Result<StreamConsumer<CommitOnRevoke>, KafkaError> {
    let kafka = &settings.kafka;
    let mut config = super::client_config(kafka);
    config
        .set("group.id", &options.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set(
            "max.poll.interval.ms",
            kafka.max_poll_interval_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            kafka.heartbeat_interval_ms.to_string(),
        )
        .set("enable.partition.eof", "false")
        // The broker answers a fetch as soon as a message arrives; the wait
        // only bounds an idle fetch, so a long one costs no latency and
        // keeps an idle worker (and the broker) from polling 100 times a second.
        .set("fetch.wait.max.ms", "1500")
        // Prefetched messages held in memory: a backlog stays in the broker,
        // not in the worker, however far behind it is.
        .set("queued.max.messages.kbytes", "16384")
        .set("statistics.interval.ms", "5000");
    for (key, value) in &kafka.client {
        config.set(key, value);
    }
    let consumer: StreamConsumer<CommitOnRevoke> = config.create_with_context(CommitOnRevoke {
        worker: options.worker.clone(),
        joined: options.joined.clone(),
        changes: Mutex::new(Vec::new()),
    })?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Runs `handler` over micro-batches until `shutdown` is cancelled. The batch
/// in flight when shutdown comes is finished (or abandoned unstored while its
/// dependencies are down), then stored offsets are committed.
pub async fn run_batches(
    settings: &Settings,
    options: ConsumerOptions,
    handler: &dyn BatchHandler,
    producer: &Producer,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let consumer = group_consumer(settings, &options)?;
    let worker = options.worker.as_str();
    info!(worker, group = %options.group_id, topics = ?options.topics, "consuming");
    let backoff = Backoff::new(settings.retry_initial(), settings.retry_max());
    let mut stream = consumer.stream();
    let mut intake = Intake {
        merger: Merger::new(
            settings.worker.batch_size,
            settings.worker.fcfs_buffer,
            options.fcfs_wait,
        ),
        frontiers: options.frontiers.clone(),
        next_report: std::time::Instant::now(),
    };
    // The publish of batch N runs while batch N+1 is fetched and decided; it
    // is awaited (and N's offsets stored) before N+1 is published, so results
    // stay in order per partition and offsets are only ever stored in order.
    let mut in_flight: Option<InFlight> = None;
    let outcome = loop {
        // Waiting for messages also completes the batch being published, so
        // its offsets are stored even when no further message comes.
        let next = match in_flight.as_mut() {
            Some(flight) => tokio::select! {
                biased;
                _ = shutdown.cancelled() => Next::Shutdown,
                published = &mut flight.publish => Next::Published(published.unwrap_or(false)),
                batch = intake.next_batch(&mut stream, &consumer, handler, worker) => Next::Batch(batch),
            },
            None => tokio::select! {
                biased;
                _ = shutdown.cancelled() => Next::Shutdown,
                batch = intake.next_batch(&mut stream, &consumer, handler, worker) => Next::Batch(batch),
            },
        };
        let batch = match next {
            Next::Shutdown | Next::Batch(None) => break Ok(()),
            Next::Published(published) => {
                if let Some(flight) = in_flight.take() {
                    if !flight.record(published, &consumer, worker)? {
                        break Ok(());
                    }
                }
                continue;
            }
            Next::Batch(Some(batch)) => batch,
        };
        metrics::batch_size(worker, batch.len());
        let started = std::time::Instant::now();
        let handled = backoff
            .retry(worker, "handle batch", &shutdown, || handler.handle(&batch))
            .await;
        metrics::batch_stage(worker, "decide", started.elapsed());
        let outgoing = match handled {
            Some(Ok(out)) => out,
            Some(Err(HandlerError::Fatal(reason))) => {
                break Err(ConsumerError::Fatal {
                    worker: worker.to_owned(),
                    reason,
                })
            }
            Some(Err(HandlerError::Retryable { .. })) | None => break Ok(()),
        };
        if let Some(previous) = in_flight.take() {
            if !previous.finish(&consumer, worker).await? {
                break Ok(());
            }
        }
        let producer = producer.clone();
        let token = shutdown.clone();
        let name = worker.to_owned();
        let publish = tokio::spawn(async move {
            let published = backoff
                .retry(&name, "publish results", &token, || async {
                    producer.send_all(&outgoing).await.map_err(|e| {
                        HandlerError::retryable("broker", format!("publish failed: {e}"))
                    })
                })
                .await;
            matches!(published, Some(Ok(())))
        });
        in_flight = Some(InFlight {
            batch,
            started,
            publish,
        });
    };
    let outcome = match in_flight.take() {
        Some(last) => last
            .finish(&consumer, worker)
            .await
            .map(|_| ())
            .map_err(ConsumerError::from)
            .and(outcome),
        None => outcome,
    };
    drop(stream);
    commit_stored(&consumer, worker);
    info!(worker, "consumer stopped");
    outcome
}

/// A decided batch whose results are being published.
struct InFlight {
    batch: Vec<Incoming>,
    started: std::time::Instant,
    publish: tokio::task::JoinHandle<bool>,
}

/// What the consumer loop woke up for.
enum Next<T> {
    Shutdown,
    Published(bool),
    Batch(Option<T>),
}

/// How often a busy process reports its frontier to the group (and learns
/// the others'), and how often an idle one says it is caught up.
const REPORT_EVERY: Duration = Duration::from_millis(5);
const REPORT_IDLE: Duration = Duration::from_millis(250);
/// A report that does not answer within this is skipped: fairness never
/// stalls a worker whose Redis is slow.
const REPORT_TIMEOUT: Duration = Duration::from_millis(100);

/// Messages from the stream, merged into batches in acceptance order.
struct Intake {
    merger: Merger,
    frontiers: Option<Arc<dyn Frontiers>>,
    next_report: std::time::Instant,
}

impl Intake {
    /// The next batch to decide, in acceptance order across the assigned
    /// partitions (and not far ahead of the group's other processes);
    /// `None` when the consumer's stream ended. Cancel-safe: every message
    /// taken from the stream is in the merger before the next await.
    async fn next_batch(
        &mut self,
        stream: &mut rdkafka::consumer::MessageStream<'_, CommitOnRevoke>,
        consumer: &StreamConsumer<CommitOnRevoke>,
        handler: &dyn BatchHandler,
        worker: &str,
    ) -> Option<Vec<Incoming>> {
        loop {
            // Everything already fetched, up to the merger's bound.
            while !self.merger.is_full() {
                match stream.next().now_or_never() {
                    Some(message) => {
                        if !self.take_in(message, consumer, handler, worker) {
                            return None;
                        }
                    }
                    None => break,
                }
            }
            // A revoke seen while no message came must not let its lanes go.
            self.follow_assignment(consumer);
            self.report(false).await;
            // Until a message comes, or what is held may go, or (idle) it is
            // time to tell the group this process is caught up.
            let (wake, idle) = match self.merger.take(std::time::Instant::now()) {
                Take::Batch(batch) => return Some(batch),
                Take::Empty => (self.frontiers.as_ref().map(|_| REPORT_IDLE), true),
                Take::WaitUntil(until) => (
                    Some(until.saturating_duration_since(std::time::Instant::now())),
                    false,
                ),
                Take::BehindGroup => (Some(REPORT_EVERY), false),
            };
            let message = match wake {
                None => stream.next().await,
                Some(after) => tokio::select! {
                    message = stream.next() => message,
                    _ = tokio::time::sleep(after) => {
                        if idle {
                            self.report(true).await;
                        }
                        continue;
                    }
                },
            };
            if !self.take_in(message, consumer, handler, worker) {
                return None;
            }
        }
    }

    /// Takes one message in, after the assignment changes that came before
    /// it. `false` when the stream ended.
    fn take_in(
        &mut self,
        message: Option<KafkaResult<BorrowedMessage<'_>>>,
        consumer: &StreamConsumer<CommitOnRevoke>,
        handler: &dyn BatchHandler,
        worker: &str,
    ) -> bool {
        self.follow_assignment(consumer);
        match message {
            Some(Ok(m)) => {
                let mut incoming = Incoming::from_message(&m);
                incoming.accepted_ms = handler.accepted_ms(&incoming);
                self.merger.push(incoming, std::time::Instant::now());
                true
            }
            Some(Err(e)) => {
                warn!(worker, error = %e, "consumer error");
                true
            }
            None => false,
        }
    }

    fn follow_assignment(&mut self, consumer: &StreamConsumer<CommitOnRevoke>) {
        let now = std::time::Instant::now();
        for change in consumer.context().take_changes() {
            self.merger.apply(change, now);
        }
    }

    /// Tells the group how far this process has come and learns how far the
    /// others have (at most every [`REPORT_EVERY`], unless `now`).
    async fn report(&mut self, now: bool) {
        let Some(frontiers) = &self.frontiers else {
            return;
        };
        let at = std::time::Instant::now();
        if !now && at < self.next_report {
            return;
        }
        self.next_report = at + REPORT_EVERY;
        let mine = self
            .merger
            .frontier(at, chrono::Utc::now().timestamp_millis());
        match tokio::time::timeout(REPORT_TIMEOUT, frontiers.exchange(mine)).await {
            Ok(Ok(floor)) => self.merger.set_floor(floor),
            Ok(Err(e)) => {
                debug!(error = %e, "frontier report failed; deciding without the group's floor");
                self.merger.set_floor(None);
                self.next_report = at + REPORT_IDLE;
            }
            Err(_) => {
                debug!("frontier report timed out; deciding without the group's floor");
                self.merger.set_floor(None);
                self.next_report = at + REPORT_IDLE;
            }
        }
    }
}

impl InFlight {
    /// Waits for the publish; stores the batch's offsets once it succeeded.
    /// `Ok(false)`: shutdown came before the results were out (nothing stored).
    async fn finish(
        mut self,
        consumer: &StreamConsumer<CommitOnRevoke>,
        worker: &str,
    ) -> Result<bool, KafkaError> {
        let published = (&mut self.publish).await.unwrap_or(false);
        self.record(published, consumer, worker)
    }

    /// Stores the batch's offsets and records its metrics, if it was published.
    fn record(
        self,
        published: bool,
        consumer: &StreamConsumer<CommitOnRevoke>,
        worker: &str,
    ) -> Result<bool, KafkaError> {
        if !published {
            return Ok(false);
        }
        store_offsets(consumer, &self.batch)?;
        metrics::batch_stage(worker, "decide+publish", self.started.elapsed());
        metrics::batch_done(
            worker,
            self.batch.first().map_or("", |m| m.topic.as_str()),
            self.batch.len(),
            self.started.elapsed(),
        );
        metrics::request_latency(worker, self.batch.iter().filter_map(|m| m.timestamp_ms));
        Ok(true)
    }
}

fn store_offsets(
    consumer: &StreamConsumer<CommitOnRevoke>,
    batch: &[Incoming],
) -> Result<(), KafkaError> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let entry = next.entry((m.topic.as_str(), m.partition)).or_insert(0);
        *entry = (*entry).max(m.offset + 1);
    }
    let mut tpl = TopicPartitionList::with_capacity(next.len());
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    match consumer.store_offsets(&tpl) {
        Ok(()) => Ok(()),
        // The partition was revoked meanwhile: its new owner redelivers.
        Err(KafkaError::StoreOffset(
            RDKafkaErrorCode::State | RDKafkaErrorCode::UnknownPartition,
        )) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Exponential backoff with jitter for retryable failures.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// Runs `attempt` until it succeeds or fails fatally. Returns `None` when
    /// shutdown came while waiting to retry.
    pub async fn retry<T, F, Fut>(
        &self,
        worker: &str,
        what: &str,
        shutdown: &CancellationToken,
        mut attempt: F,
    ) -> Option<Result<T, HandlerError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, HandlerError>>,
    {
        let mut delay = self.initial;
        loop {
            match attempt().await {
                Err(HandlerError::Retryable { cause, reason }) => {
                    metrics::retry(worker, cause);
                    warn!(worker, what, cause, %reason, retry_in_ms = delay.as_millis() as u64, "retrying");
                    let jitter =
                        Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 4));
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay + jitter) => {}
                    }
                    delay = (delay * 2).min(self.max);
                }
                done => return Some(done),
            }
        }
    }
}
