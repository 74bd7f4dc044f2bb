//! First come, first served across partitions and across worker processes:
//! the stock goes to the requests accepted first, however the broker hands
//! partitions out and however unevenly the processes keep up.

mod common;

use std::collections::HashMap;

use common::{ids, wait_metric, TestEnv};
use serde_json::json;
use stampede::app::Roles;
use stampede::kafka::{Flow, OutMessage};
use stampede::store::users;
use stampede::workers::WorkerKind;

const COUPON: i64 = 7;

/// A coupon request stamped as accepted at `accepted`, on `partition`.
fn request(
    env: &TestEnv,
    user: i64,
    partition: i32,
    accepted: chrono::DateTime<chrono::Utc>,
) -> OutMessage {
    let mut message = OutMessage::new(
        env.topics.requests(Flow::Coupon),
        user.to_string(),
        json!({"request_id": format!("f-{user}"), "user_id": user, "coupon_id": COUPON,
               "requested_at": accepted.to_rfc3339()})
        .to_string(),
    );
    message.partition = Some(partition);
    message
}

/// The largest time by which a winner was accepted after some loser (ms).
fn largest_inversion(accepted: &HashMap<i64, i64>, winners: &[i64]) -> i64 {
    let mut all: Vec<(i64, bool)> = accepted
        .iter()
        .map(|(user, at)| (*at, winners.contains(user)))
        .collect();
    all.sort();
    let mut earliest_loser = None;
    let mut largest = 0;
    for (at, won) in all {
        match (won, earliest_loser) {
            (false, None) => earliest_loser = Some(at),
            (true, Some(loser)) => largest = largest.max(at - loser),
            _ => {}
        }
    }
    largest
}

/// The broker hands a consumer one partition's chunk, then the next's; the
/// stock must still go to the requests accepted first across partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_fetched_one_after_another_are_decided_in_acceptance_order() {
    const PER_PARTITION: i64 = 300;
    const STOCK: i64 = 100;
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 2 * PER_PARTITION, 0).await.unwrap();
    env.create_coupon(COUPON, STOCK).await;
    // Partition 0 holds the even milliseconds, partition 1 the odd ones, all
    // within the second a producer's own stamp is believed.
    let base = chrono::Utc::now() - chrono::Duration::milliseconds(700);
    let mut messages = Vec::new();
    for partition in 0..2 {
        for i in 0..PER_PARTITION {
            let user = 1 + partition * PER_PARTITION + i;
            let accepted = base + chrono::Duration::milliseconds(2 * i + partition);
            messages.push(request(&env, user, partition as i32, accepted));
        }
    }
    env.producer.send_all(&messages).await.unwrap();
    // Small batches: without merging, the first batches would be partition 0's.
    let app = env
        .start_with(Roles::workers(vec![WorkerKind::Coupon]), |s| {
            s.worker.batch_size = 20;
            // Every partition of the backlog arrives within this, however
            // busy the machine.
            s.worker.fcfs_wait_ms = 2_000;
        })
        .await;
    let all = ids((1..=2 * PER_PARTITION).map(|u| format!("f-{u}")));
    let results = env.wait_results(Flow::Coupon, &all).await;
    let mut winners: Vec<i64> = results
        .values()
        .filter(|r| r[0]["status"] == "succeeded")
        .map(|r| r[0]["user_id"].as_i64().unwrap())
        .collect();
    winners.sort();
    // The earliest hundred: the first fifty of each partition.
    let first: Vec<i64> = (1..=STOCK / 2)
        .chain(PER_PARTITION + 1..=PER_PARTITION + STOCK / 2)
        .collect();
    assert_eq!(winners, first, "the stock went to the earliest accepted");
    app.stop().await;
    env.cleanup().await;
}

/// Two worker processes, one far slower than the other (one request per
/// batch): the fast one must not hand the stock to its later requests while
/// the slow one still holds earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_worker_process_does_not_run_ahead_of_a_slow_one() {
    const REQUESTS: i64 = 600;
    const STOCK: i64 = 100;
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, REQUESTS, 0).await.unwrap();
    env.create_coupon(COUPON, STOCK).await;
    let (slow, slow_metrics) =
        env.worker_with_env("coupon", &[("STAMPEDE_WORKER__BATCH_SIZE", "1")]);
    wait_metric(&slow_metrics, "stampede_consumer_assigned_partitions", 1.0).await;
    let (fast, fast_metrics) = env.worker_with_metrics("coupon");
    wait_metric(&fast_metrics, "stampede_consumer_assigned_partitions", 1.0).await;
    // Requests arrive as from a gateway: stamped when sent, 50 every 50 ms,
    // spread over every partition (so over both processes).
    let mut accepted = HashMap::new();
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(50));
    for round in 0..REQUESTS / 50 {
        pace.tick().await;
        let mut messages = Vec::new();
        for i in 0..50 {
            let user = 1 + round * 50 + i;
            let now = chrono::Utc::now();
            accepted.insert(user, now.timestamp_millis());
            messages.push(request(&env, user, (user % 4) as i32, now));
        }
        env.producer.send_all(&messages).await.unwrap();
    }
    let all = ids((1..=REQUESTS).map(|u| format!("f-{u}")));
    let results = env.wait_results(Flow::Coupon, &all).await;
    let winners: Vec<i64> = results
        .values()
        .filter(|r| r[0]["status"] == "succeeded")
        .map(|r| r[0]["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(winners.len() as i64, STOCK);
    let wait = stampede::config::Settings::default().worker.fcfs_wait_ms as i64;
    let inversion = largest_inversion(&accepted, &winners);
    assert!(
        inversion <= wait,
        "a winner was accepted {inversion} ms after a loser (at most {wait} ms allowed)"
    );
    assert!(slow.terminate().success());
    assert!(fast.terminate().success());
    env.cleanup().await;
}
