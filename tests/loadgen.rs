//! `stampede loadgen` against a running stampede: it measures, and its
//! verdict checks the invariants.

mod common;

use std::time::Duration;

use common::TestEnv;
use stampede::app::Roles;
use stampede::loadgen::{self, LoadgenOptions, Scenario, Via};

fn options(scenario: Scenario, requests: usize, via: Via, http: String) -> LoadgenOptions {
    LoadgenOptions {
        scenario,
        requests,
        users: requests / 2,
        stock: 100,
        coupon_shards: 1,
        products: 5,
        rate: None,
        via,
        concurrency: None,
        http_url: http,
        timeout: Duration::from_secs(120),
        verify: true,
        progress: false,
        thresholds: Default::default(),
        cpu: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_over_kafka_and_a_drop_over_http_pass_their_verdicts() {
    let env = TestEnv::new().await;
    let app = env.start(Roles::everything()).await;
    let mut mixed = options(Scenario::Mixed, 900, Via::Kafka, app.http());
    // Offered over 1.5 s, so the run has quarter seconds to show CPU in:
    // at full speed a fast machine answers all 900 in less than half of
    // one, a slice too short to read.
    mixed.rate = Some(600);
    // The workers run inside this test process: watched by pid. PostgreSQL
    // and Redis by process name.
    mixed.cpu = vec![
        format!("stampede={}", std::process::id()).parse().unwrap(),
        "PostgreSQL=postgres".parse().unwrap(),
        "Redis=redis-server".parse().unwrap(),
    ];
    let report = loadgen::run(&env.settings, &mixed).await.unwrap();
    assert!(report.passed(), "{}", report.summary());
    // Every watched process is reported; CPU time comes in clock ticks
    // (10 ms), so a small run may show none for Redis, but this process —
    // the workers and the load generator — spent some deciding 900 requests.
    let cpu = &report.cpu_us_per_request;
    for who in ["stampede", "PostgreSQL", "Redis", "load generator"] {
        assert!(
            cpu.get(who).is_some_and(|us| us.is_finite() && *us >= 0.0),
            "{who}: {cpu:?}"
        );
    }
    assert!(cpu["stampede"] > 0.0, "{cpu:?}");
    // The same per quarter second: every watched process in each slice,
    // the machine busy at least as much as this process alone.
    let slices: Vec<_> = report
        .timeline
        .iter()
        .filter_map(|b| b.cpu.as_ref())
        .collect();
    assert!(!slices.is_empty(), "{:?}", report.timeline);
    for slice in &slices {
        assert!(slice.cores.contains_key("PostgreSQL") && slice.cores.contains_key("Redis"));
        assert!(slice.waiting.contains_key("PostgreSQL") && slice.waiting["stampede"] >= 0.0);
        assert!(
            slice.machine_busy_cores + 0.05 >= slice.cores["stampede"],
            "{slice:?}"
        );
    }
    assert!(
        slices.iter().any(|s| s.cores["stampede"] > 0.0),
        "{slices:?}"
    );
    assert!(report.summary().contains("CPU per request over the run: "));
    assert_eq!(report.answered, 900);
    assert_eq!(report.outcomes.values().sum::<usize>(), 900);
    assert!(report.throughput_per_sec > 0.0 && report.latency.p99_ms >= report.latency.p50_ms);
    let page = stampede::loadgen::html::page("mixed", &[("mixed".into(), report.clone())]);
    assert!(page.contains("uPlot") && page.contains("\"scenario\":\"mixed\""));

    let mut drop = options(Scenario::CouponDrop, 400, Via::Http, app.http());
    drop.rate = Some(2_000);
    drop.thresholds.max_inversion_ms = Some(60_000.0);
    let report = loadgen::run(&env.settings, &drop).await.unwrap();
    assert!(report.passed(), "{}", report.summary());
    let fair = report.fairness.clone().expect("FCFS figures of a drop");
    assert_eq!(fair.winners, 100);
    assert_eq!(
        Some(&fair.losers),
        report.outcomes.get("coupon_sold_out"),
        "every sold-out answer is a loser"
    );
    assert!(fair.inverted_winners <= fair.winners && fair.max_inversion_ms >= 0.0);
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "FCFS inversion")
        .expect("the threshold is a check");
    assert_eq!(check.passed, fair.max_inversion_ms <= 60_000.0);
    assert!(report.summary().contains("first come, first served"));
    assert!(serde_json::to_string(&report)
        .unwrap()
        .contains("max_inversion_ms"));

    // Thresholds: each one given is a check; missing one fails the run.
    let mut strict = report.clone();
    loadgen::Thresholds {
        max_p99_ms: Some(0.0),
        max_p999_ms: None,
        min_throughput: Some(1e12),
        max_inversion_ms: None,
    }
    .check(&mut strict);
    assert!(!strict.passed());
    assert!(
        strict.summary().contains("FAIL p99 latency")
            && strict.summary().contains("FAIL throughput")
    );
    let mut lenient = report.clone();
    loadgen::Thresholds {
        max_p99_ms: Some(600_000.0),
        max_p999_ms: Some(600_000.0),
        min_throughput: Some(0.1),
        max_inversion_ms: None,
    }
    .check(&mut lenient);
    assert!(lenient.passed(), "{}", lenient.summary());

    // `stampede report` puts saved runs side by side in one page.
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("drop-http.json");
    std::fs::write(&a, serde_json::to_string(&report).unwrap()).unwrap();
    let b = dir.path().join("not-a-report.json");
    std::fs::write(&b, "{\"hello\": 1}").unwrap();
    let page = dir.path().join("index.html");
    let run = |files: &[&std::path::Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
            .arg("report")
            .args(files)
            .arg("--output")
            .arg(&page)
            .output()
            .unwrap()
    };
    let out = run(&[&a, &a]);
    assert!(out.status.success());
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("\"label\":\"drop-http\"").count(),
        2,
        "both runs embedded"
    );
    let refused = run(&[&a, &b]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a stampede loadgen JSON report"));
    assert_eq!(
        report.outcomes.get("succeeded"),
        Some(&100),
        "stock 100 of 200 distinct users"
    );
    assert_eq!(
        report
            .outcomes
            .get("coupon_already_issued")
            .copied()
            .unwrap_or(0)
            + report.outcomes.get("coupon_sold_out").copied().unwrap_or(0),
        300
    );

    // The same drop over HTTP/2, many requests at once on each connection:
    // the same verdict and the same split of outcomes.
    let mut drop2 = options(Scenario::CouponDrop, 400, Via::Http2, app.http());
    drop2.rate = Some(2_000);
    let report = loadgen::run(&env.settings, &drop2).await.unwrap();
    assert!(report.passed(), "{}", report.summary());
    assert_eq!(report.answered, 400);
    assert_eq!(report.fairness.map(|f| f.winners), Some(100));
    assert_eq!(report.outcomes.get("succeeded"), Some(&100));

    // A gateway with two slots, pushed by 64 clients at once: it turns
    // requests away with 503, the clients retry, and nothing is lost.
    let narrow = env
        .start_with(Roles::gateway_only(), |s| s.gateway.max_in_flight = 2)
        .await;
    let mut charges = options(Scenario::Charges, 600, Via::Http, narrow.http());
    charges.concurrency = Some(64);
    let report = loadgen::run(&env.settings, &charges).await.unwrap();
    assert!(report.passed(), "{}", report.summary());
    assert_eq!(report.answered, 600);
    assert!(report.turned_away > 0, "{}", report.summary());
    // The same over HTTP/2: requests at once on one connection count
    // against the same two slots.
    let mut charges2 = options(Scenario::Charges, 600, Via::Http2, narrow.http());
    charges2.concurrency = Some(64);
    let report = loadgen::run(&env.settings, &charges2).await.unwrap();
    assert!(report.passed(), "{}", report.summary());
    assert_eq!(report.answered, 600);
    assert!(report.turned_away > 0, "{}", report.summary());
    narrow.stop().await;
    app.stop().await;
    env.cleanup().await;
}

/// The names of every topic the broker lists.
async fn topic_names(settings: &stampede::config::Settings) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = stampede::kafka::client_config(&settings.kafka)
        .create()
        .expect("a metadata client");
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("the broker's metadata");
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    })
    .await
    .expect("the metadata task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passthrough_forwards_every_message_and_leaves_no_topic_of_its_own() {
    let env = TestEnv::new().await;
    let mut passthrough = options(Scenario::Passthrough, 400, Via::Kafka, String::new());
    passthrough.verify = false;
    let report = loadgen::run(&env.settings, &passthrough).await.unwrap();
    assert_eq!(report.answered, 400, "{}", report.summary());
    // Its two topics are the run's alone: once it has run, the broker
    // drops them (a leftover kept its partitions in the broker for good).
    let own = format!("{}bench.", env.settings.kafka.topic_prefix);
    common::eventually("the passthrough's topics gone", || async {
        let left: Vec<String> = topic_names(&env.settings)
            .await
            .into_iter()
            .filter(|name| name.starts_with(&own))
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    env.cleanup().await;
}
