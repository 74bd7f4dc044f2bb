//! The outbox relay: publishes stats events that order transactions queued,
//! exactly once per paid order.
//!
//! One relay publishes at a time (a PostgreSQL advisory lock elects it; others
//! stand by). It picks up every unpublished row, whatever its id (order
//! transactions commit out of id order), sends a batch in one Kafka
//! transaction to a partition it chooses itself (`order_id mod partitions`,
//! the outbox id in a header), commits it, then deletes the rows and records
//! where the batch ended in each partition — one PostgreSQL transaction. The
//! outbox holds only what is still to publish. The Kafka transactional id is
//! the same for every relay of a deployment, so a new leader fences its
//! predecessor: a relay paused or cut off mid-batch can no longer add
//! events, and its uncommitted batch is aborted and never read
//! (`read_committed`). A new leader then reads the topic from the recorded
//! positions to its end: every event found there was committed by a
//! predecessor that died before deleting its row, and the row is deleted
//! without being sent again. Never zero, never two.

use std::collections::HashMap;
use std::time::Duration;

use crate::kafka::tail::{read_to_end, reader, Start, TailConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::WorkerError;
use crate::config::Settings;
use crate::kafka::backoff::Backoff;
use crate::kafka::handler::HandlerError;
use crate::kafka::topics::partition_for;
use crate::kafka::{OutMessage, Producer, Topics};
use crate::store::orders::{self, OutboxRow};
use crate::store::StoreError;
use crate::telemetry::{metrics, trace_context};

/// How long a Kafka transaction call may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
pub const HEADER_OUTBOX_ID: &str = "outbox.id";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        RelayError::Store(StoreError::from(e))
    }
}

/// Runs the relay until shutdown; failures are retried with backoff.
pub async fn run_relay(settings: Settings, db: PgPool, shutdown: CancellationToken) {
    let backoff = Backoff::new(settings.retry_initial(), settings.retry_max());
    let _ = backoff
        .retry("outbox", "relay stats events", &shutdown, || async {
            match relay_as_leader(&settings, &db, &shutdown).await {
                Ok(()) => Ok(()),
                Err(e) => Err(HandlerError::retryable("relay", e)),
            }
        })
        .await;
    info!("outbox relay stopped");
}

async fn relay_as_leader(
    settings: &Settings,
    db: &PgPool,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let mut conn = db.acquire().await?;
    let mut listener = PgListener::connect_with(db).await?;
    listener
        .listen(crate::store::orders::OUTBOX_CHANNEL)
        .await?;
    loop {
        let leader = orders::try_lead_relay(&mut conn).await?;
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
    // Everything after taking the lock runs inside `result`, so that whatever
    // fails, the lock goes with the connection below.
    let result = async {
        let partitions = partition_count(settings, &topic).await?;
        let producer = Producer::transactional(
            &settings.kafka,
            &format!("{}.outbox-relay", settings.kafka.group_id),
        )?;
        producer.init_transactions(TRANSACTION_TIMEOUT).await?;
        let recovered = recover(settings, db, &topic).await?;
        if recovered > 0 {
            info!(
                count = recovered,
                "events a previous relay published but did not delete were deleted without resending"
            );
        }
        metrics::stats_published(0, recovered);
        loop {
            let rows = orders::pending(&mut conn, settings.worker.outbox_batch).await?;
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
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let messages: Vec<OutMessage> = rows
                .into_iter()
                .map(|row| event_message(row, &topic, partitions))
                .collect();
            let positions = publish(&producer, &messages).await?;
            orders::forget_published(db, &ids, &topic, &positions).await?;
            metrics::stats_published(ids.len(), 0);
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
    .await;
    // The lock belongs to this session: close it rather than hand a
    // connection that may still hold the lock back to the pool, where no
    // relay would ever release it.
    let _ = conn.detach().close().await;
    result
}

fn event_message(row: OutboxRow, topic: &str, partitions: i32) -> OutMessage {
    let mut m =
        OutMessage::new(topic, row.key, row.payload).header(HEADER_OUTBOX_ID, row.id.to_string());
    m.partition = Some(partition_for(row.order_id.unwrap_or(row.id), partitions));
    if let Some(traceparent) = row.traceparent {
        m = m.header(trace_context::HEADER, traceparent);
    }
    m
}

/// Sends `messages` in one transaction; returns, per partition, the offset
/// after the last one. Nothing of an aborted or failed batch becomes visible.
async fn publish(
    producer: &Producer,
    messages: &[OutMessage],
) -> Result<HashMap<i32, i64>, RelayError> {
    producer.begin_transaction().await?;
    let sent = producer.send_all(messages).await;
    let delivered = match sent {
        Ok(delivered) => delivered,
        Err(e) => {
            let _ = producer.abort_transaction(TRANSACTION_TIMEOUT).await;
            return Err(e.into());
        }
    };
    producer.commit_transaction(TRANSACTION_TIMEOUT).await?;
    let mut positions: HashMap<i32, i64> = HashMap::new();
    for (partition, offset) in delivered {
        let next = positions.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }
    Ok(positions)
}

/// Deletes the events that earlier relays committed but did not delete:
/// those after the recorded positions. Returns how many rows that deleted.
async fn recover(settings: &Settings, db: &PgPool, topic: &str) -> Result<usize, RelayError> {
    let from = orders::relay_positions(db, topic).await?;
    let consumer = metadata_consumer(settings)?;
    let owned_topic = topic.to_owned();
    let (ids, ends) = tokio::task::spawn_blocking(
        move || -> Result<(Vec<i64>, HashMap<i32, i64>), RelayError> {
            let mut ids = Vec::new();
            let mut ends = HashMap::new();
            read_to_end(
                &consumer,
                &owned_topic,
                &Start::At(from),
                Duration::from_secs(120),
                |message| {
                    ends.insert(message.partition(), message.offset() + 1);
                    match outbox_id(message) {
                        Some(id) => ids.push(id),
                        None => warn!(
                            partition = message.partition(),
                            offset = message.offset(),
                            "a stats event has no outbox id"
                        ),
                    }
                },
            )?;
            Ok((ids, ends))
        },
    )
    .await
    .map_err(|e| WorkerError::Invariant(e.to_string()))??;
    Ok(orders::forget_published(db, &ids, topic, &ends).await? as usize)
}

fn outbox_id(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<i64> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == HEADER_OUTBOX_ID)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok())
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
    .map_err(|e| WorkerError::Invariant(e.to_string()))??;
    if count == 0 {
        return Err(WorkerError::Invariant(format!(
            "topic {topic} not found; run `stampede topics create`",
            topic = Topics::new(settings.kafka.topic_prefix.clone()).stats()
        ))
        .into());
    }
    Ok(count)
}

fn metadata_consumer(settings: &Settings) -> Result<TailConsumer, rdkafka::error::KafkaError> {
    reader(
        &settings.kafka,
        &format!("{}.outbox-reader", settings.kafka.group_id),
    )
}
