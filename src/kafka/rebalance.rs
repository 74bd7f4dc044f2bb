//! The worker consumer's context: offsets committed before partitions are
//! taken away, the assignment followed for the batch merger and `/readyz`,
//! consumer lag from librdkafka's statistics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{debug, info, warn};

use super::merge::Assignment;
use crate::telemetry::metrics;

/// Commits stored offsets before partitions are taken away, so the next owner
/// starts exactly after what this worker finished.
pub struct CommitOnRevoke {
    worker: String,
    joined: Arc<AtomicBool>,
    /// Assignment changes not yet applied to the batch merger, in order.
    changes: Mutex<Vec<Assignment>>,
}

impl CommitOnRevoke {
    /// The context of worker `worker`'s consumer; `joined` is set while it
    /// holds an assignment.
    pub fn new(worker: impl Into<String>, joined: Arc<AtomicBool>) -> Self {
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
                self.joined.store(false, Ordering::Relaxed);
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
            self.joined.store(true, Ordering::Relaxed);
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
