//! First come, first served across partitions.
//!
//! Requests are spread over partitions by user, and the broker hands a
//! consumer its partitions in chunks: a fetch brings up to a megabyte of one
//! partition, then of the next. Deciding messages in the order they arrive
//! would let a request from the partition fetched first win over an earlier
//! one from a partition fetched a moment later. The merger keeps a lane per
//! assigned partition and hands out batches in acceptance order across them:
//! a message is released only when no other lane can still bring an earlier
//! one — each lane has messages waiting (all later than it, as a partition is
//! in acceptance order), or last brought one later than it, or has brought
//! nothing for `wait` (it is idle, or its broker is slow: waiting longer
//! would stall everything behind one partition). So across the partitions of
//! one process, a request accepted more than `wait` before another is
//! decided first unless its partition fell further behind than `wait`.
//!
//! Other processes of the same group decide their own partitions. Each
//! process reports its *frontier* — the earliest acceptance time it may
//! still decide — and learns the earliest frontier of the others (the
//! *floor*, through [`Frontiers`]); it holds back messages accepted more
//! than `wait` after the floor. So partitions cannot drift apart by more than
//! `wait` across processes either; a process that stops reporting is not
//! waited for.
//!
//! Memory is bounded: with `cap` messages held, the earliest are released
//! whatever the lanes say. A lane's messages are dropped when its partition is
//! revoked: its next owner reads them again from the committed offset.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::incoming::Incoming;

/// Where the processes of one consumer group tell each other how far they
/// have come.
#[async_trait]
pub trait Frontiers: Send + Sync + std::fmt::Debug {
    /// Reports this process's frontier (an acceptance time, ms since the
    /// epoch) and returns the earliest frontier among the other live
    /// processes, `None` when there are none. An error means "unknown": the
    /// caller decides without a floor.
    async fn exchange(&self, frontier: i64) -> anyhow::Result<Option<i64>>;
}

/// A change of the consumer's assignment, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// What [`Merger::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Messages to decide now, in acceptance order.
    Batch(Vec<Incoming>),
    /// Messages are held for a lane that may bring earlier ones; ask again
    /// when a message arrives or at this instant.
    WaitUntil(Instant),
    /// Messages are held because another process of the group is more
    /// than `wait` behind: ask again after its next report.
    BehindGroup,
    /// Nothing is held.
    Empty,
}

#[derive(Debug)]
struct Lane {
    topic: String,
    partition: i32,
    queue: VecDeque<Incoming>,
    /// Acceptance time of the last message this lane brought.
    last_accepted: i64,
    /// When it last brought one (or was assigned).
    last_delivery: Instant,
}

impl Lane {
    fn new(topic: String, partition: i32, now: Instant) -> Self {
        Self {
            topic,
            partition,
            queue: VecDeque::new(),
            last_accepted: i64::MIN,
            last_delivery: now,
        }
    }

    /// The instant until which this empty lane may still bring a message
    /// accepted before `accepted`, or `None` when it cannot.
    fn holds_back(&self, accepted: i64, wait: Duration, now: Instant) -> Option<Instant> {
        let until = self.last_delivery + wait;
        (self.queue.is_empty() && self.last_accepted < accepted && now < until).then_some(until)
    }

    /// The earliest acceptance time this lane may still bring to be
    /// decided: its first held message, or — while it may still deliver —
    /// its last one; `None` when it is quiet and empty.
    fn frontier(&self, wait: Duration, now: Instant) -> Option<i64> {
        match self.queue.front() {
            Some(first) => Some(first.accepted_ms),
            None => (now < self.last_delivery + wait).then_some(self.last_accepted),
        }
    }
}

/// Per-partition lanes merged into batches in acceptance order.
#[derive(Debug)]
pub struct Merger {
    lanes: Vec<Lane>,
    held: usize,
    batch: usize,
    cap: usize,
    wait: Duration,
    /// The other processes' earliest frontier, when known.
    floor: Option<i64>,
}

impl Merger {
    /// Batches of at most `batch` messages; at most `cap` (≥ `batch`) held;
    /// an empty lane is waited for at most `wait` after it last brought one.
    pub fn new(batch: usize, cap: usize, wait: Duration) -> Self {
        Self {
            lanes: Vec::new(),
            held: 0,
            batch: batch.max(1),
            cap: cap.max(batch).max(1),
            wait,
            floor: None,
        }
    }

    /// What the other processes of the group reported last (`None`: no
    /// other process, or unknown).
    pub fn set_floor(&mut self, floor: Option<i64>) {
        self.floor = floor;
    }

    /// The earliest acceptance time this process may still decide; `now_ms`
    /// (the wall clock) when no lane holds or may bring anything.
    pub fn frontier(&self, now: Instant, now_ms: i64) -> i64 {
        self.lanes
            .iter()
            .filter_map(|lane| lane.frontier(self.wait, now))
            .min()
            .unwrap_or(now_ms)
    }

    /// Messages held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// No more messages should be taken in until a batch is handed out.
    pub fn is_full(&self) -> bool {
        self.held >= self.cap
    }

    /// Follows the consumer's assignment: assigned lanes start waiting for
    /// their first message; revoked lanes drop what they hold.
    pub fn apply(&mut self, change: Assignment, now: Instant) {
        match change {
            Assignment::Assigned(partitions) => {
                for (topic, partition) in partitions {
                    if self.lane_index(&topic, partition).is_none() {
                        self.lanes.push(Lane::new(topic, partition, now));
                    }
                }
            }
            Assignment::Revoked(partitions) => {
                let held = &mut self.held;
                self.lanes.retain(|lane| {
                    let revoked = partitions
                        .iter()
                        .any(|(t, p)| *t == lane.topic && *p == lane.partition);
                    if revoked {
                        *held -= lane.queue.len();
                    }
                    !revoked
                });
            }
        }
    }

    /// Takes in a message, whose `accepted_ms` is set.
    pub fn push(&mut self, message: Incoming, now: Instant) {
        let index = match self.lane_index(&message.topic, message.partition) {
            Some(index) => index,
            None => {
                self.lanes
                    .push(Lane::new(message.topic.to_string(), message.partition, now));
                self.lanes.len() - 1
            }
        };
        let lane = &mut self.lanes[index];
        lane.last_accepted = lane.last_accepted.max(message.accepted_ms);
        lane.last_delivery = now;
        lane.queue.push_back(message);
        self.held += 1;
    }

    /// The next batch, in acceptance order, of messages no lane can still
    /// precede.
    pub fn take(&mut self, now: Instant) -> Take {
        if self.held == 0 {
            return Take::Empty;
        }
        // Past the cap the earliest held go, whatever may still come.
        let forced = self.is_full();
        let mut out = Vec::with_capacity(self.batch.min(self.held));
        while out.len() < self.batch {
            let Some(next) = self.earliest_head() else {
                break;
            };
            let accepted = self.lanes[next].queue[0].accepted_ms;
            if !forced {
                let held_back = self
                    .lanes
                    .iter()
                    .filter_map(|lane| lane.holds_back(accepted, self.wait, now))
                    .min();
                if let Some(until) = held_back {
                    if out.is_empty() {
                        return Take::WaitUntil(until);
                    }
                    break;
                }
                // Too far ahead of another process: wait for its next report.
                if self
                    .floor
                    .is_some_and(|floor| accepted > floor.saturating_add(self.wait_ms()))
                {
                    if out.is_empty() {
                        return Take::BehindGroup;
                    }
                    break;
                }
            }
            if let Some(message) = self.lanes[next].queue.pop_front() {
                out.push(message);
                self.held -= 1;
            }
        }
        if out.is_empty() {
            Take::Empty
        } else {
            Take::Batch(out)
        }
    }

    /// The lane whose first message was accepted earliest.
    fn earliest_head(&self) -> Option<usize> {
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.queue.front().map(|m| ((m.accepted_ms, i), i)))
            .min()
            .map(|(_, i)| i)
    }

    fn wait_ms(&self) -> i64 {
        i64::try_from(self.wait.as_millis()).unwrap_or(i64::MAX)
    }

    fn lane_index(&self, topic: &str, partition: i32) -> Option<usize> {
        self.lanes
            .iter()
            .position(|lane| lane.partition == partition && lane.topic == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WAIT: Duration = Duration::from_millis(20);

    fn msg(partition: i32, offset: i64, accepted_ms: i64) -> Incoming {
        Incoming {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp_ms: Some(accepted_ms),
            accepted_ms,
        }
    }

    fn assigned(partitions: &[i32]) -> Assignment {
        Assignment::Assigned(partitions.iter().map(|p| ("t".to_owned(), *p)).collect())
    }

    fn order(take: Take) -> Vec<(i32, i64)> {
        match take {
            Take::Batch(b) => b.iter().map(|m| (m.partition, m.offset)).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn a_partition_fetched_first_does_not_win_over_an_earlier_one() {
        let t0 = Instant::now();
        let mut merger = Merger::new(3, 100, WAIT);
        merger.apply(assigned(&[0, 1]), t0);
        // Partition 0's chunk arrives first: its messages wait for partition 1.
        for (offset, at) in [(0, 10), (1, 30), (2, 50)] {
            merger.push(msg(0, offset, at), t0);
        }
        assert_eq!(merger.take(t0), Take::WaitUntil(t0 + WAIT));
        for (offset, at) in [(0, 20), (1, 40)] {
            merger.push(msg(1, offset, at), t0);
        }
        // 10, 20, 30: then 40 could go, but the batch is full.
        assert_eq!(order(merger.take(t0)), vec![(0, 0), (1, 0), (0, 1)]);
        // 40 goes; 50 waits, as partition 1 may still bring something before it.
        assert_eq!(order(merger.take(t0)), vec![(1, 1)]);
        assert_eq!(merger.take(t0), Take::WaitUntil(t0 + WAIT));
        // Partition 1 stays quiet for the wait: 50 goes.
        assert_eq!(order(merger.take(t0 + WAIT)), vec![(0, 2)]);
        assert_eq!(merger.take(t0 + WAIT), Take::Empty);
    }

    #[test]
    fn a_quiet_partition_holds_nothing_back() {
        let t0 = Instant::now();
        let mut merger = Merger::new(10, 100, WAIT);
        merger.apply(assigned(&[0, 1]), t0);
        let later = t0 + WAIT * 3;
        merger.push(msg(0, 0, 5), later);
        assert_eq!(order(merger.take(later)), vec![(0, 0)]);
    }

    #[test]
    fn a_lane_that_already_brought_a_later_message_holds_nothing_back() {
        let t0 = Instant::now();
        let mut merger = Merger::new(10, 100, WAIT);
        merger.apply(assigned(&[0, 1]), t0);
        merger.push(msg(1, 0, 100), t0);
        assert_eq!(merger.take(t0), Take::WaitUntil(t0 + WAIT));
        merger.push(msg(0, 0, 50), t0);
        merger.push(msg(0, 1, 90), t0);
        // Partition 0 last brought 90: 100 still waits for it.
        assert_eq!(order(merger.take(t0)), vec![(0, 0), (0, 1)]);
        merger.push(msg(0, 2, 120), t0);
        assert_eq!(order(merger.take(t0)), vec![(1, 0)]);
    }

    #[test]
    fn past_the_cap_the_earliest_go() {
        let t0 = Instant::now();
        let mut merger = Merger::new(2, 3, WAIT);
        merger.apply(assigned(&[0, 1]), t0);
        for offset in 0..3 {
            merger.push(msg(0, offset, offset), t0);
        }
        assert!(merger.is_full());
        assert_eq!(order(merger.take(t0)), vec![(0, 0), (0, 1)]);
        assert_eq!(merger.take(t0), Take::WaitUntil(t0 + WAIT));
    }

    #[test]
    fn a_revoked_partition_drops_what_it_held() {
        let t0 = Instant::now();
        let mut merger = Merger::new(10, 100, Duration::ZERO);
        merger.apply(assigned(&[0, 1]), t0);
        merger.push(msg(0, 0, 1), t0);
        merger.push(msg(1, 0, 2), t0);
        merger.apply(Assignment::Revoked(vec![("t".into(), 0)]), t0);
        assert_eq!(merger.held(), 1);
        assert_eq!(order(merger.take(t0)), vec![(1, 0)]);
    }

    #[test]
    fn nothing_goes_more_than_the_wait_ahead_of_another_process() {
        let t0 = Instant::now();
        let mut merger = Merger::new(10, 100, WAIT);
        merger.apply(assigned(&[0]), t0);
        merger.push(msg(0, 0, 1_000), t0);
        merger.push(msg(0, 1, 1_030), t0);
        // Another process has not decided past 1 000: 1 030 is 30 ms ahead.
        merger.set_floor(Some(1_000));
        assert_eq!(order(merger.take(t0)), vec![(0, 0)]);
        assert_eq!(merger.take(t0), Take::BehindGroup);
        // It moved on to 1 010: within the wait.
        merger.set_floor(Some(1_010));
        assert_eq!(order(merger.take(t0)), vec![(0, 1)]);
    }

    #[test]
    fn the_frontier_is_the_earliest_a_lane_may_still_bring() {
        let t0 = Instant::now();
        let mut merger = Merger::new(10, 100, WAIT);
        assert_eq!(merger.frontier(t0, 5_000), 5_000, "nothing assigned");
        merger.apply(assigned(&[0, 1]), t0);
        merger.push(msg(0, 0, 300), t0);
        merger.push(msg(1, 0, 200), t0);
        assert_eq!(merger.frontier(t0, 5_000), 200);
        assert_eq!(order(merger.take(t0)), vec![(1, 0)]);
        // Partition 1 is empty but may still bring something after 200.
        assert_eq!(merger.frontier(t0, 5_000), 200);
        // Quiet for the wait: partition 0's 300 is next, then nothing.
        assert_eq!(merger.frontier(t0 + WAIT, 5_000), 300);
        assert_eq!(order(merger.take(t0 + WAIT)), vec![(0, 0)]);
        assert_eq!(merger.frontier(t0 + WAIT, 5_000), 5_000);
    }

    proptest! {
        /// Whatever the arrival interleaving: every message comes out exactly
        /// once, each partition in offset order, and — once every lane has
        /// brought everything — all in acceptance order.
        #[test]
        fn batches_keep_partition_order_and_follow_acceptance(
            times in proptest::collection::vec(proptest::collection::vec(0i64..1_000, 0..30), 1..5),
            arrival in proptest::collection::vec(0usize..5, 0..200),
            batch in 1usize..20,
        ) {
            let t0 = Instant::now();
            let mut merger = Merger::new(batch, 10_000, WAIT);
            let partitions: Vec<i32> = (0..times.len() as i32).collect();
            merger.apply(assigned(&partitions), t0);
            // Each partition in acceptance order, as a partition is.
            let lanes: Vec<Vec<i64>> = times.iter().map(|t| { let mut t = t.clone(); t.sort(); t }).collect();
            let mut next = vec![0usize; lanes.len()];
            let mut out = Vec::new();
            let mut arrivals = arrival.into_iter();
            loop {
                // Deliver one message from the partition chosen, or from any with some left.
                let pick = arrivals.next().map(|p| p % lanes.len());
                let lane = pick.filter(|p| next[*p] < lanes[*p].len())
                    .or_else(|| (0..lanes.len()).find(|p| next[*p] < lanes[*p].len()));
                let Some(p) = lane else { break };
                merger.push(msg(p as i32, next[p] as i64, lanes[p][next[p]]), t0);
                next[p] += 1;
                if let Take::Batch(b) = merger.take(t0) {
                    out.extend(b.into_iter().map(|m| (m.partition, m.offset, m.accepted_ms)));
                }
            }
            // Everything delivered: the rest goes once the lanes are quiet.
            loop {
                match merger.take(t0 + WAIT) {
                    Take::Batch(b) => out.extend(b.into_iter().map(|m| (m.partition, m.offset, m.accepted_ms))),
                    Take::Empty => break,
                    Take::WaitUntil(_) | Take::BehindGroup => prop_assert!(false, "quiet lanes hold nothing back"),
                }
            }
            let total: usize = lanes.iter().map(Vec::len).sum();
            prop_assert_eq!(out.len(), total);
            for p in 0..lanes.len() as i32 {
                let offsets: Vec<i64> = out.iter().filter(|m| m.0 == p).map(|m| m.1).collect();
                prop_assert_eq!(offsets, (0..lanes[p as usize].len() as i64).collect::<Vec<_>>());
            }
            prop_assert!(out.windows(2).all(|w| w[0].2 <= w[1].2), "acceptance order: {:?}", out);
        }
    }
}
