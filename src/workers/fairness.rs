//! First come, first served across the worker processes of one flow: each
//! reports, through Redis, the earliest acceptance time it may still decide,
//! and learns the earliest of the others ([`crate::kafka::merge`] holds back
//! what would run too far ahead of them).

use async_trait::async_trait;

use crate::counters::Counters;
use crate::kafka::merge::Frontiers;

/// A report older than this is from a process that stopped, was killed or
/// stalls: the others stop waiting for it.
pub const REPORT_FRESH_MS: u64 = 1_000;

/// One process's place among the processes of a consumer group.
#[derive(Clone)]
pub struct GroupFrontiers {
    counters: Counters,
    group: String,
    /// This process (and consumer), unique among the group's.
    member: String,
}

impl std::fmt::Debug for GroupFrontiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupFrontiers")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish()
    }
}

impl GroupFrontiers {
    pub fn new(counters: Counters, group: impl Into<String>) -> Self {
        Self {
            counters,
            group: group.into(),
            member: uuid::Uuid::now_v7().to_string(),
        }
    }
}

#[async_trait]
impl Frontiers for GroupFrontiers {
    async fn exchange(&self, frontier: i64) -> anyhow::Result<Option<i64>> {
        Ok(self
            .counters
            .report_frontier(&self.group, &self.member, frontier, REPORT_FRESH_MS)
            .await?)
    }
}
