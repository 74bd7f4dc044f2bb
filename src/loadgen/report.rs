//! What a load run measured, as a summary for people and JSON (the HTML
//! page is drawn from the JSON, see `html.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{LoadgenOptions, Seen};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// `p50 … ms, p90 … ms, p99 … ms, p99.9 … ms, max … ms`
    pub fn percentiles(&self) -> String {
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

/// One 250 ms slice of the run, by when results arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub t_secs: f64,
    pub results_per_sec: f64,
    /// Requests handed over (published or posted) per second in the slice.
    #[serde(default)]
    pub offered_per_sec: f64,
    #[serde(default)]
    pub p50_ms: f64,
    #[serde(default)]
    pub p90_ms: f64,
    pub p99_ms: f64,
    #[serde(default)]
    pub p999_ms: f64,
    /// The CPU the slice took (`--cpu`): each watched process's, the load
    /// generator's and the whole machine's, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<super::cpu::SliceCpu>,
}

/// The latency at one percentile of the whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    pub percentile: f64,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// The check could not be made (a dependency did not answer): the run
    /// is not verified, which is not the same as an invariant found broken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub via: String,
    pub requests: usize,
    pub offered_rate: Option<u64>,
    pub answered: usize,
    /// First publish → last result.
    pub duration_secs: f64,
    pub throughput_per_sec: f64,
    pub latency: Latency,
    pub outcomes: BTreeMap<String, usize>,
    pub timeline: Vec<Bucket>,
    pub checks: Vec<CheckResult>,
    /// HTTP answers of 503 (gateway overloaded or broker away) that the
    /// load generator waited out and retried, as a well-behaved client does.
    pub turned_away: u64,
    /// First come, first served, as the coupon results show it (absent when
    /// the run had no coupon winners and sold-out losers).
    #[serde(default)]
    pub fairness: Option<Fairness>,
    /// Latency by percentile over the whole run (from the HDR histogram).
    #[serde(default)]
    pub distribution: Vec<Quantile>,
    /// How the run was set up.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Where it ran.
    #[serde(default)]
    pub machine: BTreeMap<String, String>,
    /// Latency of the requests sent a second or more into the run: a run's
    /// steady state, without its start (clients connecting; in a drop, the
    /// first requests are the winners, each an issued coupon).
    #[serde(default)]
    pub latency_after_first_second: Option<Latency>,
    /// µs of CPU time per answered request over the run (first publish →
    /// last result), per watched process (`--cpu`) and the load generator.
    #[serde(default)]
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// How first-come the coupon drop was: a winner accepted (handed to Kafka
/// or to the gateway) later than some loser (`coupon_sold_out`) is an
/// inversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fairness {
    pub winners: usize,
    pub losers: usize,
    /// Winners accepted after the earliest loser.
    pub inverted_winners: usize,
    /// `inverted_winners / winners`.
    pub inversion_rate: f64,
    /// The largest gap between a winner and a loser accepted before it:
    /// requests accepted further apart than this were decided in order.
    pub max_inversion_ms: f64,
}

/// FCFS figures from when each request was accepted and whether it won.
pub fn fairness(accepted: impl IntoIterator<Item = (Instant, Won)>) -> Option<Fairness> {
    let mut winners = Vec::new();
    let mut first_loser: Option<Instant> = None;
    let mut losers = 0;
    for (at, won) in accepted {
        match won {
            Won::Yes => winners.push(at),
            Won::SoldOut => {
                losers += 1;
                first_loser = Some(first_loser.map_or(at, |f| f.min(at)));
            }
            Won::Other => {}
        }
    }
    let first_loser = first_loser?;
    if winners.is_empty() {
        return None;
    }
    let inverted: Vec<f64> = winners
        .iter()
        .filter(|w| **w > first_loser)
        .map(|w| w.duration_since(first_loser).as_secs_f64() * 1_000.0)
        .collect();
    Some(Fairness {
        winners: winners.len(),
        losers,
        inverted_winners: inverted.len(),
        inversion_rate: inverted.len() as f64 / winners.len() as f64,
        max_inversion_ms: inverted.iter().copied().fold(0.0, f64::max),
    })
}

/// What a coupon request came to, for [`fairness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Won {
    Yes,
    SoldOut,
    /// Not a competition for stock (already issued, another flow, …).
    Other,
}

pub(super) const BUCKET_SECS: f64 = 0.25;

/// Requests sent this long after the start count for the steady state.
const STEADY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn build(
    o: &LoadgenOptions,
    started: Instant,
    sent_at: &HashMap<String, Instant>,
    results: &HashMap<String, Vec<Seen>>,
    slices: &super::cpu::Slices,
) -> Report {
    let seen = Tally::of(started, sent_at, results);
    let mut timeline = seen.timeline();
    let mut cpu = slices.by_slot(started, BUCKET_SECS);
    for bucket in &mut timeline {
        bucket.cpu = cpu.remove(&((bucket.t_secs / BUCKET_SECS).round() as usize));
    }
    let duration = seen
        .last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-3);
    let fairness = fairness(results.iter().filter_map(|(id, seen)| {
        let won = if seen[0].coupon_won {
            Won::Yes
        } else if seen[0].outcome == "coupon_sold_out" {
            Won::SoldOut
        } else {
            Won::Other
        };
        sent_at.get(id).map(|at| (*at, won))
    }));
    Report {
        scenario: o.scenario.name().to_owned(),
        via: format!("{:?}", o.via).to_lowercase(),
        requests: o.requests,
        offered_rate: o.rate,
        answered: results.len(),
        duration_secs: duration,
        throughput_per_sec: results.len() as f64 / duration,
        latency: latency(&seen.all),
        latency_after_first_second: (!seen.steady.is_empty()).then(|| latency(&seen.steady)),
        timeline,
        distribution: distribution(&seen.all),
        outcomes: seen.outcomes,
        checks: Vec::new(),
        turned_away: 0,
        fairness,
        settings: settings_of(o),
        machine: machine(),
        cpu_us_per_request: BTreeMap::new(),
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Latencies in µs, up to an hour, to `digits` significant digits.
fn latencies(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, digits).expect("histogram bounds")
}

/// What a run's results add up to before they are summarised.
struct Tally {
    /// Publish → first result, µs, every request.
    all: Histogram<u64>,
    /// The same, of requests sent a second or more after the start.
    steady: Histogram<u64>,
    outcomes: BTreeMap<String, usize>,
    /// When the last first result came.
    last: Instant,
    /// Per [`BUCKET_SECS`] since the start: results and their latencies.
    per_bucket: BTreeMap<usize, (u64, Histogram<u64>)>,
    /// Per bucket: requests sent.
    offered: BTreeMap<usize, u64>,
}

impl Tally {
    fn of(
        started: Instant,
        sent_at: &HashMap<String, Instant>,
        results: &HashMap<String, Vec<Seen>>,
    ) -> Self {
        let bucket_of = |at: Instant| {
            (at.saturating_duration_since(started).as_secs_f64() / BUCKET_SECS) as usize
        };
        let mut t = Tally {
            all: latencies(3),
            steady: latencies(3),
            outcomes: BTreeMap::new(),
            last: started,
            per_bucket: BTreeMap::new(),
            offered: BTreeMap::new(),
        };
        for sent in sent_at.values() {
            *t.offered.entry(bucket_of(*sent)).or_default() += 1;
        }
        for (id, seen) in results {
            let first = &seen[0];
            *t.outcomes.entry(first.outcome.clone()).or_default() += 1;
            t.last = t.last.max(first.at);
            let Some(sent) = sent_at.get(id) else {
                continue;
            };
            let micros = first.at.saturating_duration_since(*sent).as_micros().max(1) as u64;
            let _ = t.all.record(micros);
            if sent.saturating_duration_since(started) >= STEADY_AFTER {
                let _ = t.steady.record(micros);
            }
            let entry = t
                .per_bucket
                .entry(bucket_of(first.at))
                .or_insert_with(|| (0, latencies(2)));
            entry.0 += 1;
            let _ = entry.1.record(micros);
        }
        t
    }

    /// Results/s, offered/s and percentiles per bucket.
    fn timeline(&self) -> Vec<Bucket> {
        let last_bucket = self
            .per_bucket
            .keys()
            .chain(self.offered.keys())
            .copied()
            .max()
            .unwrap_or(0);
        (0..=last_bucket)
            .filter(|b| self.per_bucket.contains_key(b) || self.offered.contains_key(b))
            .map(|b| {
                let sent = self.offered.get(&b).copied().unwrap_or(0) as f64 / BUCKET_SECS;
                let bucket = self.per_bucket.get(&b);
                let n = bucket.map_or(0, |(n, _)| *n);
                let q = |p: f64| bucket.map_or(0.0, |(_, h)| ms(h.value_at_quantile(p)));
                Bucket {
                    t_secs: b as f64 * BUCKET_SECS,
                    results_per_sec: n as f64 / BUCKET_SECS,
                    offered_per_sec: sent,
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                    p999_ms: q(0.999),
                    cpu: None,
                }
            })
            .collect()
    }
}

fn latency(all: &Histogram<u64>) -> Latency {
    if all.is_empty() {
        return Latency::default();
    }
    Latency {
        p50_ms: ms(all.value_at_quantile(0.5)),
        p90_ms: ms(all.value_at_quantile(0.9)),
        p99_ms: ms(all.value_at_quantile(0.99)),
        p999_ms: ms(all.value_at_quantile(0.999)),
        max_ms: ms(all.max()),
        mean_ms: all.mean() / 1000.0,
    }
}

/// Latency by percentile, for the report's distribution chart.
fn distribution(all: &Histogram<u64>) -> Vec<Quantile> {
    if all.is_empty() {
        return Vec::new();
    }
    [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999,
    ]
    .into_iter()
    .map(|p| Quantile {
        percentile: p,
        ms: ms(all.value_at_quantile(p / 100.0)),
    })
    .collect()
}

fn settings_of(o: &LoadgenOptions) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        s.insert(k.to_owned(), v);
    };
    put("scenario", o.scenario.name().to_owned());
    put("via", format!("{:?}", o.via).to_lowercase());
    put("requests", o.requests.to_string());
    put("users", o.users.to_string());
    put("stock", o.stock.to_string());
    put("coupon sub-counters", o.coupon_shards.to_string());
    put("products", o.products.to_string());
    put(
        "offered rate",
        o.rate.map_or("full speed".into(), |r| format!("{r}/s")),
    );
    put(
        "concurrency",
        o.concurrency.map_or("default".into(), |c| c.to_string()),
    );
    if o.via.is_http() {
        put("gateway", o.http_url.clone());
    }
    s
}

/// The machine a run is measured on, as `/proc` and the environment tell.
fn machine() -> BTreeMap<String, String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut m = BTreeMap::new();
    m.insert("stampede".into(), env!("CARGO_PKG_VERSION").into());
    m.insert(
        "host".into(),
        read("/proc/sys/kernel/hostname").trim().to_owned(),
    );
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    if let Some(kb) = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        m.insert(
            "memory".into(),
            format!("{:.1} GiB", kb as f64 / 1_048_576.0),
        );
    }
    if let Some(cpu) = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
    {
        m.insert("cpu".into(), cpu.1.trim().to_owned());
    }
    m.insert(
        "kernel".into(),
        read("/proc/sys/kernel/osrelease").trim().to_owned(),
    );
    m.insert("measured at".into(), chrono::Utc::now().to_rfc3339());
    m
}

impl Report {
    pub fn check(&mut self, name: &str, passed: bool, detail: String) {
        self.checks.push(CheckResult {
            name: name.to_owned(),
            passed,
            detail,
            not_run: false,
        });
    }

    /// A check that could not be made: it fails the run, as unverified.
    pub fn not_run(&mut self, name: &str, detail: String) {
        self.checks.push(CheckResult {
            name: name.to_owned(),
            passed: false,
            detail,
            not_run: true,
        });
    }

    pub fn passed(&self) -> bool {
        self.answered == self.requests && self.checks.iter().all(|c| c.passed)
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} via {}: {} requests{}",
            self.scenario,
            self.via,
            self.requests,
            self.offered_rate
                .map(|r| format!(" offered at {r}/s"))
                .unwrap_or_else(|| " at full speed".into())
        );
        let _ = writeln!(
            s,
            "answered {} in {:.2}s: {:.0} requests/s end to end (first publish → last result)",
            self.answered, self.duration_secs, self.throughput_per_sec
        );
        let _ = writeln!(
            s,
            "latency publish → result: {}",
            self.latency.percentiles()
        );
        if let (Some(_), Some(l)) = (self.offered_rate, &self.latency_after_first_second) {
            let _ = writeln!(s, "latency after the first second: {}", l.percentiles());
        }
        if !self.cpu_us_per_request.is_empty() {
            let cpu: Vec<String> = self
                .cpu_us_per_request
                .iter()
                .map(|(who, us)| format!("{who} {us:.1} µs"))
                .collect();
            let _ = writeln!(s, "CPU per request over the run: {}", cpu.join(", "));
        }
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "outcomes: {}", outcomes.join(", "));
        if let Some(f) = &self.fairness {
            let _ = writeln!(
                s,
                "first come, first served: {} of {} winners ({:.2}%) accepted after the earliest of {} sold-out losers; largest inversion {:.1} ms",
                f.inverted_winners,
                f.winners,
                f.inversion_rate * 100.0,
                f.losers,
                f.max_inversion_ms
            );
        }
        if self.turned_away > 0 {
            let _ = writeln!(
                s,
                "turned away by the gateway (503, retried): {}",
                self.turned_away
            );
        }
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{} {:<28} {}",
                match (c.passed, c.not_run) {
                    (true, _) => "PASS",
                    (false, false) => "FAIL",
                    (false, true) => "SKIP",
                },
                c.name,
                c.detail
            );
        }
        let _ = writeln!(
            s,
            "verdict: {}",
            if self.passed() {
                "every invariant holds"
            } else if self.answered == self.requests
                && self.checks.iter().all(|c| c.passed || c.not_run)
            {
                "NOT VERIFIED (a check could not run)"
            } else if self.answered == 0 && self.requests > 0 {
                "NOTHING ANSWERED (no request got a result in time: are stampede's \
                 workers running, on the same topics and database?)"
            } else {
                "INVARIANT BROKEN"
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_inversion_is_a_winner_accepted_after_a_loser() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let in_order =
            fairness([(at(0), Won::Yes), (at(1), Won::Yes), (at(2), Won::SoldOut)]).unwrap();
        assert_eq!(
            (in_order.inverted_winners, in_order.max_inversion_ms),
            (0, 0.0)
        );
        let inverted = fairness([
            (at(0), Won::Yes),
            (at(10), Won::SoldOut),
            (at(15), Won::Yes),
            (at(40), Won::Yes),
            (at(50), Won::SoldOut),
            (at(60), Won::Other),
        ])
        .unwrap();
        assert_eq!(inverted.winners, 3);
        assert_eq!(inverted.losers, 2);
        assert_eq!(inverted.inverted_winners, 2);
        assert!((inverted.inversion_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!((inverted.max_inversion_ms - 30.0).abs() < 1e-6);
        assert_eq!(
            fairness([(at(0), Won::Yes)]),
            None,
            "no loser, nothing to compare"
        );
    }

    #[test]
    fn the_steady_state_leaves_out_the_first_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut sent_at = HashMap::new();
        let mut results = HashMap::new();
        // A slow start (400 ms each), then quick answers (5 ms each).
        for (i, (sent, took)) in [(0, 400), (500, 400), (1_000, 5), (1_500, 5), (2_000, 5)]
            .into_iter()
            .enumerate()
        {
            let id = format!("r{i}");
            sent_at.insert(id.clone(), at(sent));
            let seen = Seen {
                request_id: id.clone(),
                at: at(sent + took),
                outcome: "succeeded".into(),
                coupon_won: false,
                payload: Vec::new(),
            };
            results.insert(id, vec![seen]);
        }
        let tally = Tally::of(t0, &sent_at, &results);
        assert!((latency(&tally.all).max_ms - 400.0).abs() < 1.0);
        let steady = latency(&tally.steady);
        assert!((steady.max_ms - 5.0).abs() < 0.1, "{steady:?}");
        assert_eq!(tally.steady.len(), 3);
    }

    fn answered_run() -> Report {
        let o = LoadgenOptions {
            scenario: crate::loadgen::Scenario::CouponDrop,
            requests: 1,
            users: 1,
            stock: 1,
            coupon_shards: 1,
            products: 1,
            rate: None,
            via: crate::loadgen::Via::Kafka,
            concurrency: None,
            http_url: String::new(),
            timeout: Duration::from_secs(1),
            verify: true,
            progress: false,
            thresholds: Default::default(),
            cpu: Vec::new(),
        };
        let t0 = Instant::now();
        let sent_at = HashMap::from([("r".to_owned(), t0)]);
        let seen = Seen {
            request_id: "r".into(),
            at: t0 + Duration::from_millis(3),
            outcome: "succeeded".into(),
            coupon_won: true,
            payload: Vec::new(),
        };
        let results = HashMap::from([("r".to_owned(), vec![seen])]);
        build(&o, t0, &sent_at, &results, &Default::default())
    }

    #[test]
    fn a_run_nothing_answered_says_so_rather_than_an_invariant_broken() {
        let mut report = answered_run();
        report.answered = 0;
        report.check(
            "every request answered",
            false,
            "1 of 1 requests without a result".into(),
        );
        assert!(!report.passed());
        let summary = report.summary();
        assert!(summary.contains("verdict: NOTHING ANSWERED"), "{summary}");
        assert!(summary.contains("FAIL every request answered"), "{summary}");
        report.answered = 1;
        assert!(report.summary().contains("verdict: INVARIANT BROKEN"));
    }

    #[test]
    fn a_check_that_could_not_run_fails_the_run_as_not_verified_not_as_broken() {
        let mut report = answered_run();
        report.check("one result per request", true, "ok".into());
        report.not_run("audit", "PostgreSQL did not answer".into());
        assert!(!report.passed());
        let summary = report.summary();
        assert!(summary.contains("SKIP audit"), "{summary}");
        assert!(
            summary.contains("verdict: NOT VERIFIED (a check could not run)"),
            "{summary}"
        );

        report.check("balance >= 0", false, "1 violation".into());
        assert!(
            report.summary().contains("verdict: INVARIANT BROKEN"),
            "a broken invariant wins over a check not run"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["not_run"], true);
        assert!(json["checks"][0].get("not_run").is_none());
    }
}
