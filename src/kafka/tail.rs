//! Reading a topic to its end: from where each partition starts (or from
//! given offsets) up to the end the broker reports when reading starts.
//! "The end" is exact: a partition is done when the client reports its end
//! (`enable.partition.eof`) or its last message before the high watermark
//! has been read. Only committed messages are read (`read_committed`); a
//! transaction committed just before reading starts counts as committed
//! (see [`read_to_end`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use crate::config::KafkaSettings;

/// Where reading starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The earliest message.
    Earliest,
    /// These offsets (the earliest message where a partition is missing or
    /// its offset is no longer kept).
    At(HashMap<i32, i64>),
}

/// What [`read_to_end`] reads with.
pub struct TailConsumer {
    /// Reads committed messages only; its end is the last stable offset.
    consumer: BaseConsumer<TailContext>,
    /// Sees the log's end, transactions in flight included.
    peek: BaseConsumer<TailContext>,
}

/// Reaching a partition's end is how [`read_to_end`] knows it is done, not
/// an error worth a log line; every other client error is logged.
pub struct TailContext;

impl ClientContext for TailContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(error, KafkaError::Global(code) if code == rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !end {
            tracing::error!(%error, reason, "kafka client error while reading a topic to its end");
        }
    }
}

impl ConsumerContext for TailContext {}

impl TailConsumer {
    /// The cluster's metadata for `topic`.
    pub fn fetch_metadata(
        &self,
        topic: Option<&str>,
        timeout: Duration,
    ) -> Result<rdkafka::metadata::Metadata, KafkaError> {
        self.consumer.fetch_metadata(topic, timeout)
    }
}

/// A consumer for [`read_to_end`]: no group membership, nothing committed.
pub fn reader(settings: &KafkaSettings, group: &str) -> Result<TailConsumer, KafkaError> {
    let mut config: ClientConfig = super::client_config(settings);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    let consumer = config.create_with_context(TailContext)?;
    config.set("isolation.level", "read_uncommitted");
    let peek = config.create_with_context(TailContext)?;
    Ok(TailConsumer { consumer, peek })
}

/// Where reading `partition` ends: its last stable offset, once every
/// transaction that was in the log when reading started has ended. A
/// producer's commit returns before the broker has written the commit's
/// markers to the partitions; until then the committed messages are beyond
/// the last stable offset, and reading would miss them. A transaction still
/// open after `patience` (a producer gone quiet) is left out.
fn end_of(
    tail: &TailConsumer,
    topic: &str,
    partition: i32,
    patience: Duration,
) -> Result<(i64, i64), KafkaError> {
    let limit = patience.min(Duration::from_secs(30));
    let (_, log_end) = super::watermarks(&tail.peek, topic, partition, limit)?;
    let deadline = Instant::now() + patience;
    loop {
        let (low, stable) = super::watermarks(&tail.consumer, topic, partition, limit)?;
        if stable >= log_end || Instant::now() >= deadline {
            if stable < log_end {
                tracing::warn!(
                    topic,
                    partition,
                    stable,
                    log_end,
                    "a transaction is still open; reading what is committed"
                );
            }
            return Ok((low, stable));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `each` for every message of `topic` from `start` to its end.
/// Blocking: run it on a blocking thread. Fails when the end is not reached
/// within `limit`.
pub fn read_to_end(
    tail: &TailConsumer,
    topic: &str,
    start: &Start,
    limit: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + limit;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    let consumer = &tail.consumer;
    for partition in super::partitions_of(consumer, topic, limit.min(Duration::from_secs(30)))? {
        let (low, high) = end_of(tail, topic, partition, limit / 4)?;
        let from = match start {
            Start::Earliest => low,
            Start::At(offsets) => offsets.get(&partition).copied().unwrap_or(low).max(low),
        };
        if from < high {
            assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
            ends.insert(partition, high);
        }
    }
    let mut pending: HashSet<i32> = ends.keys().copied().collect();
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if message.offset() + 1 >= ends[&message.partition()] {
                    pending.remove(&message.partition());
                }
                each(&message);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                pending.remove(&partition);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(())
}
