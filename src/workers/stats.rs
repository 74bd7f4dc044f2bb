//! The stats consumer: keeps sales per product per day from `order.stats.v1`
//! (deduplicated by `order_id`) for "popular products". It reads only the
//! topic, so replaying the topic into an empty store gives the same answer.

use async_trait::async_trait;
use sqlx::PgPool;
use tracing::{debug, info_span, warn};

use crate::domain::messages::OrderStats;
use crate::domain::validate::Validate;
use crate::kafka::dlq::dead_letter;
use crate::kafka::handler::{BatchHandler, HandlerError};
use crate::kafka::turns::Turn;
use crate::kafka::Incoming;
use crate::kafka::OutMessage;
use crate::store::stats;
use crate::telemetry::error_chain;
use crate::telemetry::trace_context;

/// A stats event, read and checked against what the store can hold.
fn decode_event(bytes: &[u8]) -> Result<OrderStats, String> {
    let event: OrderStats =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid OrderStats: {e}"))?;
    event
        .validate()
        .map_err(|reason| format!("not a valid OrderStats: {reason}"))?;
    Ok(event)
}

pub struct StatsConsumer {
    pub db: PgPool,
}

#[async_trait]
impl BatchHandler for StatsConsumer {
    async fn handle(
        &self,
        batch: &[Incoming],
        _turn: Turn<'_>,
    ) -> Result<Vec<OutMessage>, HandlerError> {
        let mut events = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for message in batch {
            match message.payload.as_deref().map(decode_event) {
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
                    events.push((event, message))
                }
                Some(Err(e)) => {
                    warn!(partition = message.partition, offset = message.offset, error = %e, "unreadable stats event sent to the DLQ");
                    dead.push(dead_letter(message, &e));
                }
                None => dead.push(dead_letter(message, "message has no payload")),
            }
        }
        let all: Vec<OrderStats> = events.iter().map(|(e, _)| e.clone()).collect();
        match stats::record(&self.db, &all).await {
            Ok(_) => {}
            Err(e) if e.is_retryable() => return Err(HandlerError::retryable("postgres", e)),
            // Something in the batch will never be recorded: find it by
            // recording one event at a time, and dead-letter only that.
            Err(e) => {
                warn!(error = %error_chain(&e), size = events.len(), "stats batch failed for good; recording its events one by one");
                for (event, message) in &events {
                    match stats::record(&self.db, std::slice::from_ref(event)).await {
                        Ok(_) => {}
                        Err(e) if e.is_retryable() => {
                            return Err(HandlerError::retryable("postgres", e))
                        }
                        Err(e) => {
                            warn!(order_id = event.order_id, error = %error_chain(&e), "stats event the store refuses sent to the DLQ");
                            dead.push(dead_letter(
                                message,
                                &format!("not recorded: {}", error_chain(&e)),
                            ));
                        }
                    }
                }
            }
        }
        Ok(dead)
    }
}
