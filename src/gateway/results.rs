//! Waiting for results: `GET /v1/requests/{id}?wait_ms=N`.
//!
//! Every result is stored in PostgreSQL before it is published, so PostgreSQL
//! answers. To answer a waiting client as soon as its result exists, the
//! gateway follows the result topics (all partitions, from their end, no
//! consumer group) and wakes the waiters of each request id it sees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::line::Line;
use crate::config::Settings;
use crate::kafka::dlq::{HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use crate::kafka::{Flow, Topics};

/// Request ids clients are waiting for.
#[derive(Default, Clone)]
pub struct Waiters {
    inner: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Waiters {
    /// Registers interest in `request_id`; drop the guard to stop waiting.
    pub fn register(&self, request_id: &str) -> WaitGuard {
        let notify = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(request_id.to_owned())
            .or_default()
            .clone();
        WaitGuard {
            waiters: self.clone(),
            request_id: request_id.to_owned(),
            notify,
        }
    }

    fn wake(&self, request_id: &str) {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = map.get(request_id) {
            notify.notify_waiters();
        }
    }
}

pub struct WaitGuard {
    waiters: Waiters,
    request_id: String,
    pub notify: Arc<Notify>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut map = self.waiters.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.request_id)
            .is_some_and(|n| Arc::strong_count(n) <= 2)
        {
            map.remove(&self.request_id);
        }
    }
}

#[derive(Deserialize)]
struct RequestIdOnly<'a> {
    #[serde(borrow)]
    request_id: &'a str,
}

/// The place of the request a result answers (headers `source.partition`,
/// `source.offset`, set by the workers).
fn source_of(message: &BorrowedMessage<'_>) -> Option<(i32, i64)> {
    let headers = message.headers()?;
    let value = |name: &str| -> Option<&str> {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    Some((
        value(HEADER_SOURCE_PARTITION)?.parse().ok()?,
        value(HEADER_SOURCE_OFFSET)?.parse().ok()?,
    ))
}

/// Follows the result topics until shutdown, waking waiters and moving the
/// line forward.
pub async fn follow_results(
    settings: Settings,
    waiters: Waiters,
    line: Line,
    shutdown: CancellationToken,
) {
    let topics = Topics::new(settings.kafka.topic_prefix.clone());
    let names: HashMap<String, Flow> = Flow::ALL.iter().map(|f| (topics.results(*f), *f)).collect();
    loop {
        match follow_once(&settings, &names, &waiters, &line, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %crate::telemetry::error_chain(&e), "result follower failed; retrying");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

async fn follow_once(
    settings: &Settings,
    names: &HashMap<String, Flow>,
    waiters: &Waiters,
    line: &Line,
    shutdown: &CancellationToken,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut config = crate::kafka::client_config(&settings.kafka);
    config
        .set(
            "group.id",
            format!("{}.gateway-follower", settings.kafka.group_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Short: partitions assigned at the end join the fetch only when the
        // fetch in flight returns, and this reader wakes HTTP waiters.
        .set("fetch.wait.max.ms", "500");
    let consumer: StreamConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for name in names.keys() {
        for partition in crate::kafka::partitions_of(&consumer, name, Duration::from_secs(30))? {
            assignment.add_partition_offset(name, partition, Offset::End)?;
        }
    }
    consumer.assign(&assignment)?;
    info!(partitions = assignment.count(), "following result topics");
    let mut stream = consumer.stream();
    loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            m = stream.next() => m,
        };
        let Some(message) = message else {
            return Ok(());
        };
        let message = message?;
        let parsed = message
            .payload()
            .and_then(|p| serde_json::from_slice::<RequestIdOnly<'_>>(p).ok());
        if let Some(parsed) = &parsed {
            waiters.wake(parsed.request_id);
        }
        if let (Some(flow), Some((partition, offset))) =
            (names.get(message.topic()), source_of(&message))
        {
            line.decided(
                flow.to_owned(),
                partition,
                offset,
                parsed.map(|p| p.request_id),
            );
        }
    }
}
