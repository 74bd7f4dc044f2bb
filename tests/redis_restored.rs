//! A Redis restored from an older snapshot while no request arrives: the
//! coupon and product stock sold since the snapshot is back in its counters.
//! A worker must not wait for the next request to notice; `stampede audit`
//! (Redis equals PostgreSQL when idle) holds once the workers settle.
//!
//! Each test runs a Redis server of its own, which it restarts.

mod common;

use std::collections::HashSet;

use common::private_redis::PrivateRedis;
use common::TestEnv;
use serde_json::json;
use stampede::app::Roles;
use stampede::config::{Settings, Url};
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;

/// Users 1 to 6 with money, coupon 5 (10 units), product 1 (10 units), the
/// counters in `redis`.
async fn shop(redis: &PrivateRedis, adjust: impl FnOnce(&mut Settings)) -> TestEnv {
    let url = redis.url();
    let env = TestEnv::with(|s| {
        s.redis.url = Url(url);
        adjust(s);
    })
    .await;
    users::seed(&env.db, 1, 6, 100_000).await.unwrap();
    env.create_coupon(5, 10).await;
    env.create_product(1, 1_000, 10).await;
    env
}

/// Coupon 5 for `users`, and an order of `units` of product 1 per user.
async fn sell(env: &TestEnv, users: std::ops::RangeInclusive<i64>, units: i64) {
    let mut coupons = HashSet::new();
    let mut orders = HashSet::new();
    for user in users {
        let (k, o) = (format!("k-{user}"), format!("o-{user}"));
        env.publish(
            Flow::Coupon,
            user,
            &json!({"request_id": k, "user_id": user, "coupon_id": 5}),
        )
        .await;
        env.publish(
            Flow::Order,
            user,
            &json!({"request_id": o, "user_id": user, "items": [{"product_id": 1, "quantity": units}]}),
        )
        .await;
        coupons.insert(k);
        orders.insert(o);
    }
    for results in env.wait_results(Flow::Coupon, &coupons).await.values() {
        assert_eq!(results[0]["status"], "succeeded", "{results:?}");
    }
    for results in env.wait_results(Flow::Order, &orders).await.values() {
        assert_eq!(results[0]["status"], "succeeded", "{results:?}");
    }
}

/// Redis's coupon and product stock, once Redis answers.
async fn redis_stock(env: &TestEnv) -> Option<(i64, i64)> {
    let coupon = env.counters.coupon_stock(5).await.ok()??;
    let product = env.counters.product_stock(1).await.ok()??;
    Some((coupon, product))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_reloads_the_counters_of_a_redis_restored_from_an_older_snapshot() {
    let mut redis = PrivateRedis::start().await;
    let env = shop(&redis, |_| {}).await;
    let app = env
        .start(Roles::workers(vec![WorkerKind::Coupon, WorkerKind::Order]))
        .await;
    sell(&env, 1..=2, 1).await;
    assert_eq!(redis_stock(&env).await, Some((8, 8)));
    redis.save().await;
    sell(&env, 3..=6, 2).await;
    // PostgreSQL: 6 coupons and 10 units sold. The snapshot: 2 and 2.
    redis.restart_from_snapshot().await;

    // No request comes; the worker notices the restored Redis by itself.
    common::eventually("Redis's stock equals PostgreSQL's again", || async {
        (redis_stock(&env).await == Some((4, 0))).then_some(())
    })
    .await;
    app.stop().await;
    let audit = env.audit().await;
    assert!(audit.passed(), "{audit:?}");
    env.cleanup().await;
}

/// A worker stopped right after the restore, before its next look at the
/// server: it reloads as it stops, since the next worker may start much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_right_after_a_restore_reloads_the_counters_first() {
    let mut redis = PrivateRedis::start().await;
    let env = shop(&redis, |s| s.redis.watch_interval_ms = 600_000).await;
    let app = env
        .start(Roles::workers(vec![WorkerKind::Coupon, WorkerKind::Order]))
        .await;
    sell(&env, 1..=2, 1).await;
    redis.save().await;
    sell(&env, 3..=6, 2).await;
    redis.restart_from_snapshot().await;
    app.stop().await;

    let stock = common::eventually("Redis answers", || redis_stock(&env)).await;
    assert_eq!(stock, (4, 0), "coupon and product stock per PostgreSQL");
    let audit = env.audit().await;
    assert!(audit.passed(), "{audit:?}");
    env.cleanup().await;
}
