//! Prometheus metrics: every name and label set lives here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Histogram, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::ErrorCode;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// Installs the Prometheus recorder once per process.
pub fn install() {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("stampede_batch_size".into()), SIZES)
            })
            .and_then(|b| b.install_recorder())
            .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
            .ok()
    });
}

/// Histogram samples recorded since they were last drained into buckets.
static UNDRAINED: AtomicU64 = AtomicU64::new(0);

/// The recorder keeps each histogram sample raw (16 bytes) until it is
/// drained into its buckets, which a scrape does — and a process nobody
/// scrapes would keep one per request for ever. Drained here every this many
/// samples instead, whether scraped or not.
const DRAIN_EVERY: u64 = 1 << 16;

/// Records `values` into `histogram`, draining every histogram's samples
/// into its buckets once [`DRAIN_EVERY`] have come.
fn record(histogram: &Histogram, values: impl IntoIterator<Item = f64>) {
    let mut samples = 0;
    for value in values {
        histogram.record(value);
        samples += 1;
    }
    if UNDRAINED.fetch_add(samples, Ordering::Relaxed) + samples >= DRAIN_EVERY {
        UNDRAINED.store(0, Ordering::Relaxed);
        if let Some(handle) = HANDLE.get().and_then(Option::as_ref) {
            handle.run_upkeep();
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    install();
    let mut text = HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    COUPON_STOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .render(Instant::now(), &mut text);
    text
}

pub fn batch_size(worker: &str, size: usize) {
    record(
        &histogram!("stampede_batch_size", "worker" => worker.to_owned()),
        [size as f64],
    );
}

/// A batch of `messages` (read from `topic`) handled in `elapsed`.
pub fn batch_done(worker: &str, topic: &str, messages: usize, elapsed: Duration) {
    record(
        &histogram!("stampede_batch_processing_seconds", "worker" => worker.to_owned()),
        [elapsed.as_secs_f64()],
    );
    if messages > 0 {
        counter!("stampede_messages_consumed_total", "worker" => worker.to_owned(), "topic" => topic.to_owned()).increment(messages as u64);
    }
}

/// Time into a batch at which a stage ended.
pub fn batch_stage(worker: &str, stage: &'static str, elapsed: Duration) {
    record(
        &histogram!("stampede_batch_stage_seconds", "worker" => worker.to_owned(), "stage" => stage),
        [elapsed.as_secs_f64()],
    );
}

pub fn retry(worker: &str, cause: &str) {
    counter!("stampede_retries_total", "worker" => worker.to_owned(), "cause" => cause.to_owned())
        .increment(1);
}

pub fn processed(flow: &str, code: Option<ErrorCode>) {
    processed_code(flow, code.map(ErrorCode::as_str), 1);
}

/// `count` requests of `flow` decided with `code` (`None`: succeeded).
pub fn processed_code(flow: &str, code: Option<&str>, count: u64) {
    counter!("stampede_requests_processed_total", "flow" => flow.to_owned(), "outcome" => code.unwrap_or("succeeded").to_owned()).increment(count);
}

pub fn replayed(flow: &str) {
    counter!("stampede_requests_replayed_total", "flow" => flow.to_owned()).increment(1);
}

/// An order batch decided again with its products locked first (see
/// [`crate::workers::order`]).
pub fn order_batch_redecided() {
    counter!("stampede_order_batches_redecided_total").increment(1);
}

pub fn dead_lettered(flow: &str) {
    counter!("stampede_dlq_messages_total", "flow" => flow.to_owned()).increment(1);
}

pub fn drift(entity: &str, amount: i64) {
    counter!("stampede_reconcile_drift_units_total", "entity" => entity.to_owned())
        .increment(amount.max(0) as u64);
}

pub fn stats_published(sent: usize, recovered: usize) {
    counter!("stampede_stats_events_published_total").increment(sent as u64);
    counter!("stampede_stats_events_recovered_total").increment(recovered as u64);
}

/// Write requests being handled now: +1 when one starts, -1 when it ends.
pub fn gateway_in_flight(change: f64) {
    gauge!("stampede_gateway_in_flight_requests").increment(change);
}

pub fn gateway_request(endpoint: &'static str, status: u16, code: &'static str) {
    counter!("stampede_gateway_requests_total", "endpoint" => endpoint, "status" => status_label(status), "code" => code).increment(1);
}

/// An HTTP status as a label value: the gateway's own statuses without an
/// allocation per request.
fn status_label(status: u16) -> SharedString {
    match status {
        202 => SharedString::const_str("202"),
        400 => SharedString::const_str("400"),
        401 => SharedString::const_str("401"),
        403 => SharedString::const_str("403"),
        404 => SharedString::const_str("404"),
        413 => SharedString::const_str("413"),
        422 => SharedString::const_str("422"),
        429 => SharedString::const_str("429"),
        503 => SharedString::const_str("503"),
        other => SharedString::from_owned(other.to_string()),
    }
}

pub fn consumer_lag(worker: &str, topic: &str, partition: i32, lag: i64) {
    gauge!("stampede_consumer_lag_messages", "worker" => worker.to_owned(), "topic" => topic.to_owned(), "partition" => partition.to_string()).set(lag as f64);
}

/// Publish → result: from each message's producer timestamp (ms since the
/// epoch) to now, when its result has been published.
pub fn request_latency(worker: &str, created_ms: impl IntoIterator<Item = i64>) {
    let now = chrono::Utc::now().timestamp_millis();
    let histogram = histogram!("stampede_request_latency_seconds", "flow" => worker.to_owned());
    record(
        &histogram,
        created_ms
            .into_iter()
            .map(|created| (now - created).max(0) as f64 / 1000.0),
    );
}

pub fn assigned_partitions(worker: &str, count: usize) {
    gauge!("stampede_consumer_assigned_partitions", "worker" => worker.to_owned())
        .set(count as f64);
}

/// Units of a coupon Redis still hands out, as last seen by this process.
pub fn coupon_stock(coupon_id: i64, left: i64) {
    COUPON_STOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set(coupon_id, left, Instant::now());
}

/// Coupons whose stock is shown (`stampede_coupon_stock_left{coupon_id}`):
/// the most recently decided ones only, so the series a process exposes stay
/// bounded however many coupons it ever saw.
const COUPON_SERIES: usize = 64;
/// A coupon nobody asked for in this long leaves the page.
const COUPON_SERIES_IDLE: Duration = Duration::from_secs(600);

static COUPON_STOCK: std::sync::Mutex<CouponStock> = std::sync::Mutex::new(CouponStock {
    coupons: Vec::new(),
});

/// The per-coupon gauge, kept out of the recorder (which would keep every
/// coupon_id it was ever given).
struct CouponStock {
    /// (coupon, units left, last set), at most [`COUPON_SERIES`].
    coupons: Vec<(i64, i64, Instant)>,
}

impl CouponStock {
    fn set(&mut self, coupon_id: i64, left: i64, now: Instant) {
        match self.coupons.iter_mut().find(|(id, _, _)| *id == coupon_id) {
            Some(entry) => *entry = (coupon_id, left, now),
            None => {
                if self.coupons.len() >= COUPON_SERIES {
                    // Make room by forgetting the coupon set longest ago.
                    if let Some(oldest) = (0..self.coupons.len()).min_by_key(|i| self.coupons[*i].2)
                    {
                        self.coupons.swap_remove(oldest);
                    }
                }
                self.coupons.push((coupon_id, left, now));
            }
        }
    }

    fn render(&mut self, now: Instant, text: &mut String) {
        self.coupons
            .retain(|(_, _, at)| now.duration_since(*at) < COUPON_SERIES_IDLE);
        if self.coupons.is_empty() {
            return;
        }
        self.coupons.sort_unstable();
        text.push_str("# TYPE stampede_coupon_stock_left gauge\n");
        for (id, left, _) in &self.coupons {
            text.push_str(&format!(
                "stampede_coupon_stock_left{{coupon_id=\"{id}\"}} {left}\n"
            ));
        }
        text.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coupon_stock_series_stay_bounded_and_leave_when_idle() {
        let t0 = Instant::now();
        let mut stock = CouponStock {
            coupons: Vec::new(),
        };
        for id in 0..1_000 {
            stock.set(id, id * 2, t0 + Duration::from_millis(id as u64));
        }
        stock.set(999, 5, t0 + Duration::from_secs(2));
        let mut text = String::new();
        stock.render(t0 + Duration::from_secs(3), &mut text);
        let series = text
            .lines()
            .filter(|l| l.starts_with("stampede_coupon_stock_left{"))
            .count();
        assert_eq!(series, COUPON_SERIES, "the most recent coupons only");
        assert!(
            text.contains("stampede_coupon_stock_left{coupon_id=\"999\"} 5\n"),
            "{text}"
        );
        assert!(!text.contains("coupon_id=\"0\""), "the oldest went first");
        let mut later = String::new();
        stock.render(t0 + Duration::from_secs(2) + COUPON_SERIES_IDLE, &mut later);
        assert!(later.is_empty(), "idle coupons leave the page: {later}");
    }
}
