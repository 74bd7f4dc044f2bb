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
    let delta = |s: &str| {
        now.series.get(s).copied().unwrap_or(0.0) - before.series.get(s).copied().unwrap_or(0.0)
    };
    let mut out = String::new();
    let _ = writeln!(out, "stampede top   (every {secs:.1}s)\n");
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:>12} {:>14}",
        "flow", "outcome", "per second", "total"
    );
    for (series, total) in now
        .series
        .iter()
        .filter(|(s, _)| s.starts_with("stampede_requests_processed_total{"))
    {
        let _ = writeln!(
            out,
            "{:<10} {:<26} {:>12.0} {:>14.0}",
            label(series, "flow").unwrap_or("?"),
            label(series, "outcome").unwrap_or("?"),
            delta(series) / secs,
            total
        );
    }
    let mut lag: BTreeMap<&str, f64> = BTreeMap::new();
    for (series, v) in now
        .series
        .iter()
        .filter(|(s, _)| s.starts_with("stampede_consumer_lag_messages{"))
    {
        *lag.entry(label(series, "worker").unwrap_or("?"))
            .or_default() += v;
    }
    let _ = writeln!(
        out,
        "\nconsumer lag: {}",
        if lag.is_empty() {
            "n/a".to_owned()
        } else {
            lag.iter()
                .map(|(w, l)| format!("{w} {l:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    // p99 of publish → result over the interval, per flow, from histogram buckets.
    let mut buckets: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for series in now
        .series
        .keys()
        .filter(|s| s.starts_with("stampede_request_latency_seconds_bucket{"))
    {
        let le = label(series, "le").and_then(|l| {
            if l == "+Inf" {
                Some(f64::INFINITY)
            } else {
                l.parse().ok()
            }
        });
        if let (Some(flow), Some(le)) = (label(series, "flow"), le) {
            buckets.entry(flow).or_default().push((le, delta(series)));
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
    let _ = writeln!(
        out,
        "publish → result p99: {}",
        if p99s.is_empty() {
            "n/a (idle)".to_owned()
        } else {
            p99s.join(", ")
        }
    );
    let stock: Vec<String> = now
        .series
        .iter()
        .filter(|(s, _)| s.starts_with("stampede_coupon_stock_left{"))
        .map(|(s, v)| format!("coupon {} {v:.0}", label(s, "coupon_id").unwrap_or("?")))
        .collect();
    let _ = writeln!(
        out,
        "coupon stock left: {}",
        if stock.is_empty() {
            "n/a".to_owned()
        } else {
            stock.join(", ")
        }
    );
    let dlq: f64 = now
        .series
        .iter()
        .filter(|(s, _)| s.starts_with("stampede_dlq_messages_total"))
        .map(|(_, v)| v)
        .sum();
    let retries: f64 = now
        .series
        .iter()
        .filter(|(s, _)| s.starts_with("stampede_retries_total"))
        .map(|(_, v)| v)
        .sum();
    let _ = writeln!(out, "dead letters: {dlq:.0}   retries: {retries:.0}");
    out
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
