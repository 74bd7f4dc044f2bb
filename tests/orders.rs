//! Orders and payment: stock, coupons, balance, compensation, statistics.

mod common;

use std::collections::HashMap;

use common::{eventually, ids, post_and_wait, TestEnv};
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::domain::coupon::Discount;
use stampede::domain::messages::CouponSpec;
use stampede::kafka::Flow;
use stampede::reconcile;
use stampede::store::{coupons, products, users};
use stampede::workers::WorkerKind;

async fn coupon(env: &TestEnv, id: i64, discount: Discount, expires_in: chrono::Duration) {
    let spec = CouponSpec {
        name: format!("coupon-{id}"),
        discount,
        total_quantity: 100,
        expires_at: chrono::Utc::now() + expires_in,
        shards: 1,
    };
    coupons::create(&env.db, Some(id), &spec).await.unwrap();
    reconcile::load_coupon(&env.db, &env.counters, id, true)
        .await
        .unwrap();
}

/// Issues `coupon` to `user` through the coupon flow.
async fn issue(env: &TestEnv, user: i64, coupon: i64) {
    let id = format!("issue-{user}-{coupon}");
    env.publish(
        Flow::Coupon,
        user,
        &json!({"request_id": id, "user_id": user, "coupon_id": coupon}),
    )
    .await;
    assert_eq!(
        env.result_of(Flow::Coupon, &id).await["status"],
        "succeeded"
    );
}

fn order(id: &str, user: i64, items: &[(i64, i64)], coupon: Option<i64>) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(p, q)| json!({"product_id": p, "quantity": q}))
        .collect();
    let mut v = json!({"request_id": id, "user_id": user, "items": items});
    if let Some(c) = coupon {
        v["coupon_id"] = json!(c);
    }
    v
}

async fn stock(env: &TestEnv, id: i64) -> (i64, i64) {
    (
        products::get(&env.db, id).await.unwrap().unwrap().stock,
        env.counters.product_stock(id).await.unwrap().unwrap(),
    )
}

async fn coupon_used(env: &TestEnv, user: i64, coupon: i64) -> bool {
    sqlx::query_scalar(
        "SELECT used_at IS NOT NULL FROM user_coupons WHERE user_id = $1 AND coupon_id = $2",
    )
    .bind(user)
    .bind(coupon)
    .fetch_one(&env.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_rule_answers_as_the_contract_says() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(1), 100_000).await.unwrap();
    users::create(&env.db, Some(2), 5_000).await.unwrap();
    env.create_product(1, 10_000, 10).await;
    env.create_product(2, 999, 10).await;
    coupon(
        &env,
        7,
        Discount::Fixed { amount: 2_000 },
        chrono::Duration::days(1),
    )
    .await;
    coupon(
        &env,
        8,
        Discount::Percent { percent: 15 },
        chrono::Duration::days(1),
    )
    .await;
    coupon(
        &env,
        9,
        Discount::Fixed { amount: 5_000 },
        chrono::Duration::milliseconds(1),
    )
    .await;
    let app = env
        .start(Roles::workers(vec![WorkerKind::Coupon, WorkerKind::Order]))
        .await;
    issue(&env, 1, 7).await;
    issue(&env, 1, 8).await;
    issue(&env, 1, 9).await;
    issue(&env, 2, 7).await;

    let cases = [
        ("o-fixed", order("o-fixed", 1, &[(1, 2)], Some(7))),
        (
            "o-fixed-again",
            order("o-fixed-again", 1, &[(1, 1)], Some(7)),
        ),
        (
            "o-percent",
            order("o-percent", 1, &[(1, 1), (2, 1)], Some(8)),
        ),
        ("o-expired", order("o-expired", 1, &[(2, 2)], Some(9))),
        ("o-foreign", order("o-foreign", 2, &[(2, 1)], Some(8))),
        ("o-short", order("o-short", 1, &[(1, 1), (2, 11)], None)),
        ("o-noproduct", order("o-noproduct", 1, &[(404, 1)], None)),
        ("o-nouser", order("o-nouser", 404, &[(1, 1)], None)),
        ("o-poor", order("o-poor", 2, &[(1, 1)], Some(7))),
    ];
    for (_, body) in &cases {
        env.publish(Flow::Order, body["user_id"].as_i64().unwrap(), body)
            .await;
    }
    let results = env
        .wait_results(
            Flow::Order,
            &ids(cases.iter().map(|(id, _)| id.to_string())),
        )
        .await;
    let r = |id: &str| results[id][0].clone();
    let code = |id: &str| {
        r(id)["error"]["code"]
            .as_str()
            .unwrap_or("succeeded")
            .to_owned()
    };

    let fixed = r("o-fixed");
    assert_eq!(
        (
            fixed["total_amount"].clone(),
            fixed["discount_amount"].clone(),
            fixed["paid_amount"].clone(),
            fixed["balance"].clone(),
            fixed["coupon_applied"].clone()
        ),
        (
            json!(20_000),
            json!(2_000),
            json!(18_000),
            json!(82_000),
            json!(true)
        )
    );
    assert!(fixed["order_id"].as_i64().is_some());
    assert_eq!(code("o-fixed-again"), "coupon_already_used");
    let percent = r("o-percent");
    assert_eq!(
        (
            percent["total_amount"].clone(),
            percent["discount_amount"].clone(),
            percent["paid_amount"].clone()
        ),
        (json!(10_999), json!(1_649), json!(9_350))
    );
    let expired = r("o-expired");
    assert_eq!(
        (
            expired["status"].clone(),
            expired["discount_amount"].clone(),
            expired["coupon_applied"].clone()
        ),
        (json!("succeeded"), json!(0), json!(false))
    );
    assert!(
        !coupon_used(&env, 1, 9).await,
        "an expired coupon is not used up"
    );
    assert_eq!(code("o-foreign"), "coupon_not_owned");
    assert_eq!(code("o-short"), "out_of_stock");
    assert_eq!(code("o-noproduct"), "product_not_found");
    assert_eq!(code("o-nouser"), "user_not_found");
    assert_eq!(code("o-poor"), "insufficient_balance");

    // Insufficient balance left stock, coupon and balance untouched; the rest add up.
    assert!(!coupon_used(&env, 2, 7).await);
    assert_eq!(env.balance(2).await, Some(5_000));
    assert_eq!(stock(&env, 1).await, (7, 7));
    assert_eq!(stock(&env, 2).await, (7, 7));
    assert_eq!(env.balance(1).await, Some(100_000 - 18_000 - 9_350 - 1_998));
    assert!(coupon_used(&env, 1, 7).await && coupon_used(&env, 1, 8).await);
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(items, 4);
    app.stop().await;
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orders_racing_for_the_last_unit_have_one_winner() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 40, 100_000).await.unwrap();
    for p in 1..=20 {
        env.create_product(p, 1_000, 1).await;
    }
    let a = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    let b = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    // Users 2k-1 and 2k race for the last unit of product k.
    let orders: Vec<(i64, Value)> = (1..=40)
        .map(|u| (u, order(&format!("race-{u}"), u, &[((u + 1) / 2, 1)], None)))
        .collect();
    env.publish_all(Flow::Order, &orders).await;
    let results = env
        .wait_results(Flow::Order, &ids((1..=40).map(|u| format!("race-{u}"))))
        .await;
    for p in 1..=20i64 {
        let pair = [
            results[&format!("race-{}", 2 * p - 1)][0].clone(),
            results[&format!("race-{}", 2 * p)][0].clone(),
        ];
        let winners = pair.iter().filter(|r| r["status"] == "succeeded").count();
        assert_eq!(winners, 1, "product {p}: {pair:?}");
        assert!(pair.iter().any(|r| r["error"]["code"] == "out_of_stock"));
        assert_eq!(stock(&env, p).await, (0, 0));
    }
    a.stop().await;
    b.stop().await;
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_in_two_batches_in_flight_pays_from_the_balance_the_first_left() {
    // One order per batch, so batch n+1 is decided while batch n writes.
    // Each user can pay for one order of two sent in a row, and sends the
    // first one again right after: the second order must see the balance the
    // first left, and the repeat must get the first answer.
    let env = TestEnv::with(|s| s.worker.batch_size = 1).await;
    users::seed(&env.db, 1, 20, 10_000).await.unwrap();
    env.create_product(1, 6_000, 100).await;
    let mut orders = Vec::new();
    for u in 1..=20 {
        orders.push((u, order(&format!("a-{u}"), u, &[(1, 1)], None)));
        orders.push((u, order(&format!("b-{u}"), u, &[(1, 1)], None)));
        orders.push((u, order(&format!("a-{u}"), u, &[(1, 1)], None)));
    }
    env.publish_all(Flow::Order, &orders).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    let mut answers: HashMap<String, Vec<Value>> = HashMap::new();
    for record in env.results(Flow::Order).take(orders.len()).await {
        let v: Value = serde_json::from_slice(&record.payload).unwrap();
        answers
            .entry(v["request_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    for u in 1..=20 {
        let first = &answers[&format!("a-{u}")];
        assert_eq!(first.len(), 2, "a-{u}: one answer per message");
        assert_eq!(
            first[0], first[1],
            "a-{u}: the repeat gets the first answer"
        );
        assert_eq!(first[0]["status"], "succeeded", "a-{u}: {first:?}");
        let second = &answers[&format!("b-{u}")][0];
        assert_eq!(
            second["error"]["code"], "insufficient_balance",
            "b-{u} sees the balance a-{u} left: {second}"
        );
        assert_eq!(env.balance(u).await, Some(4_000), "user {u}");
    }
    assert_eq!(stock(&env, 1).await, (80, 80));
    app.stop().await;
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_selling_more_than_postgres_has_never_oversells_with_batches_in_flight() {
    // Redis believes in 12 units, PostgreSQL has 4: whichever batch finds
    // the shortfall (on its snapshot, or once it locks the product), no more
    // than 4 are sold and the counter is reloaded.
    let env = TestEnv::with(|s| s.worker.batch_size = 1).await;
    users::seed(&env.db, 1, 12, 100_000).await.unwrap();
    env.create_product(1, 1_000, 12).await;
    sqlx::query("UPDATE products SET stock = 4 WHERE id = 1")
        .execute(&env.db)
        .await
        .unwrap();
    let orders: Vec<(i64, Value)> = (1..=12)
        .map(|u| (u, order(&format!("d-{u}"), u, &[(1, 1)], None)))
        .collect();
    env.publish_all(Flow::Order, &orders).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    let results = env
        .wait_results(Flow::Order, &ids((1..=12).map(|u| format!("d-{u}"))))
        .await;
    let paid = results
        .values()
        .filter(|r| r[0]["status"] == "succeeded")
        .count();
    assert_eq!(paid, 4, "{results:?}");
    assert!(results
        .values()
        .all(|r| r[0]["status"] == "succeeded" || r[0]["error"]["code"] == "out_of_stock"));
    eventually("Redis holds PostgreSQL's stock again", || async {
        (stock(&env, 1).await == (0, 0)).then_some(())
    })
    .await;
    app.stop().await;
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_reserving_stock_and_the_commit_neither_leaks_nor_doubles() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(1), 100_000).await.unwrap();
    users::create(&env.db, Some(5), 5_000).await.unwrap();
    env.create_product(1, 1_000, 3).await;
    env.create_product(2, 1_000, 1).await;
    env.create_product(3, 10_000, 5).await;
    // A worker reserved these in Redis, then died before PostgreSQL committed:
    // o-a takes 2 of product 1's 3 units; o-e, whose user cannot pay for it,
    // the only unit of product 2 and one of product 3.
    let crashed = [("o-a", vec![(1, 2)]), ("o-e", vec![(2, 1), (3, 1)])].map(|(id, items)| {
        stampede::counters::StockRequest {
            request_id: id.into(),
            reserve: true,
            items,
        }
    });
    let answers = env.counters.reserve_stock(&crashed).await.unwrap();
    assert!(answers
        .iter()
        .all(|a| *a == stampede::counters::StockAnswer::Reserved));
    assert_eq!(stock(&env, 1).await, (3, 1));
    assert_eq!(stock(&env, 2).await, (1, 0));
    // The redeliveries, each followed (same user, so in this order) by
    // orders for what it leaves.
    let orders = [
        (1, order("o-a", 1, &[(1, 2)], None)),
        (1, order("o-c", 1, &[(1, 2)], None)),
        (1, order("o-d", 1, &[(1, 1)], None)),
        (5, order("o-e", 5, &[(2, 1), (3, 1)], None)),
        (5, order("o-f", 5, &[(2, 1)], None)),
    ];
    env.publish_all(Flow::Order, &orders).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    let results = env
        .wait_results(
            Flow::Order,
            &ids(["o-a", "o-c", "o-d", "o-e", "o-f"].map(String::from)),
        )
        .await;
    let outcome = |id: &str| {
        let r = &results[id][0];
        if r["status"] == "succeeded" {
            "succeeded".to_owned()
        } else {
            r["error"]["code"].as_str().unwrap().to_owned()
        }
    };
    // The redelivered o-a pays for the units it reserved, and they were not
    // taken twice: one unit is left, for o-d.
    assert_eq!(outcome("o-a"), "succeeded");
    assert_eq!(outcome("o-c"), "out_of_stock");
    assert_eq!(outcome("o-d"), "succeeded");
    assert_eq!(env.balance(1).await, Some(97_000));
    // o-e cannot pay: what its reservation held goes back, the unit of
    // product 2 to o-f.
    assert_eq!(outcome("o-e"), "insufficient_balance");
    assert_eq!(outcome("o-f"), "succeeded");
    assert_eq!(env.balance(5).await, Some(4_000));
    assert_eq!(stock(&env, 1).await, (0, 0));
    assert_eq!(stock(&env, 2).await, (0, 0));
    assert_eq!(stock(&env, 3).await, (5, 5));
    eventually("no hold is left in Redis", || async {
        env.counters
            .hold_ids()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    app.stop().await;
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_order_request_charges_once() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(1), 50_000).await.unwrap();
    env.create_product(1, 10_000, 5).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    let body = order("dup-order", 1, &[(1, 2)], None);
    env.publish(Flow::Order, 1, &body).await;
    env.publish(Flow::Order, 1, &body).await;
    let first = env.result_of(Flow::Order, "dup-order").await;
    env.publish(Flow::Order, 1, &body).await;
    let all = env.results(Flow::Order).take(3).await;
    for record in &all {
        assert_eq!(
            serde_json::from_slice::<Value>(&record.payload).unwrap(),
            first
        );
    }
    assert_eq!(env.balance(1).await, Some(30_000));
    assert_eq!(stock(&env, 1).await, (3, 3));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_topic_holds_one_event_per_paid_order_after_a_crash() {
    let env = TestEnv::with(|s| {
        s.worker.batch_size = 50;
        s.worker.outbox_batch = 40;
    })
    .await;
    users::seed(&env.db, 1, 200, 1_000_000).await.unwrap();
    for p in 1..=5 {
        env.create_product(p, 1_000, 1_000).await;
    }
    let orders: Vec<(i64, Value)> = (0..2_000)
        .map(|i| {
            let user = i % 200 + 1;
            (
                user,
                order(&format!("s-{i}"), user, &[(i % 5 + 1, 1 + i % 3)], None),
            )
        })
        .collect();
    env.publish_all(Flow::Order, &orders).await;
    let worker = env.worker_process("order");
    env.reader(&env.topics.stats())
        .wait_for(50, "stats flow before the crash")
        .await;
    worker.kill();
    let worker = env.worker_process("order");
    let results = env
        .wait_results(Flow::Order, &ids((0..2_000).map(|i| format!("s-{i}"))))
        .await;
    let paid = results
        .values()
        .filter(|r| r[0]["status"] == "succeeded")
        .count();
    assert_eq!(paid, 2_000);
    // Wait until the relay has published everything queued.
    eventually("the relay publishes every queued stats event", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&env.db)
                .await
                .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let events = stampede::audit::stats_events_per_order(&env.settings)
        .await
        .unwrap();
    assert_eq!(events.len(), 2_000, "one event for every paid order");
    assert!(
        events.values().all(|n| *n == 1),
        "never two: {:?}",
        events
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(worker.terminate().success());
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_products_come_from_the_stats_stream_and_rebuild_the_same() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 10, 1_000_000).await.unwrap();
    for p in 1..=7 {
        env.create_product(p, 100 * p, 1_000).await;
    }
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Order, WorkerKind::Stats],
        })
        .await;
    // Product p sells p*2 units in total (ties impossible), spread over users.
    let mut orders = Vec::new();
    for p in 1..=7i64 {
        for k in 0..2 * p {
            let user = k % 10 + 1;
            orders.push((user, order(&format!("pop-{p}-{k}"), user, &[(p, 1)], None)));
        }
    }
    env.publish_all(Flow::Order, &orders).await;
    let url = format!("{}/v1/products/popular?days=3&limit=5", app.http());
    let expected: Vec<i64> = vec![7, 6, 5, 4, 3];
    let top = eventually("popular products count every sale", || async {
        let top: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let sold: i64 = top
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["quantity"].as_i64().unwrap())
            .sum();
        (sold == 14 + 12 + 10 + 8 + 6).then_some(top)
    })
    .await;
    let ranked: Vec<i64> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ranked, expected);
    assert_eq!(top[0]["quantity"], 14);
    assert_eq!(top[0]["name"], "product-7");
    app.stop().await;

    // Rebuild: empty the analytics and replay the topic with a new consumer group.
    sqlx::query("TRUNCATE stats_orders, product_sales_daily")
        .execute(&env.db)
        .await
        .unwrap();
    let mut settings = env.settings.clone();
    settings.kafka.group_id = format!("{}-rebuild", env.tag);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = stampede::run(
        settings,
        Roles {
            gateway: true,
            workers: vec![WorkerKind::Stats],
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!(
        "http://{}/v1/products/popular?days=3&limit=5",
        running.http_addr.unwrap()
    );
    eventually("the rebuilt analytics answer as before", || async {
        let rebuilt: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        (rebuilt == top).then_some(())
    })
    .await;
    shutdown.cancel();
    running.wait().await.unwrap();
    let per_product: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT product_id, sum(quantity)::int8 FROM product_sales_daily GROUP BY product_id",
    )
    .fetch_all(&env.db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(per_product.get(&1), Some(&2));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_and_orders_over_http() {
    let env = TestEnv::new().await;
    users::create(&env.db, Some(1), 50_000).await.unwrap();
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Order],
        })
        .await;
    let http = app.http();
    let c = reqwest::Client::new();
    let created = c
        .post(format!("{http}/v1/admin/products"))
        .json(&json!({"name": "shoe", "price": 12_000, "stock": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let id = created["product_id"].as_i64().unwrap();
    let bad = c
        .post(format!("{http}/v1/admin/products"))
        .json(&json!({"name": "", "price": -1, "stock": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let result = post_and_wait(
        &c,
        &http,
        "/v1/orders",
        json!({"user_id": 1, "items": [{"product_id": id, "quantity": 3}]}),
    )
    .await;
    assert_eq!(result["paid_amount"], 36_000);
    let shown: Value = c
        .get(format!("{http}/v1/products/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown,
        json!({"product_id": id, "name": "shoe", "price": 12_000, "stock": 1})
    );
    assert_eq!(
        c.get(format!("{http}/v1/products/999"))
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::NOT_FOUND
    );
    app.stop().await;
    env.cleanup().await;
}
