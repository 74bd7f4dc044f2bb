//! Two workers holding the same batch: when the group hands a partition to a
//! second worker while the first still decides it (a dependency outage past
//! `max.poll.interval.ms`, a process paused past its session timeout), the
//! one that loses the race must leave no trace in the counters.

mod common;

use common::{eventually, TestEnv};
use serde_json::json;
use stampede::app::Roles;
use stampede::domain::messages::OrderRequest;
use stampede::kafka::turns::{Turn, Turns};
use stampede::kafka::Flow;
use stampede::store::{products, users};
use stampede::workers::order::OrderLogic;
use stampede::workers::pipeline::Decide;
use stampede::workers::WorkerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_worker_that_loses_the_race_gives_its_stock_back() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(1), 100_000).await.unwrap();
    env.create_product(1, 10_000, 10).await;
    let order =
        json!({"request_id": "o-raced", "user_id": 1, "items": [{"product_id": 1, "quantity": 2}]});

    // The first worker decides the order and finishes it.
    let winner = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    env.publish(Flow::Order, 1, &order).await;
    assert_eq!(
        env.result_of(Flow::Order, "o-raced").await["status"],
        "succeeded"
    );
    winner.stop().await;

    // The second worker looked the request up before the first committed, so
    // it decides it too: its commit must fail, and the redelivery that
    // follows is answered from the stored result.
    let loser = OrderLogic {
        db: env.db.clone(),
        counters: env.counters.clone(),
    };
    let request: OrderRequest = serde_json::from_value(order).unwrap();
    loser.prepare(&[&request]).await.unwrap();
    let turns = Turns::default();
    let attempt = loser
        .decide(&[&request], &[None], &(), Turn::alone(&turns))
        .await;
    assert!(attempt.is_err(), "a second commit of the same request");
    loser.replayed(&["o-raced"]).await.unwrap();

    let pg_stock = products::all_stock(&env.db).await.unwrap();
    assert_eq!(pg_stock, vec![(1, 8)]);
    assert_eq!(
        env.counters.product_stock(1).await.unwrap(),
        Some(8),
        "Redis stock matches PostgreSQL's: nothing reserved twice"
    );
    assert!(env.audit().await.passed());
    env.cleanup().await;
}

/// Users 1 to 3, coupon 5 (10 units), product 1 (10 units); users 1 to
/// `coupon_users` are issued the coupon and user 1 orders 2 units (`o-1`),
/// all decided by workers that are stopped again.
async fn coupons_and_an_order_decided(env: &TestEnv, coupon_users: i64) {
    users::seed(&env.db, 1, 3, 100_000).await.unwrap();
    env.create_coupon(5, 10).await;
    env.create_product(1, 1_000, 10).await;
    let app = env
        .start(Roles::workers(vec![WorkerKind::Coupon, WorkerKind::Order]))
        .await;
    for user in 1..=coupon_users {
        env.publish(
            Flow::Coupon,
            user,
            &json!({"request_id": format!("k-{user}"), "user_id": user, "coupon_id": 5}),
        )
        .await;
    }
    env.publish(
        Flow::Order,
        1,
        &json!({"request_id": "o-1", "user_id": 1, "items": [{"product_id": 1, "quantity": 2}]}),
    )
    .await;
    let ids = common::ids((1..=coupon_users).map(|u| format!("k-{u}")));
    for results in env.wait_results(Flow::Coupon, &ids).await.values() {
        assert_eq!(results[0]["status"], "succeeded");
    }
    assert_eq!(
        env.result_of(Flow::Order, "o-1").await["status"],
        "succeeded"
    );
    app.stop().await;
}

/// Grants and holds whose requests PostgreSQL has already decided — left by a
/// Redis restored from an older snapshot, or by a clean-up cut short after a
/// commit — are spent: a reload drops them instead of subtracting them again
/// (forever), and `stampede reconcile` repairs the counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_grants_and_holds_are_dropped_not_subtracted_again() {
    let env = TestEnv::new().await;
    coupons_and_an_order_decided(&env, 3).await;

    // Redis as a snapshot taken between those commits and their clean-up.
    let mut redis = env.counters.connection();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(env.counters.key("{coupon:5}:grants"))
        .arg(&["k-1", "1", "k-2", "2", "k-3", "3"][..])
        .cmd("SET")
        .arg(env.counters.key("{coupon:5}:stock"))
        .arg(7)
        .cmd("HSET")
        .arg(env.counters.key("{inventory}:holds"))
        .arg(&["o-1", "1:2"][..])
        .query_async(&mut redis)
        .await
        .unwrap();

    stampede::reconcile::reconcile_all(&env.db, &env.counters, true)
        .await
        .unwrap();
    assert_eq!(env.counters.coupon_stock(5).await.unwrap(), Some(7));
    assert_eq!(env.counters.product_stock(1).await.unwrap(), Some(8));
    assert!(env.counters.grant_ids(5).await.unwrap().is_empty());
    assert!(env.counters.hold_ids().await.unwrap().is_empty());
    assert!(env.audit().await.passed());
    env.cleanup().await;
}

/// A crash between an issue's commit and the clean-up of its grant leaves
/// the grant in Redis. When the request is delivered again it is answered
/// from its stored result, byte for byte, and the grant is dropped then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_issue_drops_the_grant_a_crash_left() {
    let env = TestEnv::new().await;
    coupons_and_an_order_decided(&env, 2).await;
    let mut redis = env.counters.connection();
    let _: () = redis::cmd("HSET")
        .arg(env.counters.key("{coupon:5}:grants"))
        .arg(&["k-1", "1", "k-2", "2"][..])
        .query_async(&mut redis)
        .await
        .unwrap();

    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    for user in 1..=2 {
        env.publish(
            Flow::Coupon,
            user,
            &json!({"request_id": format!("k-{user}"), "user_id": user, "coupon_id": 5}),
        )
        .await;
    }
    eventually("the redelivered requests' grants are dropped", || async {
        env.counters
            .grant_ids(5)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    app.stop().await;
    let mut answers: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
    for message in env.results(Flow::Coupon).take(4).await {
        let result: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        answers
            .entry(result["request_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(message.payload);
    }
    for (id, seen) in &answers {
        assert_eq!(seen.len(), 2, "{id}");
        assert_eq!(seen[0], seen[1], "{id}: the stored result again");
    }
    assert_eq!(env.counters.coupon_stock(5).await.unwrap(), Some(8));
    assert!(env.audit().await.passed());
    env.cleanup().await;
}

/// A Redis restored from an older snapshot (or a replica promoted without the
/// latest writes) holds figures from another time: units sold since are back
/// in stock, holders are missing. Workers notice that Redis is not the server
/// the counters were last loaded into and reload every counter first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_from_another_redis_are_reloaded_before_deciding() {
    let env = TestEnv::new().await;
    coupons_and_an_order_decided(&env, 1).await;

    // Redis as it was before those requests, and the record saying the
    // counters were loaded into another server than the one answering now.
    let mut redis = env.counters.connection();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(env.counters.key("{coupon:5}:stock"))
        .arg(10)
        .cmd("DEL")
        .arg(env.counters.key("{coupon:5}:holders"))
        .cmd("HSET")
        .arg(env.counters.key("{inventory}:stock"))
        .arg(1)
        .arg(10)
        .query_async(&mut redis)
        .await
        .unwrap();
    sqlx::query("UPDATE counter_source SET redis_run_id = 'a-server-since-replaced'")
        .execute(&env.db)
        .await
        .unwrap();

    let app = env
        .start(Roles::workers(vec![WorkerKind::Coupon, WorkerKind::Order]))
        .await;
    env.publish(
        Flow::Coupon,
        1,
        &json!({"request_id": "k-1-again", "user_id": 1, "coupon_id": 5}),
    )
    .await;
    let again = env.result_of(Flow::Coupon, "k-1-again").await;
    assert_eq!(again["error"]["code"], "coupon_already_issued", "{again}");
    app.stop().await;
    assert_eq!(env.counters.coupon_stock(5).await.unwrap(), Some(9));
    assert_eq!(env.counters.product_stock(1).await.unwrap(), Some(8));
    assert!(env.audit().await.passed());
    env.cleanup().await;
}
