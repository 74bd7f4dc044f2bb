//! Messages from the consumer's stream into batches: merged across the
//! assigned partitions in acceptance order ([`super::merge`]), and kept
//! within reach of the group's other processes by reporting frontiers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use tracing::{debug, warn};

use super::handler::BatchHandler;
use super::incoming::{Incoming, TopicName};
use super::merge::{Frontiers, Merger, Take};
use super::rebalance::CommitOnRevoke;

/// How often a busy process reports its frontier to the group (and learns
/// the others'), and how often an idle one says it is caught up.
const REPORT_EVERY: Duration = Duration::from_millis(5);
const REPORT_IDLE: Duration = Duration::from_millis(250);
/// A report that does not answer within this is skipped: fairness never
/// stalls a worker whose Redis is slow.
const REPORT_TIMEOUT: Duration = Duration::from_millis(100);

/// Messages from the stream, merged into batches in acceptance order.
pub(super) struct Intake {
    merger: Merger,
    topic_name: TopicName,
    frontiers: Option<Arc<dyn Frontiers>>,
    next_report: Instant,
}

impl Intake {
    pub(super) fn new(merger: Merger, frontiers: Option<Arc<dyn Frontiers>>) -> Self {
        Self {
            merger,
            topic_name: TopicName::default(),
            frontiers,
            next_report: Instant::now(),
        }
    }

    /// The next batch to decide, in acceptance order across the assigned
    /// partitions (and not far ahead of the group's other processes);
    /// `None` when the consumer's stream ended. Cancel-safe: every message
    /// taken from the stream is in the merger before the next await.
    pub(super) async fn next_batch(
        &mut self,
        stream: &mut MessageStream<'_, CommitOnRevoke>,
        consumer: &StreamConsumer<CommitOnRevoke>,
        handler: &dyn BatchHandler,
        worker: &str,
    ) -> Option<Vec<Incoming>> {
        loop {
            // Everything already fetched, up to the merger's bound.
            while !self.merger.is_full() {
                match stream.next().now_or_never() {
                    Some(message) => {
                        if !self.take_in(message, consumer, handler, worker) {
                            return None;
                        }
                    }
                    None => break,
                }
            }
            // A revoke seen while no message came must not let its lanes go.
            self.follow_assignment(consumer, Instant::now());
            self.report(false).await;
            // Until a message comes, or what is held may go, or (idle) it is
            // time to tell the group this process is caught up.
            let (wake, idle) = match self.merger.take(Instant::now()) {
                Take::Batch(batch) => return Some(batch),
                Take::Empty => (self.frontiers.as_ref().map(|_| REPORT_IDLE), true),
                Take::WaitUntil(until) => {
                    (Some(until.saturating_duration_since(Instant::now())), false)
                }
                Take::BehindGroup => (Some(REPORT_EVERY), false),
            };
            let message = match wake {
                None => stream.next().await,
                Some(after) => tokio::select! {
                    message = stream.next() => message,
                    _ = tokio::time::sleep(after) => {
                        if idle {
                            self.report(true).await;
                        }
                        continue;
                    }
                },
            };
            if !self.take_in(message, consumer, handler, worker) {
                return None;
            }
        }
    }

    /// Takes one message in, after the assignment changes that came before
    /// it. `false` when the stream ended.
    fn take_in(
        &mut self,
        message: Option<KafkaResult<BorrowedMessage<'_>>>,
        consumer: &StreamConsumer<CommitOnRevoke>,
        handler: &dyn BatchHandler,
        worker: &str,
    ) -> bool {
        let now = Instant::now();
        self.follow_assignment(consumer, now);
        match message {
            Some(Ok(m)) => {
                let mut incoming = Incoming::from_message(&m, &mut self.topic_name);
                incoming.accepted_ms = handler.accepted_ms(&incoming);
                self.merger.push(incoming, now);
                true
            }
            Some(Err(e)) => {
                warn!(worker, error = %e, "consumer error");
                true
            }
            None => false,
        }
    }

    fn follow_assignment(&mut self, consumer: &StreamConsumer<CommitOnRevoke>, now: Instant) {
        for change in consumer.context().take_changes() {
            self.merger.apply(change, now);
        }
    }

    /// Tells the group how far this process has come and learns how far the
    /// others have (at most every [`REPORT_EVERY`], unless `now`).
    async fn report(&mut self, now: bool) {
        let Some(frontiers) = &self.frontiers else {
            return;
        };
        let at = Instant::now();
        if !now && at < self.next_report {
            return;
        }
        self.next_report = at + REPORT_EVERY;
        let mine = self
            .merger
            .frontier(at, chrono::Utc::now().timestamp_millis());
        match tokio::time::timeout(REPORT_TIMEOUT, frontiers.exchange(mine)).await {
            Ok(Ok(floor)) => self.merger.set_floor(floor),
            Ok(Err(e)) => {
                debug!(
                    error = format!("{e:#}"),
                    "frontier report failed; deciding without the group's floor"
                );
                self.merger.set_floor(None);
                self.next_report = at + REPORT_IDLE;
            }
            Err(_) => {
                debug!("frontier report timed out; deciding without the group's floor");
                self.merger.set_floor(None);
                self.next_report = at + REPORT_IDLE;
            }
        }
    }
}
