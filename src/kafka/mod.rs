//! Everything that speaks to Kafka: the topic catalogue and its creation, the
//! idempotent producer, the micro-batch consumer loop all workers share, and
//! dead-letter copies. It knows nothing of business rules.

pub mod admin;
pub mod consumer;
pub mod dlq;
pub mod producer;
pub mod tail;
pub mod topics;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

pub use consumer::{BatchHandler, ConsumerError, Incoming};
pub use producer::{OutMessage, Producer};
pub use topics::{Flow, Topics};

/// The base client configuration every stampede client starts from.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config.set("client.id", "stampede");
    apply_extra(&mut config, &settings.client);
    config
}

fn apply_extra(config: &mut ClientConfig, extra: &BTreeMap<String, String>) {
    for (key, value) in extra {
        config.set(key, value);
    }
}
