//! The ledger takes only the locks its invariants need: a batch that holds
//! users' balances (a charge, an order) must not stall a coupon drop for the
//! same users, nor the other way round.

mod common;

use common::TestEnv;
use serde_json::json;
use stampede::app::Roles;
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_issue_commits_while_a_balance_batch_holds_the_users() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 2, 10_000).await.unwrap();
    env.create_coupon(3, 10).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;

    // A charge or order batch in the middle of its transaction: the users'
    // balance rows are locked until it commits.
    let mut balances = env.db.begin().await.unwrap();
    let locked = users::lock_balances(&mut balances, &[1, 2]).await.unwrap();
    assert_eq!(locked.len(), 2);

    for user in 1..=2 {
        env.publish(
            Flow::Coupon,
            user,
            &json!({"request_id": format!("k-{user}"), "user_id": user, "coupon_id": 3}),
        )
        .await;
    }
    // Issuing refers to the users but changes nothing of theirs: it must
    // not wait for the balance batch.
    let ids = common::ids((1..=2).map(|u| format!("k-{u}")));
    for results in env.wait_results(Flow::Coupon, &ids).await.values() {
        assert_eq!(results[0]["status"], "succeeded", "{}", results[0]);
    }
    balances.commit().await.unwrap();
    app.stop().await;
    assert!(env.audit().await.passed());
    env.cleanup().await;
}
