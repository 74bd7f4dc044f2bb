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

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

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
    let consumer: StreamConsumer<CommitOnRevoke> = config.create_with_context(
        CommitOnRevoke::new(options.worker.clone(), options.joined.clone()),
    )?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Runs `handler` over micro-batches until `shutdown` is cancelled. The batch
/// in flight when shutdown comes is finished (or abandoned unstored while its
/// dependencies are down), then stored offsets are committed.
///
/// Kept as one loop on purpose (a little over 80 lines): the order of
/// decide, publish and offset store *is* the at-least-once guarantee, and it
/// reads best in one place.
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
    let mut intake = Intake::new(
        Merger::new(
            settings.worker.batch_size,
            settings.worker.fcfs_buffer,
            options.fcfs_wait,
        ),
        options.frontiers.clone(),
    );
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
        let started = std::time::Instant::now();
        let outgoing = match decide(handler, &batch, &backoff, worker, &shutdown).await {
            Decided::Publish(outgoing) => outgoing,
            Decided::Stop(outcome) => break outcome,
        };
        if let Some(previous) = in_flight.take() {
            if !previous.finish(&consumer, worker).await? {
                break Ok(());
            }
        }
        let publish = spawn_publish(producer.clone(), outgoing, backoff, worker, &shutdown);
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

/// What deciding a batch led to.
enum Decided {
    Publish(Vec<OutMessage>),
    /// Shutdown came while retrying (`Ok`), or the batch can never be
    /// handled (`Err`): the loop stops without storing its offsets.
    Stop(Result<(), ConsumerError>),
}

/// Hands a batch to the handler, retrying while its dependencies are down.
async fn decide(
    handler: &dyn BatchHandler,
    batch: &[Incoming],
    backoff: &Backoff,
    worker: &str,
    shutdown: &CancellationToken,
) -> Decided {
    metrics::batch_size(worker, batch.len());
    let started = std::time::Instant::now();
    let handled = backoff
        .retry(worker, "handle batch", shutdown, || handler.handle(batch))
        .await;
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

/// Publishes a batch's results in the background, retrying while the broker
/// is down; the task answers whether they went out.
fn spawn_publish(
    producer: Producer,
    outgoing: Vec<OutMessage>,
    backoff: Backoff,
    worker: &str,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<bool> {
    let token = shutdown.clone();
    let name = worker.to_owned();
    tokio::spawn(async move {
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
