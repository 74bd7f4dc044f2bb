//! The micro-batch consumer loop every worker runs.
//!
//! Batches are formed from the assigned partitions in acceptance order
//! ([`super::merge`]), not in the order the broker's fetches arrive.
//!
//! At-least-once, in this order for each batch: the handler makes the effects
//! durable (Redis, PostgreSQL) and returns the messages to publish (results,
//! dead letters); they are published with acks=all, after the batch before
//! it; only then are the batch's offsets stored. Stored offsets are
//! committed in the background, on every partition revoke, and synchronously
//! at shutdown. A crash anywhere before the store means redelivery, which
//! idempotency by `request_id` makes harmless. Infrastructure failures are
//! retried with backoff on the same batch, so a partition never skips a
//! message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::backoff::Backoff;
use super::handler::{BatchHandler, HandlerError};
use super::incoming::Incoming;
use super::intake::Intake;
use super::merge::{Frontiers, Merger};
use super::producer::{OutMessage, Producer};
use super::rebalance::{commit_stored, CommitOnRevoke};
use super::turns::{Turn, Turns};
use crate::config::Settings;
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer failed")]
    Kafka(#[from] KafkaError),
    #[error("worker {worker} stopped")]
    Fatal {
        worker: String,
        #[source]
        source: HandlerError,
    },
}

/// Where and how a worker consumes.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub worker: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Set while the consumer holds an assignment (for `/readyz`).
    pub joined: super::Joined,
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
    let consumer: StreamConsumer<CommitOnRevoke> = config.create_with_context(
        CommitOnRevoke::new(options.worker.clone(), options.joined.clone()),
    )?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Runs `handler` over micro-batches until `shutdown` is cancelled. The
/// batches in flight when shutdown comes are finished (or abandoned unstored
/// while their dependencies are down), then stored offsets are committed.
///
/// Kept as one loop on purpose: the order of decide, publish and offset
/// store *is* the at-least-once guarantee, and it reads best in one place.
pub async fn run_batches(
    settings: &Settings,
    options: ConsumerOptions,
    handler: &dyn BatchHandler,
    producer: &Producer,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let consumer = group_consumer(settings, &options)?;
    let worker = options.worker.as_str();
    let depth = handler.in_flight().max(1);
    info!(worker, group = %options.group_id, topics = ?options.topics, in_flight = depth, "consuming");
    let backoff = Backoff::new(settings.retry_initial(), settings.retry_max());
    let mut stream = consumer.stream();
    let mut intake = Intake::new(
        Merger::new(
            settings.worker.batch_size,
            settings.worker.fcfs_buffer,
            options.fcfs_wait,
        ),
        options.frontiers.clone(),
    );
    // Up to `depth` batches are decided at once, each in its turn
    // (`super::turns`): batch n+1 decides while batch n records. Their
    // results are published in the order the batches were taken, each
    // publish starting once the one before went out, so results stay in
    // order per partition and offsets are only ever stored in order.
    let turns = Turns::default();
    let mut taken: u64 = 0;
    let mut backlog = false;
    let (backoff_ref, shutdown_ref) = (&backoff, &shutdown);
    let decide_in_turn = |batch: Vec<Incoming>, seq: u64| {
        let turn = turns.turn(seq);
        async move {
            let started = std::time::Instant::now();
            let decided = decide(handler, &batch, turn, backoff_ref, worker, shutdown_ref).await;
            (batch, started, decided)
        }
    };
    let publish_after_last = |publishing: &mut VecDeque<InFlight>,
                              batch: Vec<Incoming>,
                              started: std::time::Instant,
                              outgoing: Vec<OutMessage>| {
        let previous = publishing.back().map(|f| f.publish.clone());
        let publish = spawn_publish(
            producer.clone(),
            outgoing,
            backoff,
            worker,
            shutdown_ref,
            previous,
        );
        publishing.push_back(InFlight {
            batch,
            started,
            publish,
        });
    };
    let mut deciding = FuturesOrdered::new();
    let mut publishing: VecDeque<InFlight> = VecDeque::new();
    let mut outcome = loop {
        // A batch is taken only while there is room and every batch taken
        // has decided: what it holds then waits for nothing but its turn.
        // Batches overlap only under a backlog (the last one taken was
        // full); otherwise, and while results wait on the broker, requests
        // gather into one larger next batch rather than many small ones,
        // each costing a transaction and a publish.
        let limit = if backlog { depth } else { 1 };
        let room = deciding.len() < limit && deciding.len() + publishing.len() <= limit;
        let may_take = room && turns.is_decided(taken);
        let oldest_publish = async {
            match publishing.front() {
                Some(flight) => flight.publish.clone().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Next::Shutdown,
            Some(decided) = deciding.next(), if !deciding.is_empty() => Next::Decided(decided),
            // Waiting for messages also completes the batches being
            // published, so their offsets are stored even when no further
            // message comes.
            published = oldest_publish => Next::Published(published),
            () = turns.decided(taken), if room && !may_take => continue,
            batch = intake.next_batch(&mut stream, &consumer, handler, worker), if may_take => Next::Batch(batch),
        };
        match next {
            Next::Shutdown | Next::Batch(None) => break Ok(()),
            Next::Batch(Some(batch)) => {
                backlog = batch.len() >= settings.worker.batch_size;
                taken += 1;
                deciding.push_back(decide_in_turn(batch, taken));
            }
            Next::Decided((batch, started, Decided::Publish(outgoing))) => {
                publish_after_last(&mut publishing, batch, started, outgoing);
            }
            Next::Decided((_, _, Decided::Stop(outcome))) => break outcome,
            Next::Published(published) => {
                if let Some(flight) = publishing.pop_front() {
                    if !flight.record(published, &consumer, worker)? {
                        break Ok(());
                    }
                }
            }
        }
    };
    // The batches still deciding are finished in order (a batch whose
    // dependencies are down stops at shutdown, and the ones after it with
    // it), then every publish, storing offsets as each goes out.
    if outcome.is_ok() {
        while let Some((batch, started, decided)) = deciding.next().await {
            match decided {
                Decided::Publish(outgoing) => {
                    publish_after_last(&mut publishing, batch, started, outgoing);
                }
                Decided::Stop(stopped) => {
                    outcome = stopped;
                    break;
                }
            }
        }
    }
    drop(deciding);
    while let Some(flight) = publishing.pop_front() {
        let published = flight.publish.clone().await;
        match flight.record(published, &consumer, worker) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                outcome = outcome.and(Err(e.into()));
                break;
            }
        }
    }
    drop(stream);
    commit_stored(&consumer, worker);
    info!(worker, "consumer stopped");
    outcome
}

/// What deciding a batch led to.
enum Decided {
    Publish(Vec<OutMessage>),
    /// Shutdown came while retrying (`Ok`), or the batch can never be
    /// handled (`Err`): the loop stops without storing its offsets.
    Stop(Result<(), ConsumerError>),
}

/// Hands a batch to the handler in its turn, retrying while its
/// dependencies are down (a retried batch keeps its turn).
async fn decide(
    handler: &dyn BatchHandler,
    batch: &[Incoming],
    turn: Turn<'_>,
    backoff: &Backoff,
    worker: &str,
    shutdown: &CancellationToken,
) -> Decided {
    metrics::batch_size(worker, batch.len());
    let started = std::time::Instant::now();
    let handled = backoff
        .retry(worker, "handle batch", shutdown, || {
            handler.handle(batch, turn)
        })
        .await;
    if let Some(Ok(_)) = handled {
        // A handler that does not keep to its turn has still decided and
        // recorded the batch by now.
        turn.recorded().await;
    }
    metrics::batch_stage(worker, "decide", started.elapsed());
    match handled {
        Some(Ok(out)) => Decided::Publish(out),
        Some(Err(fatal @ HandlerError::Fatal(_))) => Decided::Stop(Err(ConsumerError::Fatal {
            worker: worker.to_owned(),
            source: fatal,
        })),
        Some(Err(HandlerError::Retryable { .. })) | None => Decided::Stop(Ok(())),
    }
}

/// A batch's publish: whether its results went out.
type Publish = Shared<BoxFuture<'static, bool>>;

/// Publishes a batch's results in the background once `previous` went out,
/// retrying while the broker is down; resolves to whether they went out
/// (never, if `previous` did not).
fn spawn_publish(
    producer: Producer,
    outgoing: Vec<OutMessage>,
    backoff: Backoff,
    worker: &str,
    shutdown: &CancellationToken,
    previous: Option<Publish>,
) -> Publish {
    let token = shutdown.clone();
    let name = worker.to_owned();
    tokio::spawn(async move {
        if let Some(previous) = previous {
            if !previous.await {
                return false;
            }
        }
        let published = backoff
            .retry(&name, "publish results", &token, || async {
                producer
                    .send_all(&outgoing)
                    .await
                    .map_err(|e| HandlerError::retryable("broker", e))
            })
            .await;
        matches!(published, Some(Ok(_)))
    })
    .map(|joined| joined.unwrap_or(false))
    .boxed()
    .shared()
}

/// A decided batch whose results are being published.
struct InFlight {
    batch: Vec<Incoming>,
    started: std::time::Instant,
    publish: Publish,
}

/// What the consumer loop woke up for.
enum Next {
    Shutdown,
    Published(bool),
    Batch(Option<Vec<Incoming>>),
    Decided((Vec<Incoming>, std::time::Instant, Decided)),
}

impl InFlight {
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
            self.batch.first().map_or("", |m| &*m.topic),
            self.batch.len(),
            self.started.elapsed(),
        );
        metrics::request_latency(worker, self.batch.iter().filter_map(|m| m.timestamp_ms));
        Ok(true)
    }
}

/// The offset to store per topic and partition of `batch`: one past its
/// highest message there, in order of first appearance.
fn next_offsets(batch: &[Incoming]) -> Vec<(&str, i32, i64)> {
    // A batch holds a few partitions of one topic: a short list searched
    // from its last hit costs less per message than hashing the topic name.
    let mut next: Vec<(&str, i32, i64)> = Vec::new();
    let mut last = 0;
    for m in batch {
        let hit = match next.get(last) {
            Some((t, p, _)) if *p == m.partition && **t == *m.topic => Some(last),
            _ => next
                .iter()
                .position(|(t, p, _)| *p == m.partition && **t == *m.topic),
        };
        match hit {
            Some(i) => {
                next[i].2 = next[i].2.max(m.offset + 1);
                last = i;
            }
            None => {
                last = next.len();
                next.push((&*m.topic, m.partition, m.offset + 1));
            }
        }
    }
    next
}

fn store_offsets(
    consumer: &StreamConsumer<CommitOnRevoke>,
    batch: &[Incoming],
) -> Result<(), KafkaError> {
    let next = next_offsets(batch);
    let mut tpl = TopicPartitionList::with_capacity(next.len());
    for (topic, partition, offset) in next {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, partition: i32, offset: i64) -> Incoming {
        Incoming {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp_ms: None,
            accepted_ms: 0,
        }
    }

    #[test]
    fn the_offset_stored_is_one_past_the_highest_per_topic_and_partition() {
        // Decided in acceptance order: partitions interleave and a
        // partition's messages need not come in offset order.
        let batch = [
            message("a", 0, 10),
            message("a", 1, 4),
            message("a", 0, 12),
            message("b", 0, 7),
            message("a", 0, 11),
            message("a", 1, 3),
            message("b", 0, 6),
        ];
        assert_eq!(
            next_offsets(&batch),
            vec![("a", 0, 13), ("a", 1, 5), ("b", 0, 8)]
        );
        assert!(next_offsets(&[]).is_empty());
    }
}
