//! Graceful shutdown and bad input on the topics.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{ids, TestEnv};
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_flight_commits_and_exits_in_time() {
    let env = TestEnv::with(|s| {
        s.worker.batch_size = 50;
        s.rules.max_balance = i64::MAX;
    })
    .await;
    users::seed(&env.db, 1, 20, 0).await.unwrap();
    let requests: Vec<(i64, Value)> = (0..1_500)
        .map(|i| {
            (
                1 + i % 20,
                json!({"request_id": format!("g-{i}"), "user_id": 1 + i % 20, "amount": 1_000}),
            )
        })
        .collect();
    env.publish_all(Flow::Charge, &requests).await;
    let worker = env.worker_process("charge");
    env.results(Flow::Charge)
        .wait_for(100, "progress before SIGTERM")
        .await;
    let asked = Instant::now();
    let status = tokio::task::spawn_blocking(move || worker.terminate())
        .await
        .unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");

    // A new worker continues exactly where the first one committed: every
    // request is answered once, none twice.
    let worker = env.worker_process("charge");
    let results = env
        .wait_results(Flow::Charge, &ids((0..1_500).map(|i| format!("g-{i}"))))
        .await;
    let twice: Vec<&String> = results
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "{} requests were redelivered after a graceful shutdown, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let total: i64 = 1_500 * 1_000;
    let balances: i64 = sqlx::query_scalar("SELECT sum(balance)::int8 FROM users")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(balances, total);
    assert!(worker.terminate().success());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_and_coupon_requests_on_the_topics_are_answered_and_dead_lettered() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 2, 10_000).await.unwrap();
    let app = env
        .start(Roles::workers(vec![WorkerKind::Order, WorkerKind::Coupon]))
        .await;
    let items = |n: i64| {
        (1..=n)
            .map(|p| json!({"product_id": p, "quantity": 1}))
            .collect::<Vec<_>>()
    };
    let bad_orders = [
        json!({"request_id": "bo-51", "user_id": 1, "items": items(51)}),
        json!({"request_id": "bo-dup", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]}),
        json!({"request_id": "bo-zero", "user_id": 1, "items": [{"product_id": 1, "quantity": 0}]}),
        json!({"request_id": "bo-none", "user_id": 1, "items": []}),
        json!({"request_id": "bo-type", "user_id": "one", "items": items(1)}),
        json!({"request_id": "x".repeat(65), "user_id": 1, "items": items(1)}),
    ];
    for body in &bad_orders {
        env.publish(Flow::Order, 1, body).await;
    }
    env.publish_raw(Flow::Order, "1", br#"{"request_id":"bo-overflow","user_id":1,"items":[{"product_id":1,"quantity":18446744073709551616}]}"#.to_vec()).await;
    env.publish_raw(
        Flow::Coupon,
        "2",
        br#"{"request_id":"bk-neg","user_id":2,"coupon_id":-7}"#.to_vec(),
    )
    .await;
    env.publish_raw(Flow::Coupon, "2", b"\xff\xfe not utf8".to_vec())
        .await;
    env.publish(
        Flow::Order,
        2,
        &json!({"request_id": "bo-after", "user_id": 2, "items": items(1)}),
    )
    .await;

    let results = env
        .wait_results(
            Flow::Order,
            &ids([
                "bo-51",
                "bo-dup",
                "bo-zero",
                "bo-none",
                "bo-type",
                "bo-overflow",
                "bo-after",
            ]
            .map(String::from)),
        )
        .await;
    let codes: HashMap<&str, &str> = results
        .iter()
        .map(|(id, r)| {
            (
                id.as_str(),
                r[0]["error"]["code"].as_str().unwrap_or("succeeded"),
            )
        })
        .collect();
    for id in [
        "bo-51",
        "bo-dup",
        "bo-zero",
        "bo-none",
        "bo-type",
        "bo-overflow",
    ] {
        assert_eq!(codes[id], "invalid_request", "{id}");
    }
    assert_eq!(
        codes["bo-after"], "product_not_found",
        "the partition kept flowing to a normal answer"
    );
    let coupon = env.result_of(Flow::Coupon, "bk-neg").await;
    assert_eq!(coupon["error"]["code"], "invalid_request");
    assert_eq!(
        env.dlq(Flow::Order).take(7).await.len(),
        7,
        "every bad order is dead-lettered, the too-long id too"
    );
    let coupon_dead = env.dlq(Flow::Coupon).take(2).await;
    assert!(coupon_dead
        .iter()
        .any(|r| r.payload == b"\xff\xfe not utf8"));
    app.stop().await;
    env.cleanup().await;
}
