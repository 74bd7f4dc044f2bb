//! The outbox relay: publishes stats events that order transactions queued,
//! exactly once per paid order.
//!
//! One relay publishes at a time (a PostgreSQL advisory lock elects it; others
//! stand by). It sends events in outbox-id order to a partition it chooses
//! itself (`order_id mod partitions`), with the outbox id in a header, waits
//! for acks=all, then marks them published. A relay that dies between sending
//! and marking leaves events that may already be in the topic; the next
//! leader reads the last event of every partition first: per partition,
//! outbox ids only grow (single writer, idempotent producer), so every
//! unmarked event whose id is ≤ that partition's last one was published, and
//! is marked without sending it again. Never zero, never two.

use std::collections::HashMap;
use std::time::Duration;

use crate::kafka::tail::{read_to_end, reader, Start};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use sqlx::postgres::PgListener;
use sqlx::{Acquire, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::WorkerError;
use crate::config::Settings;
use crate::kafka::consumer::{Backoff, HandlerError};
use crate::kafka::topics::partition_for;
use crate::kafka::{OutMessage, Producer, Topics};
use crate::store::orders::{self, OutboxRow};
use crate::store::StoreError;
use crate::telemetry::{metrics, trace_context};

/// Advisory-lock key of the relay leader.
const RELAY_LOCK: i64 = 0x5354_4154_5331; // "STATS1"
pub const HEADER_OUTBOX_ID: &str = "outbox.id";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Worker(#[from] WorkerError),
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        RelayError::Store(StoreError::from(e))
    }
}

/// Runs the relay until shutdown; failures are retried with backoff.
pub async fn run_relay(
    settings: Settings,
    db: PgPool,
    producer: Producer,
    shutdown: CancellationToken,
) {
    let backoff = Backoff::new(settings.retry_initial(), settings.retry_max());
    let _ = backoff
        .retry("outbox", "relay stats events", &shutdown, || async {
            match relay_as_leader(&settings, &db, &producer, &shutdown).await {
                Ok(()) => Ok(()),
                Err(e) => Err(HandlerError::retryable("relay", e.to_string())),
            }
        })
        .await;
    info!("outbox relay stopped");
}

async fn relay_as_leader(
    settings: &Settings,
    db: &PgPool,
    producer: &Producer,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let mut conn = db.acquire().await?;
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen("stampede_outbox").await?;
    loop {
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if leader {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            // Stand by; re-check leadership now and then.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    info!("outbox relay is the leader");
    let topic = Topics::new(settings.kafka.topic_prefix.clone()).stats();
    let partitions = partition_count(settings, &topic).await?;
    let mut last_published = last_published_ids(settings, &topic).await?;
    let result = async {
        loop {
            let conn = conn.acquire().await?;
            let rows = orders::pending(conn, settings.worker.outbox_batch).await?;
            if rows.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    n = listener.recv() => { n?; }
                    // A missed notification is picked up within a second.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let (already, to_send): (Vec<&OutboxRow>, Vec<&OutboxRow>) =
                rows.iter().partition(|row| {
                    let p = partition_for(row.order_id.unwrap_or(row.id), partitions);
                    last_published.get(&p).is_some_and(|last| row.id <= *last)
                });
            let messages: Vec<OutMessage> = to_send
                .iter()
                .map(|row| {
                    let mut m =
                        OutMessage::new(topic.clone(), row.key.clone(), row.payload.clone())
                            .header(HEADER_OUTBOX_ID, row.id.to_string());
                    m.partition = Some(partition_for(row.order_id.unwrap_or(row.id), partitions));
                    if let Some(traceparent) = &row.traceparent {
                        m = m.header(trace_context::HEADER, traceparent.as_str());
                    }
                    m
                })
                .collect();
            producer.send_all(&messages).await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            orders::mark_published(conn, &ids).await?;
            metrics::stats_published(to_send.len(), already.len());
            if !already.is_empty() {
                info!(
                    count = already.len(),
                    "events found already published by an earlier relay; marked without resending"
                );
            }
            last_published.clear();
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RELAY_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

async fn partition_count(settings: &Settings, topic: &str) -> Result<i32, RelayError> {
    let consumer = metadata_consumer(settings)?;
    let topic = topic.to_owned();
    let count = tokio::task::spawn_blocking(move || -> Result<i32, RelayError> {
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0))
    })
    .await
    .map_err(|e| WorkerError::Inconsistent(e.to_string()))??;
    if count == 0 {
        return Err(WorkerError::Inconsistent(format!(
            "topic {topic} not found; run `stampede topics create`",
            topic = Topics::new(settings.kafka.topic_prefix.clone()).stats()
        ))
        .into());
    }
    Ok(count)
}

fn metadata_consumer(settings: &Settings) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    reader(
        &settings.kafka,
        &format!("{}.outbox-reader", settings.kafka.group_id),
    )
}

/// The outbox id of the last event in every partition of the stats topic.
async fn last_published_ids(
    settings: &Settings,
    topic: &str,
) -> Result<HashMap<i32, i64>, RelayError> {
    let consumer = metadata_consumer(settings)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, RelayError> {
        let mut last = HashMap::new();
        read_to_end(
            &consumer,
            &topic,
            &Start::Last,
            Duration::from_secs(60),
            |message| {
                let id = message
                    .headers()
                    .and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == HEADER_OUTBOX_ID)
                            .and_then(|h| h.value)
                    })
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<i64>().ok());
                match id {
                    Some(id) => {
                        let entry = last.entry(message.partition()).or_insert(id);
                        *entry = (*entry).max(id);
                    }
                    None => warn!(
                        partition = message.partition(),
                        "a stats event has no outbox id"
                    ),
                }
            },
        )?;
        Ok(last)
    })
    .await
    .map_err(|e| WorkerError::Inconsistent(e.to_string()))?
}
