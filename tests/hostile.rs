//! Input built to hurt: whatever a producer puts on a request topic is
//! answered or dead-lettered, and the partition keeps flowing.

mod common;

use common::TestEnv;
use serde_json::json;
use stampede::app::Roles;
use stampede::kafka::{Flow, OutMessage, Producer};
use stampede::store::users;
use stampede::workers::WorkerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_near_the_brokers_limit_is_answered_and_dead_lettered_cut_to_fit() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 1, 0).await.unwrap();
    // A producer allowed to send what the broker takes (1 MB), more than
    // the workers' own producers send by default.
    let mut big_settings = env.settings.kafka.clone();
    big_settings
        .client
        .insert("message.max.bytes".into(), "1048576".into());
    let big_producer = Producer::new(&big_settings).unwrap();
    let padding = "x".repeat(1_040_000);
    let big = json!({"request_id": "big-1", "user_id": 1, "amount": 5_000, "pad": padding});
    big_producer
        .send(&OutMessage::new(
            env.topics.requests(Flow::Charge),
            "1",
            big.to_string(),
        ))
        .await
        .expect("the broker takes a 1 MB request");
    // Behind it on the same partition: an ordinary request.
    env.publish(
        Flow::Charge,
        1,
        &json!({"request_id": "after-big", "user_id": 1, "amount": 5_000}),
    )
    .await;

    let app = env.start(Roles::workers(vec![WorkerKind::Charge])).await;
    let refused = env.result_of(Flow::Charge, "big-1").await;
    assert_eq!(refused["status"], "rejected");
    assert_eq!(refused["error"]["code"], "invalid_request");
    assert_eq!(refused["user_id"], 1);
    let after = env.result_of(Flow::Charge, "after-big").await;
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["balance"], 5_000);

    let copy = env.dlq(Flow::Charge).take(1).await.remove(0);
    assert_eq!(copy.payload.len(), stampede::kafka::dlq::MAX_COPY_PAYLOAD);
    assert!(big.to_string().as_bytes().starts_with(&copy.payload));
    assert!(
        copy.headers["truncated"].contains(&format!("of {} payload bytes", big.to_string().len())),
        "{:?}",
        copy.headers
    );
    assert!(copy.headers["error"].contains("exceeds the limit"));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_meets_corrupted_counters_is_isolated_and_the_partition_flows() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 1, 0).await.unwrap();
    env.create_coupon(7, 10).await;
    env.create_coupon(8, 10).await;
    // Coupon 7's stock in Redis is no longer a number: its script fails on it
    // every time, which no retry can fix.
    let mut redis = env.counters.connection();
    let _: () = redis::cmd("SET")
        .arg(env.counters.key("{coupon:7}:stock"))
        .arg("not-a-number")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Both on user 1's partition, the poisoned one first.
    env.publish(
        Flow::Coupon,
        1,
        &json!({"request_id": "k-poisoned", "user_id": 1, "coupon_id": 7}),
    )
    .await;
    env.publish(
        Flow::Coupon,
        1,
        &json!({"request_id": "k-healthy", "user_id": 1, "coupon_id": 8}),
    )
    .await;

    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    let healthy = env.result_of(Flow::Coupon, "k-healthy").await;
    assert_eq!(healthy["status"], "succeeded", "{healthy}");
    let copy = env.dlq(Flow::Coupon).take(1).await.remove(0);
    let original: serde_json::Value = serde_json::from_slice(&copy.payload).unwrap();
    assert_eq!(original["request_id"], "k-poisoned");
    assert!(
        copy.headers["error"].contains("script"),
        "{:?}",
        copy.headers
    );
    app.stop().await;
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM user_coupons WHERE coupon_id = 7")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(issued, 0, "nothing issued for the poisoned request");
    env.cleanup().await;
}
