//! One worker per flow, each wiring the pure rules of [`crate::domain`] to the
//! adapters ([`crate::counters`], [`crate::store`], [`crate::kafka`]). The
//! shared request pipeline lives in [`pipeline`].

pub mod charge;
pub mod counter_watch;
pub mod coupon;
pub mod fairness;
pub mod order;
pub mod outbox;
pub mod pipeline;
pub mod retention;
pub mod stats;

use std::str::FromStr;

use crate::counters::CounterError;
use crate::kafka::handler::HandlerError;
use crate::store::StoreError;

/// Which workers a process runs (`worker --only charge,coupon,order,stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    Charge,
    Coupon,
    Order,
    Stats,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 4] = [
        WorkerKind::Charge,
        WorkerKind::Coupon,
        WorkerKind::Order,
        WorkerKind::Stats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Charge => "charge",
            WorkerKind::Coupon => "coupon",
            WorkerKind::Order => "order",
            WorkerKind::Stats => "stats",
        }
    }
}

impl FromStr for WorkerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown worker {s:?}; choose from charge, coupon, order, stats")
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Counters(#[from] CounterError),
    #[error("could not encode a message")]
    Encode(#[from] serde_json::Error),
    /// Redis lacks counter state it should hold (lost, or not loaded yet):
    /// reloading it from PostgreSQL on the next try fixes it.
    #[error("{0}")]
    NotLoaded(String),
    /// A rule that must always hold did not: a bug or corrupted state. Never
    /// retried in place; the request that meets it is isolated, its counters
    /// given back, and it goes to the DLQ.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

impl From<crate::reconcile::ReconcileError> for WorkerError {
    fn from(e: crate::reconcile::ReconcileError) -> Self {
        match e {
            crate::reconcile::ReconcileError::Store(e) => WorkerError::Store(e),
            crate::reconcile::ReconcileError::Counters(e) => WorkerError::Counters(e),
        }
    }
}

impl WorkerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Store(e) => e.is_retryable(),
            WorkerError::Counters(e) => e.is_retryable(),
            WorkerError::NotLoaded(_) => true,
            WorkerError::Invariant(_) | WorkerError::Encode(_) => false,
        }
    }
}

impl From<WorkerError> for HandlerError {
    fn from(e: WorkerError) -> Self {
        if e.is_retryable() {
            let cause = match &e {
                WorkerError::Counters(_) => "redis",
                WorkerError::NotLoaded(_) => "redis_state",
                _ => "postgres",
            };
            HandlerError::retryable(cause, e)
        } else {
            HandlerError::fatal(e)
        }
    }
}
