//! One mega-drop beyond one Redis shard: a coupon whose stock is split over
//! sub-counters on the shards of a Redis Cluster (started by
//! scripts/services.sh on 127.0.0.1:7001-7003) still issues exactly its
//! stock, one per user, with several worker processes.

mod common;

use std::collections::{HashMap, HashSet};

use common::{ids, TestEnv, WorkerProcess};
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::counters::CouponShard;
use stampede::domain::coupon::home_shard;
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;

const COUPON: i64 = 11;

async fn cluster_env(batch_size: usize) -> TestEnv {
    TestEnv::with(|s| {
        s.redis.cluster = true;
        s.redis.url =
            stampede::config::Url(std::env::var("STAMPEDE_TEST_REDIS_CLUSTER").unwrap_or_else(
                |_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into(),
            ));
        s.worker.batch_size = batch_size;
    })
    .await
}

fn issue(i: usize, user: i64) -> (i64, Value) {
    (
        user,
        json!({"request_id": format!("s-{i}"), "user_id": user, "coupon_id": COUPON}),
    )
}

/// Waits for every result and checks one coupon per user; returns
/// (issued, sold out, already issued).
async fn answers(env: &TestEnv, requests: &[(i64, Value)]) -> (i64, i64, i64) {
    let wanted = ids(requests
        .iter()
        .map(|(_, r)| r["request_id"].as_str().unwrap().to_owned()));
    let results = env.wait_results(Flow::Coupon, &wanted).await;
    let mut won: HashMap<i64, i64> = HashMap::new();
    let (mut sold_out, mut already) = (0, 0);
    for copies in results.values() {
        let r = &copies[0];
        assert!(
            copies.iter().all(|c| c == r),
            "one result content per request"
        );
        let user = r["user_id"].as_i64().unwrap();
        match (r["status"].as_str().unwrap(), r["error"]["code"].as_str()) {
            ("succeeded", _) => *won.entry(user).or_default() += 1,
            ("rejected", Some("coupon_sold_out")) => sold_out += 1,
            ("rejected", Some("coupon_already_issued")) => already += 1,
            other => panic!("unexpected answer {other:?}: {r}"),
        }
    }
    for (user, n) in &won {
        assert_eq!(*n, 1, "user {user} won the coupon {n} times");
    }
    (won.len() as i64, sold_out, already)
}

/// PostgreSQL's rows and counter, and Redis's sub-counters, all agree.
async fn check_totals(env: &TestEnv, shards: u32, stock: i64, issued: i64) {
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
    assert_eq!((rows, counted), (issued, issued));
    for shard in CouponShard::all(COUPON, shards) {
        assert!(
            env.counters.coupon_stock(shard).await.unwrap().is_some(),
            "sub-counter {} is loaded",
            shard.index
        );
        assert_eq!(env.counters.grant_count(shard).await.unwrap(), 0);
    }
    assert_eq!(
        env.counters
            .coupon_stock_total(COUPON, shards)
            .await
            .unwrap(),
        Some(stock - issued),
        "Redis's sub-counters add up to PostgreSQL's stock left"
    );
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
}

/// Which third of the slot range (one node of the services' cluster) each
/// sub-counter's keys hash to.
async fn nodes_of(env: &TestEnv, shards: u32) -> HashSet<i64> {
    let mut conn = env.counters.connection();
    let mut nodes = HashSet::new();
    for k in 0..shards {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{}:{{coupon:{COUPON}#{k}}}:stock", env.tag))
            .query_async(&mut conn)
            .await
            .unwrap();
        nodes.insert(slot / 5_462);
    }
    nodes
}

/// A coupon worker process, once it owns partitions.
async fn coupon_worker(env: &TestEnv) -> WorkerProcess {
    let (worker, metrics) = env.worker_with_metrics("coupon");
    common::wait_metric(&metrics, "stampede_consumer_assigned_partitions", 1.0).await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_split_over_cluster_shards_issues_exactly_the_stock_once_per_user() {
    let env = cluster_env(200).await;
    users::seed(&env.db, 1, 3_000, 0).await.unwrap();
    env.create_split_coupon(COUPON, 1_000, 6).await;
    assert!(
        nodes_of(&env, 6).await.len() > 1,
        "the sub-counters spread over more than one cluster node"
    );
    let a = coupon_worker(&env).await;
    let b = coupon_worker(&env).await;
    let requests: Vec<(i64, Value)> = (0..5_000)
        .map(|i| {
            issue(
                i,
                if i < 3_000 {
                    i as i64 + 1
                } else {
                    (i as i64 * 7919) % 3_000 + 1
                },
            )
        })
        .collect();
    env.publish_all(Flow::Coupon, &requests).await;
    let (issued, sold_out, already) = answers(&env, &requests).await;
    assert_eq!(issued, 1_000, "exactly the stock was issued");
    assert_eq!(issued + sold_out + already, 5_000);
    assert!(already > 0 && sold_out > 0);
    check_totals(&env, 6, 1_000, issued).await;
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_one_sub_counter_get_the_stock_of_all_of_them() {
    let env = cluster_env(25).await;
    users::seed(&env.db, 1, 2_000, 0).await.unwrap();
    env.create_split_coupon(COUPON, 60, 6).await;
    // 80 users whose home is sub-counter 0, which was dealt 10 units.
    let homed: Vec<i64> = (1..=2_000)
        .filter(|&u| home_shard(u, 6) == 0)
        .take(80)
        .collect();
    assert_eq!(homed.len(), 80);
    let app = env
        .start(Roles {
            gateway: false,
            workers: vec![WorkerKind::Coupon],
        })
        .await;
    let requests: Vec<(i64, Value)> = homed
        .iter()
        .enumerate()
        .map(|(i, &u)| issue(i, u))
        .collect();
    env.publish_all(Flow::Coupon, &requests).await;
    let (issued, sold_out, already) = answers(&env, &requests).await;
    assert_eq!((issued, sold_out, already), (60, 20, 0));
    check_totals(&env, 6, 60, issued).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_lost_between_two_sub_counters_come_back() {
    let env = cluster_env(10).await;
    users::seed(&env.db, 1, 100, 0).await.unwrap();
    env.create_split_coupon(COUPON, 30, 3).await;
    // A process took 5 units from sub-counter 1 for another and died before
    // adding them there.
    let lost = env
        .counters
        .take_stock(CouponShard::all(COUPON, 3).nth(1).unwrap(), 5)
        .await
        .unwrap();
    assert_eq!(lost, 5);
    let app = env
        .start(Roles {
            gateway: false,
            workers: vec![WorkerKind::Coupon],
        })
        .await;
    let requests: Vec<(i64, Value)> = (0..60).map(|i| issue(i, i as i64 + 1)).collect();
    env.publish_all(Flow::Coupon, &requests).await;
    let (issued, sold_out, _) = answers(&env, &requests).await;
    assert_eq!((issued, sold_out), (30, 30), "every unit was issued");
    check_totals(&env, 3, 30, issued).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_coupon_made_over_http_survives_a_worker_killed_mid_drop() {
    let env = cluster_env(50).await;
    users::seed(&env.db, 1, 2_000, 0).await.unwrap();
    let gateway = env
        .start(Roles {
            gateway: true,
            workers: vec![],
        })
        .await;
    let http = gateway.http();
    let c = reqwest::Client::new();
    let coupon = |shards: Value| {
        json!({"coupon_id": COUPON, "name": "mega drop", "discount": {"type": "fixed", "amount": 500},
               "total_quantity": 1_600, "expires_at": "2030-01-01T00:00:00Z", "shards": shards})
    };
    for bad in [json!(0), json!(65), json!(-1), json!("4")] {
        let answer = c
            .post(format!("{http}/v1/admin/coupons"))
            .json(&coupon(bad.clone()))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_client_error(),
            "shards {bad} is refused, got {}",
            answer.status()
        );
    }
    let created = c
        .post(format!("{http}/v1/admin/coupons"))
        .json(&coupon(json!(4)))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["shards"], 4);
    assert_eq!(
        env.counters.coupon_stock_total(COUPON, 4).await.unwrap(),
        Some(1_600),
        "the admin API loaded every sub-counter"
    );

    let requests: Vec<(i64, Value)> = (0..3_000)
        .map(|i| issue(i, (i as i64 * 7919) % 2_000 + 1))
        .collect();
    // The first half comes from 1,500 distinct users, fewer than the stock:
    // the worker always dies with the drop unfinished.
    let (first, second) = requests.split_at(1_500);
    env.publish_all(Flow::Coupon, first).await;
    let worker = env.worker_process("coupon");
    env.results(Flow::Coupon)
        .wait_for(100, "progress before the kill")
        .await;
    worker.kill();
    env.publish_all(Flow::Coupon, second).await;
    let again = coupon_worker(&env).await;
    let (issued, sold_out, already) = answers(&env, &requests).await;
    assert_eq!(issued, 1_600, "exactly the stock was issued");
    assert_eq!(issued + sold_out + already, 3_000);
    assert!(sold_out > 0 && already > 0);
    check_totals(&env, 4, 1_600, issued).await;
    assert!(again.terminate().success());
    gateway.stop().await;
    env.cleanup().await;
}
