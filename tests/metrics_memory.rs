//! A process nobody scrapes must not keep every histogram sample it ever
//! recorded: the Prometheus recorder holds raw samples until they are drained
//! into buckets, and a worker records one per request.
//!
//! Its own test binary: the check reads this process's resident memory.

use stampede::telemetry::metrics;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn sixteen_million_latencies_without_a_scrape_keep_memory_flat() {
    metrics::install();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Warm up: the histogram and its first blocks exist before measuring.
    metrics::request_latency("memory-test", std::iter::repeat_n(now_ms, 100_000));
    let before = resident_kib();
    for _ in 0..16_000 {
        metrics::request_latency("memory-test", std::iter::repeat_n(now_ms - 25, 1_000));
    }
    let grown_mib = resident_kib().saturating_sub(before) / 1024;
    // Kept raw, these samples took 251 MiB (16 bytes each).
    assert!(
        grown_mib < 32,
        "resident memory grew {grown_mib} MiB over 16,000,000 unscraped histogram samples"
    );
    // Nothing was lost by draining: the scrape counts every sample.
    let text = metrics::render();
    let count = text
        .lines()
        .find(|l| {
            l.starts_with("stampede_request_latency_seconds_count")
                && l.contains("flow=\"memory-test\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(count, Some(16_100_000), "scrape:\n{text}");
}
