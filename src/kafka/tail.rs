//! Reading a topic to its end. The reported high watermark is where reading
//! stops at the earliest, not the end itself: some brokers report it behind
//! the last acknowledged message, so reading goes on until the partitions
//! have been quiet for a moment. Some brokers also cannot serve a fetch that
//! starts inside a record batch; a partition whose last message does not come
//! is then read from its start.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The earliest message.
    Earliest,
    /// The last message (per the reported watermark, which may lag).
    Last,
}

/// Calls `each` for every message of `topic` from `start` to its end.
/// Blocking: run it on a blocking thread.
pub fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    start: Start,
    quiet: Duration,
    limit: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + limit;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        let from = match start {
            Start::Earliest => low,
            Start::Last => (high - 1).max(low),
        };
        assignment.add_partition_offset(topic, partition.id(), Offset::Offset(from))?;
        ends.push((partition.id(), low, high));
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let mut reached: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    let mut last_activity = Instant::now();
    let mut rewound = start == Start::Earliest;
    loop {
        if Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(message) => {
                let message = message?;
                use rdkafka::Message;
                reached.insert(message.partition(), message.offset() + 1);
                last_activity = Instant::now();
                each(&message);
            }
            None if last_activity.elapsed() >= quiet => {
                let behind: Vec<(i32, i64)> = ends
                    .iter()
                    .filter(|(p, _, high)| reached.get(p).copied().unwrap_or(0) < *high)
                    .map(|(p, low, _)| (*p, *low))
                    .collect();
                if behind.is_empty() || rewound {
                    return Ok(());
                }
                // The last messages did not come: read those partitions from their start.
                rewound = true;
                last_activity = Instant::now();
                let mut again = TopicPartitionList::new();
                for (p, low, _) in &ends {
                    let from = match behind.iter().find(|(b, _)| b == p) {
                        Some((_, low)) => *low,
                        None => reached.get(p).copied().unwrap_or(*low),
                    };
                    again.add_partition_offset(topic, *p, Offset::Offset(from))?;
                }
                consumer.assign(&again)?;
            }
            None => {}
        }
    }
}
