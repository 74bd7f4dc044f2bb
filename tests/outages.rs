//! Dependency outages and overload: while PostgreSQL or Redis cannot be
//! reached, workers decide nothing, retry with backoff (counted by cause), and
//! once the link is back they resume and answer every request exactly once;
//! a gateway pushed beyond its in-flight limit turns requests away at once.
//! (Its own test binary: the assertions read this process's metrics.)

mod common;

use std::collections::{HashMap, HashSet};

use common::link::Link;
use common::{eventually, ids, metric_sum, scrape, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::config::Url;
use stampede::kafka::Flow;
use stampede::store::{coupons, users};
use stampede::workers::WorkerKind;

/// `stampede_retries_total` of `worker` for `cause`, from this process's metrics.
fn retries(worker: &str, cause: &str) -> f64 {
    metric_sum(
        &stampede::telemetry::metrics::render(),
        "stampede_retries_total",
        &[
            &format!("worker=\"{worker}\""),
            &format!("cause=\"{cause}\""),
        ],
    )
}

/// Waits until the worker has retried at least once for `cause`.
async fn wait_for_retries(worker: &str, cause: &str) {
    eventually(&format!("{worker} retries for {cause}"), || async {
        (retries(worker, cause) > 0.0).then_some(())
    })
    .await
}

async fn processed(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_requests")
        .fetch_one(&env.db)
        .await
        .unwrap()
}

fn request_ids(requests: &[(i64, Value)]) -> HashSet<String> {
    ids(requests
        .iter()
        .map(|(_, r)| r["request_id"].as_str().unwrap().to_owned()))
}

/// Publishes the first `before` requests and waits for their results; cuts
/// `link` and publishes the rest, which the `worker` must not decide while it
/// retries for `cause`; then restores the link. Returns each request's one
/// result.
async fn through_an_outage(
    env: &TestEnv,
    link: &Link,
    (flow, worker, cause): (Flow, &str, &str),
    requests: &[(i64, Value)],
    before: usize,
) -> HashMap<String, Value> {
    let (first, rest) = requests.split_at(before);
    env.publish_all(flow, first).await;
    env.wait_results(flow, &request_ids(first)).await;

    link.cut();
    env.publish_all(flow, rest).await;
    wait_for_retries(worker, cause).await;
    assert_eq!(
        processed(env).await,
        before as i64,
        "nothing decided while {cause} is away"
    );

    link.restore();
    env.wait_results(flow, &request_ids(requests))
        .await
        .into_iter()
        .map(|(id, mut copies)| {
            assert_eq!(copies.len(), 1, "{id}: one result");
            (id, copies.remove(0))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_wait_out_a_postgres_outage_and_lose_nothing() {
    let link = Link::to("127.0.0.1:5432").await;
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 100, 0).await.unwrap();
    let app = env
        .start_with(Roles::workers(vec![WorkerKind::Charge]), |s| {
            s.database.url = Url(link.route(s.database.url.as_str()));
        })
        .await;
    let requests: Vec<(i64, Value)> = (0..400)
        .map(|i| {
            let user = i % 100 + 1;
            (
                user,
                json!({"request_id": format!("pg-{i}"), "user_id": user, "amount": 1_000}),
            )
        })
        .collect();
    let results = through_an_outage(
        &env,
        &link,
        (Flow::Charge, "charge", "postgres"),
        &requests,
        200,
    )
    .await;
    for (id, result) in &results {
        assert_eq!(result["status"], "succeeded", "{id}: {result}");
    }
    for user in 1..=100 {
        assert_eq!(env.balance(user).await, Some(4_000), "user {user}");
    }
    assert_eq!(processed(&env).await, 400);
    let audit = env.audit().await;
    assert!(audit.passed(), "{}", audit.render());
    app.stop().await;
    env.cleanup().await;
}

/// The audit run while PostgreSQL is away (the load generator's verdict
/// while a fault is still under way) waits for it instead of failing at
/// once; past its patience it gives the dependency's error, as retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_waits_out_a_postgres_outage() {
    let link = Link::to("127.0.0.1:5432").await;
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 10, 0).await.unwrap();
    let mut database = env.settings.database.clone();
    database.url = Url(link.route(database.url.as_str()));
    let db = stampede::store::connect(&database).await.unwrap();
    link.cut();

    let patience = std::time::Duration::from_secs(1);
    let gave_up = stampede::audit::audit_when_reachable(&db, &env.counters, None, patience)
        .await
        .expect_err("PostgreSQL is away");
    assert!(gave_up.is_retryable(), "{gave_up:?}");

    let refused = link.refused();
    let waiting = {
        let (db, counters) = (db.clone(), env.counters.clone());
        tokio::spawn(async move {
            stampede::audit::audit_when_reachable(&db, &counters, None, common::PATIENCE).await
        })
    };
    eventually("the audit tries PostgreSQL while it is away", || async {
        (link.refused() > refused).then_some(())
    })
    .await;
    link.restore();
    let report = waiting
        .await
        .unwrap()
        .expect("the audit once PostgreSQL is back");
    assert!(report.passed(), "{}", report.render());
    db.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_drop_waits_out_a_redis_outage_and_never_oversells() {
    const COUPON: i64 = 77;
    let link = Link::to("127.0.0.1:6379").await;
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 300, 0).await.unwrap();
    env.create_coupon(COUPON, 100).await;
    let app = env
        .start_with(Roles::workers(vec![WorkerKind::Coupon]), |s| {
            s.redis.url = Url(link.route(s.redis.url.as_str()));
        })
        .await;
    let requests: Vec<(i64, Value)> = (1..=300)
        .map(|user| {
            (
                user,
                json!({"request_id": format!("rd-{user}"), "user_id": user, "coupon_id": COUPON}),
            )
        })
        .collect();
    let results = through_an_outage(
        &env,
        &link,
        (Flow::Coupon, "coupon", "redis"),
        &requests,
        60,
    )
    .await;
    let mut won = 0;
    for (id, result) in &results {
        match result["status"].as_str() {
            Some("succeeded") => won += 1,
            _ => assert_eq!(result["error"]["code"], "coupon_sold_out", "{id}"),
        }
    }
    assert_eq!(won, 100, "exactly the stock was issued");
    assert_eq!(coupons::holders(&env.db, COUPON).await.unwrap().len(), 100);
    assert_eq!(env.counters.coupon_stock(COUPON).await.unwrap(), Some(0));
    let audit = env.audit().await;
    assert!(audit.passed(), "{}", audit.render());
    app.stop().await;
    env.cleanup().await;
}

/// A gauge or counter of the gateway's `/metrics`, summed over its labels.
async fn metric(http: &str, name: &str) -> f64 {
    metric_sum(&scrape(&format!("{http}/metrics")).await, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_the_gateway_turns_requests_away_at_once() {
    let redis = Link::to("127.0.0.1:6379").await;
    let env = TestEnv::new().await;
    let app = env
        .start_with(Roles::gateway_only(), |s| {
            s.gateway.max_in_flight = 2;
            s.redis.url = Url(redis.route(s.redis.url.as_str()));
            s.redis.response_timeout_ms = 120_000;
        })
        .await;
    let http = app.http();
    let c = reqwest::Client::new();
    let charge = |key: String| {
        let request = c
            .post(format!("{http}/v1/charges"))
            .header("Idempotency-Key", key)
            .json(&json!({"user_id": 1, "amount": 5_000}));
        async move { request.send().await.unwrap() }
    };
    // Two keyed requests take both slots and wait on a stalled Redis.
    redis.pause();
    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(charge(format!("held-{i}"))))
        .collect();
    eventually("the two keyed requests get in", || async {
        (metric(&http, "stampede_gateway_in_flight_requests").await >= 2.0).then_some(())
    })
    .await;
    // Everything beyond the limit is answered at once, not queued.
    for i in 0..3 {
        let turned_away = charge(format!("away-{i}")).await;
        assert_eq!(turned_away.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(turned_away.headers()["retry-after"], "1");
        let body: Value = turned_away.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
    }
    let scraped = scrape(&format!("{http}/metrics")).await;
    assert_eq!(
        metric_sum(
            &scraped,
            "stampede_gateway_requests_total",
            &["status=\"503\"", "code=\"overloaded\""]
        ),
        3.0
    );
    redis.restore();
    for request in held {
        assert_eq!(request.await.unwrap().status(), StatusCode::ACCEPTED);
    }
    // The turned-away keys were never claimed: retried, they are accepted.
    for i in 0..3 {
        assert_eq!(
            charge(format!("away-{i}")).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let published = env.reader(&env.topics.requests(Flow::Charge)).take(5).await;
    let ids: HashSet<String> = published
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap()["request_id"].to_string())
        .collect();
    assert_eq!(
        ids.len(),
        5,
        "each accepted request published once: {ids:?}"
    );
    assert_eq!(
        metric(&http, "stampede_gateway_in_flight_requests").await,
        0.0
    );
    app.stop().await;
    env.cleanup().await;
}
