//! When a connection has gone idle: no request in flight, and none ended
//! for a whole deadline. hyper closes an idle HTTP/1.1 keep-alive
//! connection itself (its header deadline), but has no such deadline for
//! HTTP/2, where a client may open a connection, send nothing more and
//! hold a file descriptor for good. The server asks [`Activity::idle`] for
//! every connection, whatever its protocol, and closes it gracefully then.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// One connection's requests: how many are in flight, and when the last
/// one ended.
#[derive(Debug)]
pub(super) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request.
    last_ms: AtomicU64,
}

/// A request in flight; its drop (answered, or abandoned by the client)
/// marks the connection active as of then.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Counts the deadline from now, as if a request had just ended.
    pub(super) fn restart(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(now, Ordering::AcqRel);
    }

    /// Resolves once the connection has had no request in flight for
    /// `limit`. Wakes once per `limit` at most while requests come.
    pub(super) async fn idle(&self, limit: Duration) {
        loop {
            let since = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Acquire));
            let now = Instant::now();
            let wake = if self.in_flight.load(Ordering::Acquire) > 0 {
                now + limit
            } else if now >= since + limit {
                return;
            } else {
                since + limit
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.restart();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    async fn idle_after(activity: &Activity) -> Duration {
        let started = Instant::now();
        activity.idle(LIMIT).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_at_the_deadline() {
        let activity = Activity::new();
        assert_eq!(idle_after(&activity).await, LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_last_request_s_end() {
        let activity = Activity::new();
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(activity.begin());
        assert_eq!(idle_after(&activity).await, LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_however_long_it_takes() {
        let activity = Activity::new();
        let request = activity.begin();
        let answered = async {
            tokio::time::sleep(LIMIT * 3).await;
            drop(request);
        };
        let started = Instant::now();
        tokio::join!(answered, activity.idle(LIMIT));
        assert!(started.elapsed() >= LIMIT * 4, "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_counts_a_whole_deadline_again() {
        let activity = Activity::new();
        activity.idle(LIMIT).await;
        activity.restart();
        assert_eq!(idle_after(&activity).await, LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_ending_out_of_order_keep_the_latest_end() {
        let activity = Activity::new();
        let (first, second) = (activity.begin(), activity.begin());
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(second);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(first);
        assert_eq!(idle_after(&activity).await, LIMIT);
    }
}
