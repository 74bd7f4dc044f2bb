//! `stampede top`: a terminal view of running stampede processes, from their
//! `/metrics`: requests/s per flow and outcome, consumer lag, publish→result
//! p99 and coupon stock left, refreshed every interval.

use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One scrape, summed over every endpoint: series name + labels → value.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub series: BTreeMap<String, f64>,
    pub at: Option<Instant>,
}

/// Parses Prometheus text exposition lines (`name{labels} value`).
pub fn parse(text: &str, into: &mut Sample) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.trim().parse::<f64>() {
                *into.series.entry(series.trim().to_owned()).or_default() += v;
            }
        }
    }
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// Renders the change between two samples.
pub fn render(before: &Sample, now: &Sample) -> String {
    let secs = match (before.at, now.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    let change = Change { before, now, secs };
    let mut out = String::new();
    let _ = writeln!(out, "stampede top   (every {secs:.1}s)\n");
    change.outcomes(&mut out);
    let _ = writeln!(out, "\nconsumer lag: {}", or_na(change.lag(), "n/a"));
    let _ = writeln!(
        out,
        "publish → result p99: {}",
        or_na(change.p99s(), "n/a (idle)")
    );
    let _ = writeln!(out, "coupon stock left: {}", or_na(change.stock(), "n/a"));
    let _ = writeln!(
        out,
        "dead letters: {:.0}   retries: {:.0}",
        now.sum("stampede_dlq_messages_total"),
        now.sum("stampede_retries_total")
    );
    out
}

fn or_na(parts: Vec<String>, none: &str) -> String {
    if parts.is_empty() {
        none.to_owned()
    } else {
        parts.join(", ")
    }
}

impl Sample {
    /// The series whose names start with `prefix`.
    fn matching<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a f64)> {
        self.series
            .iter()
            .filter(move |(s, _)| s.starts_with(prefix))
    }

    fn sum(&self, prefix: &str) -> f64 {
        self.matching(prefix).map(|(_, v)| v).sum()
    }
}

/// Two samples `secs` apart.
struct Change<'a> {
    before: &'a Sample,
    now: &'a Sample,
    secs: f64,
}

impl Change<'_> {
    fn delta(&self, series: &str) -> f64 {
        self.now.series.get(series).copied().unwrap_or(0.0)
            - self.before.series.get(series).copied().unwrap_or(0.0)
    }

    /// Requests decided per flow and outcome: per second now, and in all.
    fn outcomes(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<10} {:<26} {:>12} {:>14}",
            "flow", "outcome", "per second", "total"
        );
        for (series, total) in self.now.matching("stampede_requests_processed_total{") {
            let _ = writeln!(
                out,
                "{:<10} {:<26} {:>12.0} {:>14.0}",
                label(series, "flow").unwrap_or("?"),
                label(series, "outcome").unwrap_or("?"),
                self.delta(series) / self.secs,
                total
            );
        }
    }

    /// Messages behind, per worker.
    fn lag(&self) -> Vec<String> {
        let mut lag: BTreeMap<&str, f64> = BTreeMap::new();
        for (series, v) in self.now.matching("stampede_consumer_lag_messages{") {
            *lag.entry(label(series, "worker").unwrap_or("?"))
                .or_default() += v;
        }
        lag.iter().map(|(w, l)| format!("{w} {l:.0}")).collect()
    }

    /// p99 of publish → result over the interval, per flow, from the
    /// histogram's buckets.
    fn p99s(&self) -> Vec<String> {
        let mut buckets: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for (series, _) in self
            .now
            .matching("stampede_request_latency_seconds_bucket{")
        {
            let le = label(series, "le").and_then(|l| match l {
                "+Inf" => Some(f64::INFINITY),
                l => l.parse().ok(),
            });
            if let (Some(flow), Some(le)) = (label(series, "flow"), le) {
                buckets
                    .entry(flow)
                    .or_default()
                    .push((le, self.delta(series)));
            }
        }
        let mut p99s = Vec::new();
        for (flow, mut b) in buckets {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            let total = b.last().map(|x| x.1).unwrap_or(0.0);
            if total > 0.0 {
                let p99 = b
                    .iter()
                    .find(|(_, c)| *c >= 0.99 * total)
                    .map(|x| x.0)
                    .unwrap_or(f64::INFINITY);
                p99s.push(format!("{flow} ≤ {:.0} ms", p99 * 1000.0));
            }
        }
        p99s
    }

    /// Units left per coupon.
    fn stock(&self) -> Vec<String> {
        self.now
            .matching("stampede_coupon_stock_left{")
            .map(|(s, v)| format!("coupon {} {v:.0}", label(s, "coupon_id").unwrap_or("?")))
            .collect()
    }
}

/// Scrapes every URL once and sums the series.
pub async fn scrape(client: &reqwest::Client, urls: &[String]) -> Result<Sample, String> {
    let mut sample = Sample {
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for url in urls {
        let text = client
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("{url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        parse(&text, &mut sample);
    }
    Ok(sample)
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// `/metrics` URLs to watch (default: the gateway's).
    #[arg(long = "url")]
    pub urls: Vec<String>,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Draw one frame and exit.
    #[arg(long)]
    pub once: bool,
}

/// Redraws the watched processes' figures until interrupted.
pub async fn run(
    args: TopArgs,
    settings: &crate::config::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::process::ExitCode> {
    let urls = if args.urls.is_empty() {
        vec![format!("http://{}/metrics", settings.gateway.listen)]
    } else {
        args.urls
    };
    let client = reqwest::Client::new();
    let interval = std::time::Duration::from_millis(args.interval_ms.max(100));
    let mut before = scrape(&client, &urls).await.map_err(anyhow::Error::msg)?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(std::process::ExitCode::SUCCESS),
            _ = tokio::time::sleep(interval) => {}
        }
        let now = scrape(&client, &urls).await.map_err(anyhow::Error::msg)?;
        let frame = render(&before, &now);
        if args.once {
            print!("{frame}");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        print!("\x1b[2J\x1b[H{frame}");
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_lag_latency_and_stock_are_derived_from_two_scrapes() {
        let mut a = Sample {
            at: Some(Instant::now()),
            ..Sample::default()
        };
        parse("stampede_requests_processed_total{flow=\"coupon\",outcome=\"succeeded\"} 10\nstampede_request_latency_seconds_bucket{flow=\"coupon\",le=\"0.01\"} 0\nstampede_request_latency_seconds_bucket{flow=\"coupon\",le=\"0.1\"} 0\nstampede_request_latency_seconds_bucket{flow=\"coupon\",le=\"+Inf\"} 0\n", &mut a);
        let mut b = Sample {
            at: a.at.map(|t| t + Duration::from_secs(2)),
            ..Sample::default()
        };
        parse("# TYPE x counter\nstampede_requests_processed_total{flow=\"coupon\",outcome=\"succeeded\"} 210\nstampede_consumer_lag_messages{worker=\"coupon\",topic=\"t\",partition=\"0\"} 7\nstampede_coupon_stock_left{coupon_id=\"7\"} 42\nstampede_request_latency_seconds_bucket{flow=\"coupon\",le=\"0.01\"} 50\nstampede_request_latency_seconds_bucket{flow=\"coupon\",le=\"0.1\"} 200\nstampede_request_latency_seconds_bucket{flow=\"coupon\",le=\"+Inf\"} 200\n", &mut b);
        let view = render(&a, &b);
        assert!(
            view.contains("coupon     succeeded                           100"),
            "{view}"
        );
        assert!(view.contains("consumer lag: coupon 7"), "{view}");
        assert!(view.contains("coupon ≤ 100 ms"), "{view}");
        assert!(view.contains("coupon 7 42"), "{view}");
    }
}
