//! Everything that speaks to Kafka: the topic catalogue and its creation, the
//! idempotent producer, the micro-batch consumer loop all workers share, and
//! dead-letter copies. It knows nothing of business rules.

pub mod admin;
pub mod backoff;
pub mod consumer;
pub mod dlq;
pub mod handler;
pub mod incoming;
mod intake;
pub mod merge;
pub mod producer;
mod rebalance;
pub mod tail;
pub mod topics;
pub mod turns;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

pub use consumer::ConsumerError;
pub use handler::BatchHandler;
pub use incoming::Incoming;
pub use producer::{OutMessage, Producer};
pub use rebalance::Joined;
pub use topics::{Flow, Topics};

/// The base client configuration every stampede client starts from.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config.set("client.id", "stampede");
    apply_extra(&mut config, &settings.client);
    config
}

/// The partitions of `topic`, once the broker knows it. A topic created a
/// moment ago can be missing from a broker's metadata for a while (longer
/// while the controller is busy), and a reader that assigned itself the
/// partitions it saw then would read nothing: ask again until it has some,
/// within `limit`. Blocking.
pub fn partitions_of<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    limit: std::time::Duration,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
        if let Some(partitions) = led_partitions(&metadata, topic) {
            return Ok(partitions);
        }
        if std::time::Instant::now() >= deadline {
            return Err(rdkafka::error::KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The low and high watermarks of a partition, asked again while its
/// leader is still taking over (a new topic, a broker restarted), within
/// `limit`. Blocking.
pub fn watermarks<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partition: i32,
    limit: std::time::Duration,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match consumer.fetch_watermarks(topic, partition, std::time::Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(topic, partition, error = %e, "watermarks not there yet; asking again");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The partitions of `topic` in `metadata` when it has some and every one
/// has a leader (until then, reading or writing it fails).
pub fn led_partitions(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Option<Vec<i32>> {
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())?;
    let ready = !t.partitions().is_empty()
        && t.partitions()
            .iter()
            .all(|p| p.error().is_none() && p.leader() >= 0);
    ready.then(|| t.partitions().iter().map(|p| p.id()).collect())
}

fn apply_extra(config: &mut ClientConfig, extra: &BTreeMap<String, String>) {
    for (key, value) in extra {
        config.set(key, value);
    }
}
