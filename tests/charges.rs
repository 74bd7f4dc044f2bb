//! Balance charges through Kafka, as an external producer would send them.

mod common;

use std::collections::HashSet;

use common::{ids, TestEnv};
use serde_json::json;
use stampede::app::Roles;
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;

fn charge(id: &str, user: i64, amount: i64) -> serde_json::Value {
    json!({"request_id": id, "user_id": user, "amount": amount})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_charge_rule_answers_with_its_code() {
    let env = TestEnv::with(|s| {
        s.rules.min_charge = 1_000;
        s.rules.max_balance = 100_000;
    })
    .await;
    users::create(&env.db, Some(1), 10_000).await.unwrap();
    let app = env.start(Roles::workers(vec![WorkerKind::Charge])).await;

    env.publish(Flow::Charge, 1, &charge("ok-1", 1, 5_000))
        .await;
    env.publish(Flow::Charge, 1, &charge("low-1", 1, 999)).await;
    env.publish(Flow::Charge, 1, &charge("max-1", 1, 85_001))
        .await;
    env.publish(Flow::Charge, 1, &charge("edge-1", 1, 85_000))
        .await;
    env.publish(Flow::Charge, 9, &charge("nouser-1", 9, 5_000))
        .await;
    let results = env
        .wait_results(
            Flow::Charge,
            &ids(["ok-1", "low-1", "max-1", "edge-1", "nouser-1"].map(String::from)),
        )
        .await;

    let first = |id: &str| results[id][0].clone();
    assert_eq!(
        first("ok-1"),
        json!({"request_id": "ok-1", "user_id": 1, "status": "succeeded", "balance": 15_000})
    );
    assert_eq!(first("low-1")["error"]["code"], "charge_below_minimum");
    assert_eq!(first("max-1")["error"]["code"], "balance_limit_exceeded");
    assert_eq!(first("edge-1")["balance"], 100_000);
    assert_eq!(first("nouser-1")["error"]["code"], "user_not_found");
    assert_eq!(first("nouser-1")["status"], "rejected");
    assert!(first("ok-1").get("error").is_none());
    assert_eq!(env.balance(1).await, Some(100_000));

    let history: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, amount, balance_after FROM balance_history WHERE user_id = 1 ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            ("initial".into(), 10_000, 10_000),
            ("charge".into(), 5_000, 15_000),
            ("charge".into(), 85_000, 100_000)
        ]
    );
    assert!(env.audit().await.passed());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_delivered_twice_has_one_effect_and_the_same_result() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(5), 0).await.unwrap();
    let app = env.start(Roles::workers(vec![WorkerKind::Charge])).await;

    env.publish(Flow::Charge, 5, &charge("dup-1", 5, 2_000))
        .await;
    let first = env.result_of(Flow::Charge, "dup-1").await;
    // Published again later (a producer retry), and twice in one batch.
    env.publish(Flow::Charge, 5, &charge("dup-1", 5, 2_000))
        .await;
    env.publish(Flow::Charge, 5, &charge("dup-2", 5, 3_000))
        .await;
    env.publish(Flow::Charge, 5, &charge("dup-2", 5, 3_000))
        .await;
    let mut reader = env.results(Flow::Charge);
    let all = reader.take(4).await;
    let payloads: Vec<serde_json::Value> = all
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let of = |id: &str| {
        payloads
            .iter()
            .filter(|p| p["request_id"] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of("dup-1"), vec![first.clone(), first]);
    let dup2 = of("dup-2");
    assert_eq!(dup2.len(), 2);
    assert_eq!(dup2[0], dup2[1], "every delivery gets the same result");
    assert_eq!(env.balance(5).await, Some(5_000));
    let charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_history WHERE user_id = 5 AND kind = 'charge'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(charges, 2);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_go_to_the_dlq_and_the_partition_keeps_flowing() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(3), 0).await.unwrap();
    let app = env.start(Roles::workers(vec![WorkerKind::Charge])).await;

    env.publish_raw(Flow::Charge, "3", b"{not json".to_vec())
        .await;
    env.publish_raw(
        Flow::Charge,
        "3",
        br#"{"request_id":"bad-type","user_id":3,"amount":"lots"}"#.to_vec(),
    )
    .await;
    env.publish_raw(
        Flow::Charge,
        "3",
        br#"{"request_id":"neg","user_id":3,"amount":-5}"#.to_vec(),
    )
    .await;
    env.publish_raw(
        Flow::Charge,
        "3",
        br#"{"request_id":"has space","user_id":3,"amount":5000}"#.to_vec(),
    )
    .await;
    env.publish_raw(
        Flow::Charge,
        "3",
        format!(
            r#"{{"request_id":"huge","user_id":3,"amount":5000,"pad":"{}"}}"#,
            "x".repeat(70_000)
        )
        .into_bytes(),
    )
    .await;
    env.publish_raw(
        Flow::Charge,
        "3",
        br#"{"request_id":"after","user_id":3,"amount":5000,"extra":{"ignored":true}}"#.to_vec(),
    )
    .await;

    let results = env
        .wait_results(
            Flow::Charge,
            &ids(["bad-type", "neg", "after"].map(String::from)),
        )
        .await;
    assert_eq!(results["bad-type"][0]["error"]["code"], "invalid_request");
    assert_eq!(results["bad-type"][0]["user_id"], 3);
    assert_eq!(results["neg"][0]["error"]["code"], "invalid_request");
    assert_eq!(
        results["after"][0]["status"], "succeeded",
        "the partition kept flowing"
    );
    assert_eq!(env.balance(3).await, Some(5_000));

    let dead = env.dlq(Flow::Charge).take(5).await;
    let source = env.topics.requests(Flow::Charge);
    for record in &dead {
        assert_eq!(record.headers["source.topic"], source);
        assert!(record.headers["source.partition"].parse::<i32>().is_ok());
        assert!(record.headers["source.offset"].parse::<i64>().is_ok());
        assert!(!record.headers["error"].is_empty());
        assert_eq!(record.key.as_deref(), Some(b"3".as_slice()));
    }
    let payloads: HashSet<Vec<u8>> = dead.iter().map(|r| r.payload.clone()).collect();
    assert!(
        payloads.contains(b"{not json".as_slice()),
        "the original bytes are kept"
    );
    assert!(dead
        .iter()
        .any(|r| r.headers["error"].contains("exceeds the limit")));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_charges_of_one_user_all_count() {
    let env = TestEnv::with(|s| s.rules.max_balance = 1_000_000_000).await;
    users::create(&env.db, Some(77), 0).await.unwrap();
    // Two workers in one group; the requests also arrive under other keys
    // (a producer that ignores the contract's key), so they race.
    let app_a = env.start(Roles::workers(vec![WorkerKind::Charge])).await;
    let app_b = env.start(Roles::workers(vec![WorkerKind::Charge])).await;
    let requests: Vec<(i64, serde_json::Value)> = (0..400)
        .map(|i| (i, charge(&format!("race-{i}"), 77, 1_000 + i)))
        .collect();
    env.publish_all(Flow::Charge, &requests).await;
    let expected: i64 = (0..400).map(|i| 1_000 + i).sum();
    let results = env
        .wait_results(Flow::Charge, &ids((0..400).map(|i| format!("race-{i}"))))
        .await;
    assert!(results.values().all(|r| r[0]["status"] == "succeeded"));
    assert_eq!(env.balance(77).await, Some(expected));
    assert!(env.audit().await.passed());
    app_a.stop().await;
    app_b.stop().await;
    env.cleanup().await;
}
