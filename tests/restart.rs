//! A worker killed mid-stream loses nothing and doubles nothing.

mod common;

use common::{ids, TestEnv};
use serde_json::json;
use stampede::kafka::Flow;
use stampede::store::users;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_worker_killed_mid_stream_loses_nothing() {
    let env = TestEnv::with(|s| {
        s.worker.batch_size = 50;

        s.rules.max_balance = i64::MAX;
    })
    .await;
    users::seed(&env.db, 1, 50, 0).await.unwrap();
    let requests: Vec<(i64, serde_json::Value)> = (0..3_000)
        .map(|i| {
            (
                1 + i % 50,
                json!({"request_id": format!("r-{i}"), "user_id": 1 + i % 50, "amount": 1_000}),
            )
        })
        .collect();
    // The second half arrives only after the kill, so the worker always dies
    // mid-stream, however fast it ran until then.
    let (first, second) = requests.split_at(1_500);
    env.publish_all(Flow::Charge, first).await;

    let worker = env.worker_process("charge");
    // Kill it once it has made visible progress.
    env.results(Flow::Charge)
        .wait_for(100, "the worker makes progress")
        .await;
    worker.kill();
    let done_before_restart: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_requests")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(
        (100..=1_500).contains(&done_before_restart),
        "killed mid-stream ({done_before_restart} done)"
    );
    env.publish_all(Flow::Charge, second).await;

    let worker = env.worker_process("charge");
    let results = env
        .wait_results(Flow::Charge, &ids((0..3_000).map(|i| format!("r-{i}"))))
        .await;
    for (id, copies) in &results {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "{id}: redelivered results differ"
        );
        assert_eq!(copies[0]["status"], "succeeded");
    }
    for user in 1..=50 {
        assert_eq!(env.balance(user).await, Some(60 * 1_000), "user {user}");
    }
    let charges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM balance_history WHERE kind = 'charge'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(charges, 3_000);
    assert!(env.audit().await.passed());
    assert!(
        worker.terminate().success(),
        "SIGTERM ends the worker cleanly"
    );
    env.cleanup().await;
}
