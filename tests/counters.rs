//! Property tests of the Redis counter scripts, run against real Redis: for
//! any interleaving of requests, batch splits and redeliveries, a coupon
//! never grants more than its stock nor twice to one user, and an order
//! reservation is all or nothing.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use stampede::config::RedisSettings;
use stampede::counters::{Counters, StockAnswer, StockRequest};
use stampede::domain::coupon::IssueDecision;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn counters() -> (Counters, String) {
    let prefix = format!("p{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let settings = RedisSettings {
        key_prefix: prefix.clone(),
        ..RedisSettings::default()
    };
    (Counters::connect(&settings).await.expect("Redis"), prefix)
}

async fn wipe(counters: &Counters, prefix: &str) {
    let mut conn = counters.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn coupons_never_exceed_stock_nor_repeat_a_user(
        stock in 0i64..20,
        requests in proptest::collection::vec((0usize..40, 1i64..15), 1..120),
        split in 1usize..30,
    ) {
        runtime().block_on(async {
            let (counters, prefix) = counters().await;
            counters.load_coupon(1, stock, &[], &[], true).await.unwrap();
            // request index → (request id, user); the same id may repeat (a redelivery).
            let asks: Vec<(String, i64)> = requests.iter().map(|(id, user)| (format!("r{id}"), user + (*id as i64 % 3) * 100)).collect();
            let mut first_user: HashMap<String, i64> = HashMap::new();
            let asks: Vec<(String, i64)> = asks.into_iter().map(|(id, user)| { let u = *first_user.entry(id.clone()).or_insert(user); (id, u) }).collect();
            let mut granted: HashMap<String, i64> = HashMap::new();
            for chunk in asks.chunks(split) {
                let batch: Vec<(&str, i64)> = chunk.iter().map(|(id, u)| (id.as_str(), *u)).collect();
                let decisions = counters.issue_coupons(1, &batch).await.unwrap().unwrap();
                for ((id, user), decision) in chunk.iter().zip(decisions) {
                    if granted.contains_key(id) {
                        prop_assert_eq!(decision, IssueDecision::Reserved, "a granted request stays granted on redelivery");
                    }
                    if decision == IssueDecision::Reserved {
                        granted.insert(id.clone(), *user);
                    }
                }
            }
            let users: HashSet<i64> = granted.values().copied().collect();
            prop_assert!(granted.len() as i64 <= stock);
            prop_assert_eq!(users.len(), granted.len(), "one coupon per user");
            let distinct_users: HashSet<i64> = first_user.values().copied().collect();
            prop_assert_eq!(granted.len() as i64, stock.min(distinct_users.len() as i64), "first come, first served until sold out");
            prop_assert_eq!(counters.coupon_stock(1).await.unwrap(), Some(stock - granted.len() as i64));
            wipe(&counters, &prefix).await;
            Ok(())
        })?;
    }

    #[test]
    fn reservations_are_all_or_nothing_and_releases_restore_stock(
        stocks in proptest::collection::vec(0i64..6, 3),
        orders in proptest::collection::vec(proptest::collection::btree_map(0usize..3, 1i64..4, 1..3), 1..25),
        release_every in 2usize..5,
    ) {
        runtime().block_on(async {
            let (counters, prefix) = counters().await;
            let products: Vec<(i64, i64)> = stocks.iter().enumerate().map(|(i, s)| (i as i64 + 1, *s)).collect();
            counters.load_products(&products, &[], true).await.unwrap();
            let mut expected: Vec<i64> = stocks.clone();
            let mut holds: Vec<(String, Vec<(usize, i64)>)> = Vec::new();
            for (n, order) in orders.iter().enumerate() {
                let items: Vec<(i64, i64)> = order.iter().map(|(p, q)| (*p as i64 + 1, *q)).collect();
                let request = StockRequest { request_id: format!("o{n}"), reserve: true, items: items.clone() };
                let answer = counters.reserve_stock(std::slice::from_ref(&request)).await.unwrap()[0];
                let fits = order.iter().all(|(p, q)| expected[*p] >= *q);
                match answer {
                    StockAnswer::Reserved => {
                        prop_assert!(fits);
                        for (p, q) in order { expected[*p] -= q; }
                        holds.push((request.request_id.clone(), order.iter().map(|(p, q)| (*p, *q)).collect()));
                    }
                    StockAnswer::OutOfStock { .. } => prop_assert!(!fits, "refused although it fit"),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
                // Redelivery of a reserved order takes nothing more.
                if answer == StockAnswer::Reserved {
                    let again = counters.reserve_stock(std::slice::from_ref(&request)).await.unwrap()[0];
                    prop_assert_eq!(again, StockAnswer::ReservedEarlier);
                }
                if n % release_every == 0 {
                    if let Some((id, items)) = holds.pop() {
                        prop_assert_eq!(counters.release_stock(&[id.as_str()]).await.unwrap(), 1);
                        prop_assert_eq!(counters.release_stock(&[id.as_str()]).await.unwrap(), 0, "a release happens once");
                        for (p, q) in items { expected[p] += q; }
                    }
                }
                for (i, want) in expected.iter().enumerate() {
                    let have = counters.product_stock(i as i64 + 1).await.unwrap().unwrap();
                    prop_assert!(have >= 0);
                    prop_assert_eq!(have, *want);
                }
            }
            wipe(&counters, &prefix).await;
            Ok(())
        })?;
    }
}

/// The inventory as `reserve_stock.lua` must leave it, one order after the
/// other: stock per product (`None`: not loaded) and holds per request.
#[derive(Debug, Default)]
struct Inventory {
    stock: HashMap<i64, Option<i64>>,
    holds: HashMap<String, Vec<(i64, i64)>>,
}

impl Inventory {
    fn decide(&mut self, order: &StockRequest) -> StockAnswer {
        if order.reserve && self.holds.contains_key(&order.request_id) {
            return StockAnswer::ReservedEarlier;
        }
        for (p, q) in self.holds.remove(&order.request_id).unwrap_or_default() {
            let units = self.stock.get(&p).copied().flatten().unwrap_or(0);
            self.stock.insert(p, Some(units + q));
        }
        for (p, q) in &order.items {
            match self.stock.get(p).copied().flatten() {
                None => return StockAnswer::NotLoaded { product_id: *p },
                Some(units) if units < *q => return StockAnswer::OutOfStock { product_id: *p },
                Some(_) => {}
            }
        }
        if !order.reserve {
            return StockAnswer::CheckPassed;
        }
        for (p, q) in &order.items {
            let units = self.stock[p].unwrap();
            self.stock.insert(*p, Some(units - q));
        }
        self.holds
            .insert(order.request_id.clone(), order.items.clone());
        StockAnswer::Reserved
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A whole round in one call — reservations, checks, redeliveries and
    /// one request id more than once — answers and leaves the stock and
    /// holds exactly as deciding its orders one after the other would.
    /// Product 4 is not loaded.
    #[test]
    fn a_round_decides_its_orders_one_after_the_other(
        stocks in proptest::collection::vec(0i64..8, 3),
        rounds in proptest::collection::vec(
            proptest::collection::vec(
                (0usize..10, any::<bool>(), proptest::collection::btree_map(1i64..5, 1i64..4, 1..4)),
                1..30,
            ),
            1..4,
        ),
    ) {
        runtime().block_on(async {
            let (counters, prefix) = counters().await;
            let products: Vec<(i64, i64)> = stocks.iter().enumerate().map(|(i, s)| (i as i64 + 1, *s)).collect();
            counters.load_products(&products, &[], true).await.unwrap();
            let mut model = Inventory::default();
            for (p, s) in &products {
                model.stock.insert(*p, Some(*s));
            }
            for round in rounds {
                let orders: Vec<StockRequest> = round
                    .into_iter()
                    .map(|(id, reserve, items)| StockRequest {
                        request_id: format!("o{id}"),
                        reserve,
                        items: items.into_iter().collect(),
                    })
                    .collect();
                let answers = counters.reserve_stock(&orders).await.unwrap();
                let expected: Vec<StockAnswer> = orders.iter().map(|o| model.decide(o)).collect();
                prop_assert_eq!(answers, expected);
                for p in 1..=4 {
                    prop_assert_eq!(
                        counters.product_stock(p).await.unwrap(),
                        model.stock.get(&p).copied().flatten(),
                        "product {}", p
                    );
                }
                let holds: HashSet<String> = counters.hold_ids().await.unwrap().into_iter().collect();
                let want: HashSet<String> = model.holds.keys().cloned().collect();
                prop_assert_eq!(holds, want);
            }
            wipe(&counters, &prefix).await;
            Ok(())
        })?;
    }
}

/// With `redis.cluster = true` the same scripts run on a Redis Cluster
/// (started by scripts/services.sh on 127.0.0.1:7001-7003): every key of one
/// script shares a hash tag, and different coupons land on different shards.
#[test]
fn coupons_spread_over_a_redis_cluster_and_keep_their_rules() {
    runtime().block_on(async {
        let prefix = format!("c{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let settings = RedisSettings {
            url: stampede::config::Url(
                std::env::var("STAMPEDE_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
                    "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
                }),
            ),
            key_prefix: prefix.clone(),
            cluster: true,
            ..RedisSettings::default()
        };
        let counters = Counters::connect(&settings)
            .await
            .expect("the Redis Cluster of scripts/services.sh");
        let mut slots = HashSet::new();
        for coupon in 1..=12i64 {
            counters
                .load_coupon(coupon, 2, &[], &[], true)
                .await
                .unwrap();
            let decisions = counters
                .issue_coupons(coupon, &[("a", 1), ("b", 1), ("c", 2), ("d", 3)])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                decisions,
                vec![
                    IssueDecision::Reserved,
                    IssueDecision::AlreadyIssued,
                    IssueDecision::Reserved,
                    IssueDecision::SoldOut
                ]
            );
            assert_eq!(counters.coupon_stock(coupon).await.unwrap(), Some(0));
            let mut conn = counters.connection();
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(format!("{prefix}:{{coupon:{coupon}}}:stock"))
                .query_async(&mut conn)
                .await
                .unwrap();
            slots.insert(slot / 5_462);
        }
        assert!(slots.len() > 1, "coupons landed on more than one shard");
        counters.load_products(&[(1, 3)], &[], true).await.unwrap();
        let answer = counters
            .reserve_stock(&[StockRequest {
                request_id: "o1".into(),
                reserve: true,
                items: vec![(1, 2)],
            }])
            .await
            .unwrap();
        assert_eq!(answer, vec![StockAnswer::Reserved]);
    });
}

/// Worker processes of one group learn the earliest frontier among the
/// others; a process whose report is old (stopped, killed) or unreadable is
/// forgotten, not waited for.
#[test]
fn frontier_reports_give_the_earliest_other_process_and_forget_silent_ones() {
    runtime().block_on(async {
        let (counters, prefix) = counters().await;
        let report = |member: &'static str, frontier: i64| {
            let counters = counters.clone();
            async move {
                counters
                    .report_frontier("g", member, frontier, 1_000)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(report("a", 100).await, None, "alone in the group");
        assert_eq!(report("b", 500).await, Some(100));
        assert_eq!(
            report("a", 200).await,
            Some(500),
            "its own report is not counted"
        );
        assert_eq!(report("c", 900).await, Some(200));
        // A process that reported at the epoch, and a garbled entry.
        let key = format!("{prefix}:{{fcfs:g}}:frontiers");
        let mut conn = counters.connection();
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("gone")
            .arg("1:0")
            .arg("junk")
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(report("c", 950).await, Some(200));
        let members: Vec<String> = redis::cmd("HKEYS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let members: HashSet<String> = members.into_iter().collect();
        assert_eq!(members, HashSet::from(["a".into(), "b".into(), "c".into()]));
        // Another group is another race.
        assert_eq!(
            counters.report_frontier("h", "a", 1, 1_000).await.unwrap(),
            None
        );
        wipe(&counters, &prefix).await;
    });
}

/// Every counter script, with the prelude in front, is valid Lua for Redis;
/// and a counter holding something that is not a number is reported as
/// STAMPEDE_CORRUPT (never retried), not as a missing one.
#[test]
fn every_script_compiles_and_corrupt_counters_are_named() {
    runtime().block_on(async {
        let (counters, prefix) = counters().await;
        let mut conn = counters.connection();
        for (name, source) in stampede::counters::script_sources() {
            let loaded: redis::RedisResult<String> = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(&source)
                .query_async(&mut conn)
                .await;
            assert!(loaded.is_ok(), "{name}: {loaded:?}");
        }
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:{{coupon:3}}:stock"))
            .arg("many")
            .query_async(&mut conn)
            .await
            .unwrap();
        let err = counters.issue_coupons(3, &[("r1", 1)]).await.unwrap_err();
        assert!(!err.is_retryable(), "{err:?}");
        assert!(
            stampede::telemetry::error_chain(&err).contains("STAMPEDE_CORRUPT"),
            "{err:?}"
        );
        wipe(&counters, &prefix).await;
    });
}
