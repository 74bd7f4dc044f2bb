//! What a load run measured, as a summary for people, JSON, and an SVG chart.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::scenario::Setup;
use super::{LoadgenOptions, Seen};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub t_secs: f64,
    pub results_per_sec: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
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
    pub fairness: Option<Fairness>,
}

/// How first-come the coupon drop was: a winner accepted (handed to Kafka
/// or to the gateway) later than some loser (`coupon_sold_out`) is an
/// inversion.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

const BUCKET_SECS: f64 = 0.25;

pub(super) fn build(
    o: &LoadgenOptions,
    _setup: &Setup,
    started: Instant,
    sent_at: &HashMap<String, Instant>,
    results: &HashMap<String, Vec<Seen>>,
) -> Report {
    let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut last = started;
    let mut per_bucket: BTreeMap<usize, (u64, Histogram<u64>)> = BTreeMap::new();
    for (id, seen) in results {
        let first = &seen[0];
        *outcomes.entry(first.outcome.clone()).or_default() += 1;
        last = last.max(first.at);
        if let Some(sent) = sent_at.get(id) {
            let micros = first.at.saturating_duration_since(*sent).as_micros().max(1) as u64;
            let _ = all.record(micros);
            let bucket =
                (first.at.saturating_duration_since(started).as_secs_f64() / BUCKET_SECS) as usize;
            let entry = per_bucket.entry(bucket).or_insert_with(|| {
                (
                    0,
                    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("histogram bounds"),
                )
            });
            entry.0 += 1;
            let _ = entry.1.record(micros);
        }
    }
    let duration = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-3);
    let ms = |v: u64| v as f64 / 1000.0;
    let latency = if all.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50_ms: ms(all.value_at_quantile(0.5)),
            p90_ms: ms(all.value_at_quantile(0.9)),
            p99_ms: ms(all.value_at_quantile(0.99)),
            p999_ms: ms(all.value_at_quantile(0.999)),
            max_ms: ms(all.max()),
            mean_ms: all.mean() / 1000.0,
        }
    };
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
    let timeline = per_bucket
        .into_iter()
        .map(|(b, (n, h))| Bucket {
            t_secs: b as f64 * BUCKET_SECS,
            results_per_sec: n as f64 / BUCKET_SECS,
            p99_ms: ms(h.value_at_quantile(0.99)),
        })
        .collect();
    Report {
        scenario: o.scenario.name().to_owned(),
        via: format!("{:?}", o.via).to_lowercase(),
        requests: o.requests,
        offered_rate: o.rate,
        answered: results.len(),
        duration_secs: duration,
        throughput_per_sec: results.len() as f64 / duration,
        latency,
        outcomes,
        timeline,
        checks: Vec::new(),
        turned_away: 0,
        fairness,
    }
}

impl Report {
    pub fn check(&mut self, name: &str, passed: bool, detail: String) {
        self.checks.push(CheckResult {
            name: name.to_owned(),
            passed,
            detail,
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
        let l = &self.latency;
        let _ = writeln!(s, "latency publish → result: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms", l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms);
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
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        let _ = writeln!(
            s,
            "verdict: {}",
            if self.passed() {
                "every invariant holds"
            } else {
                "INVARIANT BROKEN"
            }
        );
        s
    }

    /// Throughput (results/s) and p99 latency over time.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (900.0, 360.0, 50.0);
        let t_max = self
            .timeline
            .last()
            .map(|b| b.t_secs + BUCKET_SECS)
            .unwrap_or(1.0)
            .max(BUCKET_SECS);
        let r_max = self
            .timeline
            .iter()
            .map(|b| b.results_per_sec)
            .fold(1.0, f64::max);
        let l_max = self.timeline.iter().map(|b| b.p99_ms).fold(1.0, f64::max);
        let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
        let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
        let line = |f: &dyn Fn(&Bucket) -> (f64, f64)| {
            self.timeline
                .iter()
                .map(|b| {
                    let (px, py) = f(b);
                    format!("{px:.1},{py:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let throughput = line(&|b| (x(b.t_secs), y(b.results_per_sec, r_max)));
        let latency = line(&|b| (x(b.t_secs), y(b.p99_ms, l_max)));
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">stampede loadgen: {scenario} via {via}, {req} requests, {tp:.0}/s, p99 {p99:.1} ms</text>
<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="black"/>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{throughput}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{latency}"/>
<text x="{pad}" y="{legend}" fill="#1f77b4">results/s (max {r_max:.0})</text>
<text x="300" y="{legend}" fill="#d62728">p99 latency per 250 ms (max {l_max:.1} ms)</text>
<text x="{right}" y="{axis}" text-anchor="end">{t_max:.1} s</text>
</svg>
"##,
            scenario = self.scenario,
            via = self.via,
            req = self.requests,
            tp = self.throughput_per_sec,
            p99 = self.latency.p99_ms,
            bottom = h - pad,
            right = w - pad,
            legend = h - 10.0,
            axis = h - pad + 15.0,
        )
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
}
