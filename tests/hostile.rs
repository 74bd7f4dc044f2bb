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
    users::seed(&env.db, 1, 2, 0).await.unwrap();
    env.create_coupon(7, 10).await;
    env.create_coupon(8, 10).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    env.publish(
        Flow::Coupon,
        2,
        &json!({"request_id": "k-warm-up", "user_id": 2, "coupon_id": 8}),
    )
    .await;
    assert_eq!(
        env.result_of(Flow::Coupon, "k-warm-up").await["status"],
        "succeeded"
    );
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

    let healthy = env.result_of(Flow::Coupon, "k-healthy").await;
    assert_eq!(healthy["status"], "succeeded", "{healthy}");
    let copy = env.dlq(Flow::Coupon).take(1).await.remove(0);
    let original: serde_json::Value = serde_json::from_slice(&copy.payload).unwrap();
    assert_eq!(original["request_id"], "k-poisoned");
    assert!(
        copy.headers["error"].contains("STAMPEDE_CORRUPT")
            && copy.headers["error"].contains("{coupon:7}:stock holds not-a-number"),
        "the reason names the corrupted counter: {:?}",
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

/// What a hostile message must lead to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An `invalid_request` result under this id, and a DLQ copy.
    Invalid(&'static str),
    /// A DLQ copy only: no request id can be read.
    DeadLetterOnly,
    /// Decided like any request (under this id), nothing dead-lettered.
    Decided(&'static str),
}

/// More than thirty kinds of bad input on the three request topics, one
/// partition each, followed by an ordinary request: every message is
/// answered or dead-lettered, and the ordinary request behind them is
/// decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_answered_or_dead_lettered() {
    use Expect::*;
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 1, 100_000).await.unwrap();
    env.create_coupon(1, 10).await;
    let deep = format!(
        "{{\"request_id\": \"h-deep\", \"user_id\": 1, \"amount\": 1000, \"pad\": {}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    // Nesting deeper than a full parse allows, in a request refused for
    // its user id: still answered.
    let deep_refused = format!(
        "{{\"request_id\": \"h-deep-refused\", \"user_id\": 0, \"amount\": 1000, \"pad\": {}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let oversize = format!(
        "{{\"request_id\": \"h-oversize\", \"user_id\": 1, \"amount\": 1000, \"pad\": \"{}\"}}",
        "x".repeat(70_000)
    );
    let many_fields = format!(
        "{{\"request_id\": \"h-fields\", \"user_id\": 1, \"amount\": 1000, {}}}",
        (0..3_000)
            .map(|i| format!("\"f{i}\": {i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let fifty_one: Vec<serde_json::Value> = (1..=51)
        .map(|p| json!({"product_id": p, "quantity": 1}))
        .collect();
    let cases: Vec<(Flow, Vec<u8>, Expect)> = vec![
        (Flow::Charge, b"".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"not json".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"null".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"[]".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"42".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"\"a string\"".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"{}".to_vec(), DeadLetterOnly),
        (Flow::Charge, br#"{"user_id": 1, "amount": 1000}"#.to_vec(), DeadLetterOnly),
        (Flow::Charge, br#"{"request_id": "", "user_id": 1, "amount": 1000}"#.to_vec(), DeadLetterOnly),
        (Flow::Charge, format!(r#"{{"request_id": "{}", "user_id": 1, "amount": 1000}}"#, "a".repeat(65)).into_bytes(), DeadLetterOnly),
        (Flow::Charge, br#"{"request_id": "a b", "user_id": 1, "amount": 1000}"#.to_vec(), DeadLetterOnly),
        (Flow::Charge, br#"{"request_id": 123, "user_id": 1, "amount": 1000}"#.to_vec(), DeadLetterOnly),
        (Flow::Charge, br#"{"request_id": "h-user0", "user_id": 0, "amount": 1000}"#.to_vec(), Invalid("h-user0")),
        (Flow::Charge, br#"{"request_id": "h-userneg", "user_id": -1, "amount": 1000}"#.to_vec(), Invalid("h-userneg")),
        (Flow::Charge, br#"{"request_id": "h-userbig", "user_id": 9223372036854775808, "amount": 1000}"#.to_vec(), Invalid("h-userbig")),
        (Flow::Charge, br#"{"request_id": "h-userfloat", "user_id": 1.5, "amount": 1000}"#.to_vec(), Invalid("h-userfloat")),
        (Flow::Charge, br#"{"request_id": "h-userstr", "user_id": "1", "amount": 1000}"#.to_vec(), Invalid("h-userstr")),
        (Flow::Charge, br#"{"request_id": "h-amountmin", "user_id": 1, "amount": -9223372036854775808}"#.to_vec(), Invalid("h-amountmin")),
        (Flow::Charge, br#"{"request_id": "h-amountstr", "user_id": 1, "amount": "1000"}"#.to_vec(), Invalid("h-amountstr")),
        // Valid JSON that no integer holds: refused, and answered.
        (Flow::Charge, br#"{"request_id": "h-amounthuge", "user_id": 1, "amount": 1e400}"#.to_vec(), Invalid("h-amounthuge")),
        (Flow::Charge, br#"{"request_id": "h-userhuge", "user_id": 1e400, "amount": 1000}"#.to_vec(), Invalid("h-userhuge")),
        (Flow::Charge, deep_refused.into_bytes(), Invalid("h-deep-refused")),
        (Flow::Charge, br#"{"request_id": "h-dup", "request_id": "h-dup", "user_id": 1, "amount": 1000}"#.to_vec(), Invalid("h-dup")),
        // Unknown fields are skipped unread, however deep or odd their bytes.
        (Flow::Charge, deep.into_bytes(), Decided("h-deep")),
        (Flow::Charge, b"{\"request_id\": \"h-utf8\", \"user_id\": 1, \"amount\": 1000, \"x\": \"\xff\xfe\"}".to_vec(), Decided("h-utf8")),
        (Flow::Charge, b"{\"request_id\": \"h-utf8id\xff\", \"user_id\": 1, \"amount\": 1000}".to_vec(), DeadLetterOnly),
        (Flow::Charge, b"\xef\xbb\xbf{\"request_id\": \"h-bom\", \"user_id\": 1, \"amount\": 1000}".to_vec(), DeadLetterOnly),
        (Flow::Charge, br#"{"request_id": "h-trailing", "user_id": 1, "amount": 1000} xyz"#.to_vec(), DeadLetterOnly),
        (Flow::Charge, br#"{"request_id": "h-when", "user_id": 1, "amount": 1000, "requested_at": "yesterday"}"#.to_vec(), Invalid("h-when")),
        (Flow::Charge, br#"{"request_id": "h-nul", "user_id": 1, "amount": 1000, "note": "a\u0000b"}"#.to_vec(), Decided("h-nul")),
        (Flow::Charge, br#"{"request_id": "h-unknown", "user_id": 1, "amount": 1000, "surprise": {"a": [1, 2]}}"#.to_vec(), Decided("h-unknown")),
        (Flow::Charge, many_fields.into_bytes(), Decided("h-fields")),
        (Flow::Charge, oversize.into_bytes(), Invalid("h-oversize")),
        (Flow::Coupon, br#"{"request_id": "h-nocoupon", "user_id": 1}"#.to_vec(), Invalid("h-nocoupon")),
        (Flow::Coupon, br#"{"request_id": "h-coupon0", "user_id": 1, "coupon_id": 0}"#.to_vec(), Invalid("h-coupon0")),
        (Flow::Coupon, br#"{"request_id": "h-couponarr", "user_id": 1, "coupon_id": [1]}"#.to_vec(), Invalid("h-couponarr")),
        (Flow::Order, br#"{"request_id": "h-noitems", "user_id": 1, "items": []}"#.to_vec(), Invalid("h-noitems")),
        (Flow::Order, json!({"request_id": "h-51items", "user_id": 1, "items": fifty_one}).to_string().into_bytes(), Invalid("h-51items")),
        (Flow::Order, br#"{"request_id": "h-dupitems", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]}"#.to_vec(), Invalid("h-dupitems")),
        (Flow::Order, br#"{"request_id": "h-qty0", "user_id": 1, "items": [{"product_id": 1, "quantity": 0}]}"#.to_vec(), Invalid("h-qty0")),
        (Flow::Order, br#"{"request_id": "h-qty1001", "user_id": 1, "items": [{"product_id": 1, "quantity": 1001}]}"#.to_vec(), Invalid("h-qty1001")),
        (Flow::Order, br#"{"request_id": "h-itemsobj", "user_id": 1, "items": {"product_id": 1}}"#.to_vec(), Invalid("h-itemsobj")),
        (Flow::Order, br#"{"request_id": "h-ordercoupon0", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}], "coupon_id": 0}"#.to_vec(), Invalid("h-ordercoupon0")),
    ];
    assert!(cases.len() >= 30);
    // A producer allowed to send the oversize message.
    let mut big_settings = env.settings.kafka.clone();
    big_settings
        .client
        .insert("message.max.bytes".into(), "1048576".into());
    let producer = Producer::new(&big_settings).unwrap();
    for (flow, payload, _) in &cases {
        producer
            .send(&OutMessage::new(
                env.topics.requests(*flow),
                "1",
                payload.clone(),
            ))
            .await
            .unwrap();
    }
    // Ordinary requests behind everything.
    for (flow, body) in [
        (
            Flow::Charge,
            json!({"request_id": "h-last-charge", "user_id": 1, "amount": 1000}),
        ),
        (
            Flow::Coupon,
            json!({"request_id": "h-last-coupon", "user_id": 1, "coupon_id": 1}),
        ),
    ] {
        producer
            .send(&OutMessage::new(
                env.topics.requests(flow),
                "1",
                body.to_string(),
            ))
            .await
            .unwrap();
    }

    let app = env
        .start(Roles::workers(vec![
            WorkerKind::Charge,
            WorkerKind::Coupon,
            WorkerKind::Order,
        ]))
        .await;
    for (flow, last) in [
        (Flow::Charge, "h-last-charge"),
        (Flow::Coupon, "h-last-coupon"),
    ] {
        assert_eq!(
            env.result_of(flow, last).await["status"],
            "succeeded",
            "{last}"
        );
    }
    for flow in [Flow::Charge, Flow::Coupon, Flow::Order] {
        let of_flow: Vec<Expect> = cases
            .iter()
            .filter(|(f, _, _)| *f == flow)
            .map(|(_, _, e)| *e)
            .collect();
        let answered: Vec<&str> = of_flow
            .iter()
            .filter_map(|e| match e {
                Invalid(id) | Decided(id) => Some(*id),
                DeadLetterOnly => None,
            })
            .collect();
        let results = env
            .wait_results(flow, &common::ids(answered.iter().map(|s| s.to_string())))
            .await;
        for expect in &of_flow {
            match expect {
                Invalid(id) => {
                    let result = &results[*id];
                    assert_eq!(result.len(), 1, "{id}: one result");
                    assert_eq!(
                        result[0]["error"]["code"], "invalid_request",
                        "{id}: {}",
                        result[0]
                    );
                }
                Decided(id) => {
                    assert_ne!(results[*id][0]["error"]["code"], "invalid_request", "{id}");
                }
                DeadLetterOnly => {}
            }
        }
        let dead = of_flow.iter().filter(|e| !matches!(e, Decided(_))).count();
        let copies = env.dlq(flow).take(dead).await;
        let mut offsets: Vec<i64> = copies
            .iter()
            .map(|c| c.headers["source.offset"].parse().unwrap())
            .collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(
            offsets.len(),
            dead,
            "{flow:?}: one DLQ copy per bad message"
        );
    }
    app.stop().await;
    assert!(env.audit().await.passed());
    env.cleanup().await;
}

/// Reads `flow`'s results from the start until `id` has `count`; returns them.
async fn results_of(env: &TestEnv, flow: Flow, id: &str, count: usize) -> Vec<serde_json::Value> {
    let mut reader = env.results(flow);
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut seen = Vec::new();
    while seen.len() < count {
        let m = reader.next_before(deadline).await.unwrap_or_else(|| {
            panic!(
                "{id}: {} of {count} results after {:?}",
                seen.len(),
                common::PATIENCE
            )
        });
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["request_id"] == id {
            seen.push(v);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_has_one_result_whatever_is_published_under_it() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 1, 100_000).await.unwrap();
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Charge],
        })
        .await;
    let producer = Producer::new(&env.settings.kafka).unwrap();
    let publish = |body: String| {
        let message = OutMessage::new(env.topics.requests(Flow::Charge), "1", body);
        let producer = producer.clone();
        async move { producer.send(&message).await.unwrap() }
    };
    let valid = |id: &str| json!({"request_id": id, "user_id": 1, "amount": 1000}).to_string();
    let refused = |id: &str| json!({"request_id": id, "user_id": 1, "amount": "1000"}).to_string();

    // Decided first, then a message under its id that cannot be decided:
    // the stored answer, not invalid_request.
    publish(valid("one-decided-first")).await;
    let first = results_of(&env, Flow::Charge, "one-decided-first", 1).await;
    assert_eq!(first[0]["status"], "succeeded");
    publish(refused("one-decided-first")).await;
    let both = results_of(&env, Flow::Charge, "one-decided-first", 2).await;
    assert_eq!(
        both[1], both[0],
        "the refused message gets the first answer"
    );

    // Refused first, then a valid message under its id: the refusal is the
    // answer, and nothing is charged.
    publish(refused("one-refused-first")).await;
    let first = results_of(&env, Flow::Charge, "one-refused-first", 1).await;
    assert_eq!(first[0]["error"]["code"], "invalid_request");
    publish(valid("one-refused-first")).await;
    let both = results_of(&env, Flow::Charge, "one-refused-first", 2).await;
    assert_eq!(both[1], both[0], "the valid message gets the refusal");
    let refusal = both[0].clone();
    assert_eq!(
        env.balance(1).await,
        Some(101_000),
        "charged once, by one-decided-first"
    );

    // Both at once, in whichever batches they fall: one content.
    publish(refused("one-together")).await;
    publish(valid("one-together")).await;
    let both = results_of(&env, Flow::Charge, "one-together", 2).await;
    assert_eq!(both[1], both[0]);

    // The gateway answers a refusal like any result.
    let (status, answer) = common::get_json(
        &reqwest::Client::new(),
        format!("{}/v1/requests/one-refused-first", app.http()),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer, refusal);

    app.stop().await;
    assert!(env.audit().await.passed());
    env.cleanup().await;
}
