//! What a worker plugs into the consumer loop: the handler of a batch, and
//! the two ways handling can fail.

use async_trait::async_trait;

use super::incoming::Incoming;
use super::producer::OutMessage;
use super::turns::Turn;

/// Any error, kept with its chain of causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure while handling a batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency hiccup (database, Redis, broker): the same batch is
    /// retried. `cause` names the dependency, for the retry metric.
    #[error("{cause} failed")]
    Retryable {
        cause: &'static str,
        #[source]
        source: BoxError,
    },
    /// Nothing can be done by retrying: the worker stops without storing offsets.
    #[error("the batch cannot be handled")]
    Fatal(#[source] BoxError),
}

impl HandlerError {
    pub fn retryable(cause: &'static str, source: impl Into<BoxError>) -> Self {
        HandlerError::Retryable {
            cause,
            source: source.into(),
        }
    }

    pub fn fatal(source: impl Into<BoxError>) -> Self {
        HandlerError::Fatal(source.into())
    }
}

/// What a worker does with a batch.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    /// Makes the effects of the batch durable and returns what to publish.
    /// `turn` orders it among the batches in flight ([`Self::in_flight`]).
    async fn handle(
        &self,
        batch: &[Incoming],
        turn: Turn<'_>,
    ) -> Result<Vec<OutMessage>, HandlerError>;

    /// How many batches may be handled at once: above 1 only for a handler
    /// that keeps to its [`Turn`] (decides, then records, in batch order).
    fn in_flight(&self) -> usize {
        1
    }

    /// When a message counts as accepted, for first come, first served
    /// across partitions: by default its Kafka timestamp (unstamped last).
    fn accepted_ms(&self, message: &Incoming) -> i64 {
        message.timestamp_ms.unwrap_or(i64::MAX)
    }
}
