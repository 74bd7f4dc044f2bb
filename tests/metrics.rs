//! After a small drop, `/metrics` adds up to what was sent. (Its own test
//! binary: the metrics recorder is per process.)

mod common;

use common::{eventually, ids, metric_sum, scrape, TestEnv};
use serde_json::json;
use stampede::app::Roles;
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_to_what_was_sent() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 300, 0).await.unwrap();
    env.create_coupon(7, 100).await;
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Coupon, WorkerKind::Charge],
        })
        .await;
    let http = app.http();

    // Ready once PostgreSQL, Redis and the broker answer and both consumers hold an assignment.
    let ready = eventually("/readyz answers 200", || async {
        let response = reqwest::get(format!("{http}/readyz")).await.unwrap();
        match response.status() {
            reqwest::StatusCode::OK => Some(response.json::<serde_json::Value>().await.unwrap()),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        ready["consumers"],
        json!({"coupon": "assigned", "charge": "assigned"})
    );
    assert_eq!(
        (
            ready["postgres"].as_str(),
            ready["redis"].as_str(),
            ready["kafka"].as_str()
        ),
        (Some("ok"), Some("ok"), Some("ok"))
    );

    let requests: Vec<(i64, serde_json::Value)> = (0..500)
        .map(|i| {
            (
                i % 300 + 1,
                json!({"request_id": format!("m-{i}"), "user_id": i % 300 + 1, "coupon_id": 7}),
            )
        })
        .collect();
    env.publish_all(Flow::Coupon, &requests).await;
    for _ in 0..5 {
        env.publish_raw(Flow::Coupon, "1", b"not json".to_vec())
            .await;
    }
    env.publish_all(Flow::Coupon, &requests[..10]).await; // redelivered
    env.wait_results(Flow::Coupon, &ids((0..500).map(|i| format!("m-{i}"))))
        .await;

    let c = reqwest::Client::new();
    for amount in [5_000, 6_000, -1] {
        c.post(format!("{http}/v1/charges"))
            .json(&json!({"user_id": 1, "amount": amount}))
            .send()
            .await
            .unwrap();
    }

    // Counters are updated right after results are published: wait for them.
    let metrics = eventually("the metrics catch up with the drop", || async {
        let m = scrape(&format!("{http}/metrics")).await;
        let caught_up = metric_sum(
            &m,
            "stampede_requests_processed_total",
            &["flow=\"coupon\""],
        ) >= 505.0
            && metric_sum(&m, "stampede_requests_replayed_total", &["coupon"]) >= 10.0
            && metric_sum(
                &m,
                "stampede_messages_consumed_total",
                &["worker=\"coupon\""],
            ) >= 515.0
            && metric_sum(
                &m,
                "stampede_request_latency_seconds_count",
                &["flow=\"coupon\""],
            ) >= 515.0;
        caught_up.then_some(m)
    })
    .await;

    let processed = |outcome: &str| {
        metric_sum(
            &metrics,
            "stampede_requests_processed_total",
            &["flow=\"coupon\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(processed("succeeded"), 100.0);
    assert_eq!(
        processed("succeeded") + processed("coupon_sold_out") + processed("coupon_already_issued"),
        500.0
    );
    assert_eq!(processed("invalid_request"), 5.0);
    assert_eq!(
        metric_sum(&metrics, "stampede_dlq_messages_total", &["coupon"]),
        5.0
    );
    assert_eq!(
        metric_sum(&metrics, "stampede_requests_replayed_total", &["coupon"]),
        10.0
    );
    assert_eq!(
        metric_sum(&metrics, "stampede_coupon_stock_left", &["coupon_id=\"7\""]),
        0.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "stampede_messages_consumed_total",
            &["worker=\"coupon\""]
        ),
        515.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "stampede_request_latency_seconds_count",
            &["flow=\"coupon\""]
        ),
        515.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "stampede_gateway_requests_total",
            &["endpoint=\"charges\"", "status=\"202\""]
        ),
        2.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "stampede_gateway_requests_total",
            &["endpoint=\"charges\"", "status=\"422\""]
        ),
        1.0
    );
    assert!(
        metrics.lines().any(
            |k| k.starts_with("stampede_batch_processing_seconds_bucket")
                && k.contains("le=\"0.005\"")
        ),
        "explicit buckets"
    );
    assert!(metrics
        .lines()
        .any(|k| k.starts_with("stampede_consumer_assigned_partitions")));
    app.stop().await;
    env.cleanup().await;
}
