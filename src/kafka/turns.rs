//! Two batches of one consumer in flight at once, without giving up order.
//!
//! A handler can split a batch into two steps: *deciding* (reading what the
//! batch needs and taking its decisions, e.g. on the Redis counters) and
//! *recording* (making them durable in PostgreSQL). Batch n+1 may then be
//! decided while batch n is recorded, on another core. Both steps still
//! happen in batch order: batch n+1 starts deciding only once batch n has
//! decided, and records only once batch n has recorded. A batch retried after
//! a failure keeps its turn: what it already passed it does not wait for again.
//!
//! A request id in batch n+1 that batch n is still recording would be looked
//! up before its result is stored: batch n holds its keys
//! ([`Turn::hold`]) and batch n+1 waits for them to be recorded
//! ([`Turn::wait_if_held`]) before it looks anything up.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use tokio::sync::watch;

/// The order of one consumer's batches: how far deciding and recording have come.
#[derive(Debug)]
pub struct Turns {
    /// Every batch up to this one has decided.
    decided: watch::Sender<u64>,
    /// Every batch up to this one has recorded.
    recorded: watch::Sender<u64>,
    /// Keys (hashed) of batches that decided and are not recorded yet.
    held: Mutex<Vec<(u64, HashSet<u64>)>>,
    hasher: RandomState,
}

impl Default for Turns {
    fn default() -> Self {
        Self {
            decided: watch::Sender::new(0),
            recorded: watch::Sender::new(0),
            held: Mutex::default(),
            hasher: RandomState::new(),
        }
    }
}

impl Turns {
    /// The turn of batch `seq` (1, 2, 3, … in the order batches are taken).
    pub fn turn(&self, seq: u64) -> Turn<'_> {
        Turn { seq, turns: self }
    }

    /// Whether every batch up to `seq` has decided.
    pub fn is_decided(&self, seq: u64) -> bool {
        *self.decided.borrow() >= seq
    }

    /// Resolves once every batch up to `seq` has decided.
    pub async fn decided(&self, seq: u64) {
        let mut rx = self.decided.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = rx.wait_for(|&d| d >= seq).await;
    }

    async fn recorded(&self, seq: u64) {
        let mut rx = self.recorded.subscribe();
        let _ = rx.wait_for(|&r| r >= seq).await;
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<(u64, HashSet<u64>)>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One batch's place in [`Turns`]. A handler called outside a consumer loop
/// uses [`Turn::alone`].
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    seq: u64,
    turns: &'a Turns,
}

impl<'a> Turn<'a> {
    /// The first turn of a fresh [`Turns`]: nothing to wait for.
    pub fn alone(turns: &'a Turns) -> Self {
        turns.turn(*turns.decided.borrow() + 1)
    }

    /// Waits until the batch before this one has decided.
    pub async fn to_decide(&self) {
        self.turns.decided(self.seq - 1).await;
    }

    /// Hashes `keys` for [`Turn::hold`] and [`Turn::wait_if_held`].
    pub fn keys<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> HashSet<u64> {
        keys.into_iter()
            .map(|k| self.turns.hasher.hash_one(k))
            .collect()
    }

    /// Waits until no earlier batch still recording holds one of `keys`.
    pub async fn wait_if_held(&self, keys: &HashSet<u64>) {
        let held_by_earlier = self
            .turns
            .held()
            .iter()
            .any(|(seq, held)| *seq < self.seq && !held.is_disjoint(keys));
        if held_by_earlier {
            self.turns.recorded(self.seq - 1).await;
        }
    }

    /// Holds `keys` until this batch has recorded.
    pub fn hold(&self, keys: HashSet<u64>) {
        let mut held = self.turns.held();
        held.retain(|(seq, _)| *seq != self.seq);
        held.push((self.seq, keys));
    }

    /// Waits until the batch before this one has recorded (without letting
    /// the next one decide yet).
    pub async fn previous_recorded(&self) {
        self.turns.recorded(self.seq - 1).await;
    }

    /// This batch has decided: the next one may decide while this one waits
    /// for the batch before it to record.
    pub async fn to_record(&self) {
        self.turns.decided.send_modify(|d| *d = (*d).max(self.seq));
        self.turns.recorded(self.seq - 1).await;
    }

    /// This batch has recorded; its keys are let go.
    pub async fn recorded(&self) {
        self.to_record().await;
        self.turns.held().retain(|(seq, _)| *seq != self.seq);
        self.turns.recorded.send_modify(|r| *r = (*r).max(self.seq));
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// Polls `future` once: `true` if it is done (a wait that is satisfied
    /// is done at its first poll).
    async fn finishes<F: std::future::Future>(future: F) -> bool {
        future.now_or_never().is_some()
    }

    #[tokio::test]
    async fn the_next_batch_decides_once_the_previous_has_decided() {
        let turns = Turns::default();
        let (first, second) = (turns.turn(1), turns.turn(2));
        first.to_decide().await;
        assert!(
            !finishes(second.to_decide()).await,
            "batch 1 has not decided"
        );
        first.to_record().await;
        assert!(finishes(second.to_decide()).await);
        assert!(turns.is_decided(1) && !turns.is_decided(2));
    }

    #[tokio::test]
    async fn a_batch_records_only_after_the_previous_has_recorded() {
        let turns = Turns::default();
        let (first, second) = (turns.turn(1), turns.turn(2));
        first.to_record().await;
        second.to_decide().await;
        assert!(!finishes(second.to_record()).await, "batch 1 still records");
        assert!(turns.is_decided(2), "batch 2's decisions are taken");
        first.recorded().await;
        assert!(finishes(second.to_record()).await);
        second.recorded().await;
        assert!(finishes(turns.turn(3).to_record()).await);
    }

    #[tokio::test]
    async fn a_retried_batch_does_not_wait_for_what_it_passed() {
        let turns = Turns::default();
        let (first, second) = (turns.turn(1), turns.turn(2));
        first.to_record().await;
        second.to_decide().await;
        // Batch 1 failed while recording and is handled again: batch 2 has
        // decided meanwhile, batch 1 must not wait for it.
        assert!(finishes(first.to_decide()).await);
        assert!(finishes(first.to_record()).await);
        first.recorded().await;
        assert!(finishes(second.to_record()).await);
    }

    #[tokio::test]
    async fn a_key_held_by_a_batch_still_recording_is_waited_for() {
        let turns = Turns::default();
        let (first, second) = (turns.turn(1), turns.turn(2));
        first.hold(first.keys(["a", "b"]));
        first.to_record().await;
        second.to_decide().await;
        assert!(finishes(second.wait_if_held(&second.keys(["c"]))).await);
        assert!(!finishes(second.wait_if_held(&second.keys(["c", "b"]))).await);
        first.recorded().await;
        assert!(finishes(second.wait_if_held(&second.keys(["b"]))).await);
    }

    #[tokio::test]
    async fn waiting_for_the_previous_batch_to_record_lets_no_later_batch_decide() {
        let turns = Turns::default();
        let (first, second, third) = (turns.turn(1), turns.turn(2), turns.turn(3));
        assert!(!finishes(second.previous_recorded()).await);
        first.recorded().await;
        assert!(finishes(second.previous_recorded()).await);
        assert!(
            !finishes(third.to_decide()).await,
            "batch 2 has not decided"
        );
        second.to_record().await;
        assert!(finishes(third.to_decide()).await);
    }

    #[tokio::test]
    async fn a_turn_alone_waits_for_nothing() {
        let turns = Turns::default();
        let alone = Turn::alone(&turns);
        assert!(
            finishes(async {
                alone.to_decide().await;
                alone.to_record().await;
                alone.recorded().await;
            })
            .await
        );
        assert!(finishes(Turn::alone(&turns).to_record()).await);
    }
}
