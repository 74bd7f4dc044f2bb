//! First-come coupon drops: exact under contention, across worker processes,
//! crashes and a Redis that loses its data.

mod common;

use std::collections::{HashMap, HashSet};

use common::{ids, post_and_wait, TestEnv};
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::kafka::Flow;
use stampede::store::{coupons, users};
use stampede::workers::WorkerKind;

const COUPON: i64 = 7;

/// `n` requests from `users` users (ids 1..=users), each user at least once.
fn drop_requests(n: usize, users: i64) -> Vec<(i64, Value)> {
    (0..n)
        .map(|i| {
            let user = if (i as i64) < users {
                i as i64 + 1
            } else {
                (i as i64 * 7919) % users + 1
            };
            (
                user,
                json!({"request_id": format!("k-{i}"), "user_id": user, "coupon_id": COUPON}),
            )
        })
        .collect()
}

/// Checks the drop's invariants and returns (issued, sold_out, already_issued).
async fn check_drop(env: &TestEnv, requests: &[(i64, Value)], stock: i64) -> (usize, usize, usize) {
    let wanted = ids(requests
        .iter()
        .map(|(_, r)| r["request_id"].as_str().unwrap().to_owned()));
    let results = env.wait_results(Flow::Coupon, &wanted).await;
    let mut by_user: HashMap<i64, Vec<&Value>> = HashMap::new();
    for (id, copies) in &results {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "{id}: one result content per request"
        );
        by_user
            .entry(copies[0]["user_id"].as_i64().unwrap())
            .or_default()
            .push(&copies[0]);
    }
    let (mut issued, mut sold_out, mut already) = (0, 0, 0);
    for (user, answers) in &by_user {
        let won = answers
            .iter()
            .filter(|a| a["status"] == "succeeded")
            .count();
        assert!(won <= 1, "user {user} got the coupon {won} times");
        for a in answers.iter().filter(|a| a["status"] == "rejected") {
            match a["error"]["code"].as_str().unwrap() {
                "coupon_already_issued" => {
                    assert_eq!(
                        won, 1,
                        "user {user} told already-issued without holding the coupon"
                    );
                    already += 1
                }
                "coupon_sold_out" => sold_out += 1,
                other => panic!("unexpected code {other}"),
            }
        }
        issued += won;
    }
    let distinct_users = by_user.len() as i64;
    assert_eq!(
        issued as i64,
        stock.min(distinct_users),
        "issued = min(stock, distinct users)"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM user_coupons WHERE coupon_id = $1")
        .bind(COUPON)
        .fetch_one(&env.db)
        .await
        .unwrap();
    let counted: i64 = sqlx::query_scalar("SELECT issued FROM coupons WHERE id = $1")
        .bind(COUPON)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!((rows, counted), (issued as i64, issued as i64));
    assert_eq!(
        env.counters.coupon_stock(COUPON).await.unwrap(),
        Some(stock - issued as i64),
        "Redis agrees with PostgreSQL"
    );
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    (issued, sold_out, already)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_through_two_worker_processes_issues_exactly_the_stock() {
    let env = TestEnv::with(|s| s.worker.batch_size = 200).await;
    users::seed(&env.db, 1, 3_000, 0).await.unwrap();
    env.create_coupon(COUPON, 1_000).await;
    let (a, metrics_a) = env.worker_with_metrics("coupon");
    let (b, metrics_b) = env.worker_with_metrics("coupon");
    common::wait_metric(&metrics_a, "stampede_consumer_assigned_partitions", 1.0).await;
    common::wait_metric(&metrics_b, "stampede_consumer_assigned_partitions", 1.0).await;

    let requests = drop_requests(5_000, 3_000);
    env.publish_all(Flow::Coupon, &requests).await;
    let (issued, sold_out, already) = check_drop(&env, &requests, 1_000).await;
    assert_eq!(issued + sold_out + already, 5_000);
    assert!(
        already > 0 && sold_out > 0,
        "repeats and latecomers were answered ({already} already issued, {sold_out} sold out)"
    );
    let consumed_a = common::metric(&metrics_a, "stampede_messages_consumed_total").await;
    let consumed_b = common::metric(&metrics_b, "stampede_messages_consumed_total").await;
    assert!(
        consumed_a > 0.0 && consumed_b > 0.0,
        "both workers took part ({consumed_a}, {consumed_b})"
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_drop_and_restarted_keeps_every_invariant() {
    let env = TestEnv::with(|s| {
        s.worker.batch_size = 50;
    })
    .await;
    users::seed(&env.db, 1, 3_000, 0).await.unwrap();
    env.create_coupon(COUPON, 1_000).await;
    let requests = drop_requests(5_000, 3_000);
    // The second half arrives only after the kill, so the worker always dies
    // with the drop unfinished, however fast it ran until then.
    let (first, second) = requests.split_at(2_500);
    env.publish_all(Flow::Coupon, first).await;

    let worker = env.worker_process("coupon");
    env.results(Flow::Coupon)
        .wait_for(100, "progress before the kill")
        .await;
    worker.kill();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_requests")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(before >= 100, "the worker decided requests before the kill");
    env.publish_all(Flow::Coupon, second).await;
    let worker = env.worker_process("coupon");
    check_drop(&env, &requests, 1_000).await;
    assert!(worker.terminate().success());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_mid_drop_is_reconciled_and_never_oversells() {
    let env = TestEnv::with(|s| s.worker.batch_size = 100).await;
    users::seed(&env.db, 1, 3_000, 0).await.unwrap();
    env.create_coupon(COUPON, 1_000).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    let requests = drop_requests(5_000, 3_000);
    let (first, second) = requests.split_at(2_500);
    env.publish_all(Flow::Coupon, first).await;
    env.results(Flow::Coupon)
        .wait_for(500, "progress before the wipe")
        .await;
    env.wipe_redis().await;
    env.publish_all(Flow::Coupon, second).await;
    check_drop(&env, &requests, 1_000).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_redis_decision_and_the_commit_neither_leaks_nor_doubles() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 3, 0).await.unwrap();
    env.create_coupon(COUPON, 2).await;
    // A worker decided these in Redis, then died before PostgreSQL committed.
    let decided = env
        .counters
        .issue_coupons(COUPON, &[("k-a", 1), ("k-b", 2)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(decided.len(), 2);
    assert_eq!(env.counters.coupon_stock(COUPON).await.unwrap(), Some(0));
    // Redelivery, plus a latecomer.
    env.publish(
        Flow::Coupon,
        1,
        &json!({"request_id": "k-a", "user_id": 1, "coupon_id": COUPON}),
    )
    .await;
    env.publish(
        Flow::Coupon,
        2,
        &json!({"request_id": "k-b", "user_id": 2, "coupon_id": COUPON}),
    )
    .await;
    env.publish(
        Flow::Coupon,
        3,
        &json!({"request_id": "k-c", "user_id": 3, "coupon_id": COUPON}),
    )
    .await;
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    let results = env
        .wait_results(Flow::Coupon, &ids(["k-a", "k-b", "k-c"].map(String::from)))
        .await;
    assert_eq!(results["k-a"][0]["status"], "succeeded");
    assert_eq!(results["k-b"][0]["status"], "succeeded");
    assert_eq!(results["k-c"][0]["error"]["code"], "coupon_sold_out");
    let holders: HashSet<i64> = coupons::holders(&env.db, COUPON)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(holders, HashSet::from([1, 2]));
    assert!(env.audit().await.passed());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_and_coupons_take_no_stock() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 2, 0).await.unwrap();
    env.create_coupon(COUPON, 1).await;
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Coupon],
        })
        .await;
    env.publish(
        Flow::Coupon,
        99,
        &json!({"request_id": "k-nouser", "user_id": 99, "coupon_id": COUPON}),
    )
    .await;
    env.publish(
        Flow::Coupon,
        1,
        &json!({"request_id": "k-nocoupon", "user_id": 1, "coupon_id": 8}),
    )
    .await;
    env.publish(
        Flow::Coupon,
        2,
        &json!({"request_id": "k-ok", "user_id": 2, "coupon_id": COUPON}),
    )
    .await;
    let results = env
        .wait_results(
            Flow::Coupon,
            &ids(["k-nouser", "k-nocoupon", "k-ok"].map(String::from)),
        )
        .await;
    assert_eq!(results["k-nouser"][0]["error"]["code"], "user_not_found");
    assert_eq!(
        results["k-nocoupon"][0]["error"]["code"],
        "coupon_not_found"
    );
    let ok = &results["k-ok"][0];
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(ok["coupon_id"], COUPON);
    assert!(ok["user_coupon_id"].as_i64().is_some() && ok["expires_at"].as_str().is_some());
    let coupons: Value = reqwest::get(format!("{}/v1/users/2/coupons", app.http()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(coupons[0]["coupon_id"], COUPON);
    assert_eq!(coupons[0]["used"], false);
    assert_eq!(coupons[0]["user_coupon_id"], ok["user_coupon_id"]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_coupons_load_their_stock_and_issue_over_http() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 1, 0).await.unwrap();
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Coupon],
        })
        .await;
    let http = app.http();
    let c = reqwest::Client::new();
    let created = c
        .post(format!("{http}/v1/admin/coupons"))
        .json(&json!({"name": "10% off", "discount": {"type": "percent", "percent": 10}, "total_quantity": 5, "expires_at": "2030-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let id = created["coupon_id"].as_i64().unwrap();
    assert_eq!(env.counters.coupon_stock(id).await.unwrap(), Some(5));
    let bad = c.post(format!("{http}/v1/admin/coupons")).json(&json!({"name": "x", "discount": {"type": "percent", "percent": 120}, "total_quantity": 5, "expires_at": "2030-01-01T00:00:00Z"})).send().await.unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let result = post_and_wait(
        &c,
        &http,
        &format!("/v1/coupons/{id}/issue"),
        json!({"user_id": 1}),
    )
    .await;
    assert_eq!(result["status"], "succeeded");
    assert_eq!(env.counters.coupon_stock(id).await.unwrap(), Some(4));
    // The largest quantity loads and counts exactly (Lua's numbers are exact
    // integers only up to 2^53); one more is refused, as is such a stock.
    let most = stampede::domain::messages::MAX_UNITS;
    let coupon = |quantity: i64| json!({"name": "many", "discount": {"type": "fixed", "amount": 100}, "total_quantity": quantity, "expires_at": "2030-01-01T00:00:00Z"});
    let big = c
        .post(format!("{http}/v1/admin/coupons"))
        .json(&coupon(most))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), reqwest::StatusCode::CREATED);
    let big = big.json::<Value>().await.unwrap()["coupon_id"]
        .as_i64()
        .unwrap();
    assert_eq!(env.counters.coupon_stock(big).await.unwrap(), Some(most));
    let result = post_and_wait(
        &c,
        &http,
        &format!("/v1/coupons/{big}/issue"),
        json!({"user_id": 1}),
    )
    .await;
    assert_eq!(result["status"], "succeeded");
    assert_eq!(
        env.counters.coupon_stock(big).await.unwrap(),
        Some(most - 1)
    );
    for (path, body) in [
        ("coupons", coupon(most + 1)),
        ("coupons", coupon(i64::MAX)),
        (
            "products",
            json!({"name": "many", "price": 1, "stock": most + 1}),
        ),
    ] {
        let refused = c
            .post(format!("{http}/v1/admin/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    assert!(env.audit().await.passed());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_decided_in_the_order_its_requests_were_accepted() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 2, 0).await.unwrap();
    env.create_coupon(COUPON, 1).await;
    let now = chrono::Utc::now();
    // The later request lands first in the partition; the earlier one,
    // accepted half a second before, right behind it. One unit of stock.
    for (user, accepted) in [(2, now), (1, now - chrono::Duration::milliseconds(500))] {
        let mut message = stampede::kafka::OutMessage::new(
            env.topics.requests(Flow::Coupon),
            user.to_string(),
            json!({"request_id": format!("k-{user}"), "user_id": user, "coupon_id": COUPON,
                   "requested_at": accepted.to_rfc3339()})
            .to_string(),
        );
        message.partition = Some(0);
        env.producer.send(&message).await.unwrap();
    }
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    assert_eq!(
        env.result_of(Flow::Coupon, "k-1").await["status"],
        "succeeded"
    );
    assert_eq!(
        env.result_of(Flow::Coupon, "k-2").await["error"]["code"],
        "coupon_sold_out"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_sent_again_in_the_next_batch_gets_its_first_answer() {
    // One request per batch, so a batch is decided while the one before it
    // is still being recorded; every request id comes twice in a row, the
    // second time from another user.
    let env = TestEnv::with(|s| s.worker.batch_size = 1).await;
    users::seed(&env.db, 1, 100, 0).await.unwrap();
    let stock = 30;
    env.create_coupon(COUPON, stock).await;
    let mut requests = Vec::new();
    for i in 1..=50 {
        for user in [i, 50 + i] {
            requests.push((
                i,
                json!({"request_id": format!("k-{i}"), "user_id": user, "coupon_id": COUPON}),
            ));
        }
    }
    env.publish_all(Flow::Coupon, &requests).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    for record in env.results(Flow::Coupon).take(requests.len()).await {
        let v: Value = serde_json::from_slice(&record.payload).unwrap();
        answers
            .entry(v["request_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    let mut winners = HashSet::new();
    for i in 1..=50 {
        let copies = &answers[&format!("k-{i}")];
        assert_eq!(copies.len(), 2, "k-{i}: one answer per message");
        assert_eq!(
            copies[0], copies[1],
            "k-{i}: the second gets the first answer"
        );
        assert_eq!(
            copies[0]["user_id"], i,
            "k-{i} is decided for its first user"
        );
        if copies[0]["status"] == "succeeded" {
            winners.insert(i);
        }
    }
    assert_eq!(winners.len() as i64, stock, "the whole stock, once");
    let holders: HashSet<i64> =
        sqlx::query_scalar::<_, i64>("SELECT user_id FROM user_coupons WHERE coupon_id = $1")
            .bind(COUPON)
            .fetch_all(&env.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(holders, winners, "only first senders hold the coupon");
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    app.stop().await;
    env.cleanup().await;
}
