//! The stats consumer: keeps sales per product per day from `order.stats.v1`
//! (deduplicated by `order_id`) for "popular products". It reads only the
//! topic, so replaying the topic into an empty store gives the same answer.

use async_trait::async_trait;
use sqlx::PgPool;
use tracing::{debug, info_span, warn};

use crate::domain::messages::OrderStats;
use crate::kafka::consumer::{BatchHandler, HandlerError, Incoming};
use crate::kafka::dlq::dead_letter;
use crate::kafka::OutMessage;
use crate::store::stats;
use crate::telemetry::trace_context;

pub struct StatsConsumer {
    pub db: PgPool,
}

#[async_trait]
impl BatchHandler for StatsConsumer {
    async fn handle(&self, batch: &[Incoming]) -> Result<Vec<OutMessage>, HandlerError> {
        let mut events = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for message in batch {
            match message
                .payload
                .as_deref()
                .map(serde_json::from_slice::<OrderStats>)
            {
                Some(Ok(event)) => {
                    // One span per event, under the trace of the order's request.
                    let span = info_span!(
                        "stats_event",
                        order_id = event.order_id,
                        partition = message.partition,
                        offset = message.offset
                    );
                    trace_context::adopt(&span, message.header_str(trace_context::HEADER));
                    span.in_scope(|| debug!("stats event received"));
                    events.push(event)
                }
                Some(Err(e)) => {
                    warn!(partition = message.partition, offset = message.offset, error = %e, "unreadable stats event sent to the DLQ");
                    dead.push(dead_letter(
                        message,
                        &format!("not a valid OrderStats: {e}"),
                    ));
                }
                None => dead.push(dead_letter(message, "message has no payload")),
            }
        }
        stats::record(&self.db, &events).await.map_err(|e| {
            if e.is_retryable() {
                HandlerError::retryable("postgres", e.to_string())
            } else {
                HandlerError::Fatal(e.to_string())
            }
        })?;
        Ok(dead)
    }
}
