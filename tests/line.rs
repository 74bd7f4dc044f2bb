//! A place in line during a drop: `GET /v1/requests/{id}` answers a pending
//! request with how many undecided requests are ahead of it in its
//! partition and an estimate of when its turn comes; Kafka clients compute
//! the same from offsets and the results' `source.*` headers.

mod common;

use common::TestEnv;
use futures::StreamExt;
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::kafka::{Flow, OutMessage};
use stampede::store::users;
use stampede::workers::WorkerKind;

async fn pending_or_result(c: &reqwest::Client, http: &str, id: &str) -> (u16, Value) {
    let r = c
        .get(format!("{http}/v1/requests/{id}?wait_ms=0"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_during_a_drop_only_fall_until_the_answer() {
    // Small batches: the line moves in many steps.
    let env = TestEnv::with(|s| s.worker.batch_size = 5).await;
    users::seed(&env.db, 1, 2_000, 0).await.unwrap();
    env.create_coupon(7, 500).await;
    let gateway = env
        .start(Roles {
            gateway: true,
            workers: vec![],
        })
        .await;
    let http = gateway.http();
    let c = reqwest::Client::new();
    let accepted: Vec<String> = futures::stream::iter(1..=2_000)
        .map(|user| {
            let c = c.clone();
            let http = http.clone();
            async move {
                let r: Value = c
                    .post(format!("{http}/v1/coupons/7/issue"))
                    .json(&json!({"user_id": user}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r["request_id"].as_str().unwrap().to_owned()
            }
        })
        .buffered(32)
        .collect()
        .await;

    // No worker yet: nothing is decided, so a request's position is its
    // offset. Follow the one furthest back among the last accepted.
    let mut furthest = (String::new(), -1);
    for id in &accepted[accepted.len() - 40..] {
        let (status, answer) = pending_or_result(&c, &http, id).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["status"], "pending");
        let position = answer["position"].as_i64().expect("a position");
        if position > furthest.1 {
            furthest = (id.clone(), position);
        }
    }
    let (id, start) = furthest;
    assert!(
        start >= 300,
        "about 500 requests per partition ahead, got {start}"
    );

    let worker = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    let mut positions = vec![start];
    let mut etas = 0;
    let result = loop {
        let (status, answer) = pending_or_result(&c, &http, &id).await;
        if status == 200 {
            break answer;
        }
        let position = answer["position"]
            .as_i64()
            .expect("a position while pending");
        assert!(
            position <= *positions.last().unwrap(),
            "a position never goes up: {positions:?} then {position}"
        );
        positions.push(position);
        etas += usize::from(answer["eta_ms"].is_u64());
    };
    assert_eq!(result["request_id"], id.as_str());
    let distinct = {
        let mut p = positions.clone();
        p.dedup();
        p.len()
    };
    assert!(distinct >= 3, "the line moved in steps: {positions:?}");
    assert!(etas > 0, "an estimate once the line moved");

    // A Kafka client's own computation: its delivery report gives the place,
    // the result's headers name the place it answers.
    let (partition, offset) = env
        .producer
        .send(&OutMessage::new(
            env.topics.requests(Flow::Coupon),
            "5",
            json!({"request_id": "k-direct", "user_id": 5, "coupon_id": 7}).to_string(),
        ))
        .await
        .unwrap();
    let mut reader = env.results(Flow::Coupon);
    let answer = loop {
        let record = reader.take(1).await.remove(0);
        let v: Value = serde_json::from_slice(&record.payload).unwrap();
        if v["request_id"] == "k-direct" {
            break record;
        }
    };
    assert_eq!(answer.headers["source.partition"], partition.to_string());
    assert_eq!(answer.headers["source.offset"], offset.to_string());

    worker.stop().await;
    gateway.stop().await;
    env.cleanup().await;
}
