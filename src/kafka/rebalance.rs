//! The worker consumer's context: offsets committed before partitions are
//! taken away, the assignment followed for the batch merger and `/readyz`,
//! consumer lag from librdkafka's statistics.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::merge::Assignment;
use crate::telemetry::metrics;

/// Whether a consumer holds an assignment: set and cleared by its
/// rebalance callbacks, read by `/readyz`, and awaited by whoever must not
/// start before the consumer holds its partitions.
#[derive(Clone, Debug)]
pub struct Joined(Arc<watch::Sender<bool>>);

impl Default for Joined {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Joined {
    /// Whether the consumer holds an assignment now.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    fn set(&self, joined: bool) {
        self.0.send_replace(joined);
    }

    /// Resolves once the consumer holds an assignment (at once when it
    /// does already).
    pub async fn assigned(&self) {
        // The sender lives in `self`, so the wait ends only with the value.
        let _ = self.0.subscribe().wait_for(|joined| *joined).await;
    }
}

/// Commits stored offsets before partitions are taken away, so the next owner
/// starts exactly after what this worker finished.
pub struct CommitOnRevoke {
    worker: String,
    joined: Joined,
    /// Assignment changes not yet applied to the batch merger, in order.
    changes: Mutex<Vec<Assignment>>,
}

impl CommitOnRevoke {
    /// The context of worker `worker`'s consumer; `joined` is set while it
    /// holds an assignment.
    pub fn new(worker: impl Into<String>, joined: Joined) -> Self {
        Self {
            worker: worker.into(),
            joined,
            changes: Mutex::new(Vec::new()),
        }
    }

    /// Assignment changes since the last call, oldest first.
    pub(super) fn take_changes(&self) -> Vec<Assignment> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn record(&self, change: Assignment) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change);
    }
}

fn partition_list(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    partitions
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for CommitOnRevoke {
    /// librdkafka's periodic statistics: consumer lag per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::consumer_lag(&self.worker, topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                info!(worker = %self.worker, partitions = partitions.count(), "partitions revoked, committing");
                commit_stored(consumer, &self.worker);
                self.record(Assignment::Revoked(partition_list(partitions)));
                metrics::assigned_partitions(&self.worker, 0);
                self.joined.set(false);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(worker = %self.worker, error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            info!(worker = %self.worker, partitions = partitions.count(), "partitions assigned");
            metrics::assigned_partitions(&self.worker, partitions.count());
            self.record(Assignment::Assigned(partition_list(partitions)));
            self.joined.set(true);
        }
    }
}

pub(super) fn commit_stored<C: Consumer<CommitOnRevoke>>(consumer: &C, worker: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => debug!(worker, "offsets committed"),
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => warn!(worker, error = %e, "offset commit failed; the next owner may redeliver"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Joined;

    #[tokio::test]
    async fn a_wait_for_the_assignment_ends_when_it_comes_and_not_before() {
        let joined = Joined::default();
        assert!(!joined.is_set());
        let waiting = tokio::spawn({
            let joined = joined.clone();
            async move { joined.assigned().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no assignment yet");
        joined.set(true);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the assignment")
            .unwrap();
        assert!(joined.is_set());
        // Already assigned: no wait at all.
        tokio::time::timeout(Duration::from_secs(5), joined.assigned())
            .await
            .expect("at once");
        joined.set(false);
        assert!(!joined.is_set());
    }
}
