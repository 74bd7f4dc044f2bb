//! The outbox relay when order transactions commit out of id order and the
//! relay changes hands: every queued event reaches `order.stats.v1` exactly
//! once, whatever order rows became visible in.

mod common;

use std::collections::HashMap;

use common::{eventually, TestEnv};
use serde_json::json;
use stampede::app::Roles;
use stampede::store::orders::{self, NewEvent};
use stampede::workers::WorkerKind;

fn event(order_id: i64) -> NewEvent {
    NewEvent {
        order_id,
        payload: json!({
            "order_id": order_id, "user_id": 1, "ordered_at": "2026-11-24T12:00:00Z",
            "items": [{"product_id": 1, "quantity": 1, "unit_price": 1000}],
            "total_amount": 1000, "discount_amount": 0, "paid_amount": 1000
        })
        .to_string(),
        traceparent: None,
    }
}

/// Whether the event of `order_id`, committed to the outbox, is published:
/// the relay deletes an event's row once the event is on the topic.
async fn published(env: &TestEnv, order_id: i64) -> bool {
    queued(env, Some(order_id)).await == 0
}

/// Rows in the outbox, of one order or of all.
async fn queued(env: &TestEnv, order_id: Option<i64>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE $1::int8 IS NULL OR order_id = $1")
        .bind(order_id)
        .fetch_one(&env.db)
        .await
        .unwrap()
}

async fn wait_published(env: &TestEnv, order_id: i64) {
    eventually(&format!("order {order_id} is published"), || async {
        published(env, order_id).await.then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_after_a_later_id_is_still_published_once() {
    let env = TestEnv::new().await;
    let topic = env.topics.stats();
    // Orders 1 and 5 land on the same partition of a 4-partition topic.
    let (early, late) = (1_i64, 5_i64);

    // The first transaction takes the lower outbox id but commits last.
    let mut slow = env.db.begin().await.unwrap();
    orders::enqueue(&mut slow, &topic, &[event(early)])
        .await
        .unwrap();
    let mut fast = env.db.begin().await.unwrap();
    orders::enqueue(&mut fast, &topic, &[event(late)])
        .await
        .unwrap();
    fast.commit().await.unwrap();

    let relay = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    wait_published(&env, late).await;
    relay.stop().await;

    slow.commit().await.unwrap();
    let relay = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    wait_published(&env, early).await;

    let events = stampede::audit::stats_events_per_order(&env.settings)
        .await
        .unwrap();
    relay.stop().await;
    assert_eq!(
        events,
        HashMap::from([(early, 1), (late, 1)]),
        "events per order on {topic}"
    );
    assert_eq!(
        queued(&env, None).await,
        0,
        "the outbox keeps nothing published"
    );
    env.cleanup().await;
}

/// A relay that dies after its Kafka transaction committed but before it
/// deleted the batch's rows leaves events both on the topic and in the
/// outbox. The next leader finds them on the topic (after the recorded
/// positions), deletes their rows and does not send them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_dead_relay_published_but_did_not_delete_are_not_sent_again() {
    let env = TestEnv::new().await;
    let topic = env.topics.stats();
    let mut tx = env.db.begin().await.unwrap();
    orders::enqueue(&mut tx, &topic, &[event(31), event(32), event(33)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, order_id, payload FROM outbox ORDER BY id")
            .fetch_all(&env.db)
            .await
            .unwrap();
    // What the dead relay got onto the topic: the events of orders 31 and 32,
    // each with its outbox id, as a relay sends them.
    for (id, order_id, payload) in rows.iter().filter(|(_, order, _)| *order != 33) {
        let message =
            stampede::kafka::OutMessage::new(topic.clone(), order_id.to_string(), payload.as_str())
                .header(stampede::workers::outbox::HEADER_OUTBOX_ID, id.to_string());
        env.producer.send(&message).await.unwrap();
    }

    let relay = env.start(Roles::workers(vec![WorkerKind::Order])).await;
    eventually("the outbox is empty", || async {
        (queued(&env, None).await == 0).then_some(())
    })
    .await;
    let events = stampede::audit::stats_events_per_order(&env.settings)
        .await
        .unwrap();
    relay.stop().await;
    assert_eq!(
        events,
        HashMap::from([(31, 1), (32, 1), (33, 1)]),
        "events per order on {topic}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_events_the_store_cannot_hold_are_dead_lettered_and_the_rest_recorded() {
    let env = TestEnv::new().await;
    let stats = env.topics.stats();
    let app = env.start(Roles::workers(vec![WorkerKind::Stats])).await;
    let mut negative = serde_json::from_str::<serde_json::Value>(&event(11).payload).unwrap();
    negative["items"][0]["quantity"] = json!(-5);
    let mut huge = serde_json::from_str::<serde_json::Value>(&event(12).payload).unwrap();
    huge["items"][0]["unit_price"] = json!(i64::MAX);
    let bad = [("11", negative), ("12", huge)];
    for (key, value) in &bad {
        let message = stampede::kafka::OutMessage::new(stats.clone(), *key, value.to_string());
        env.producer.send(&message).await.unwrap();
    }
    let good = stampede::kafka::OutMessage::new(stats.clone(), "13", event(13).payload);
    env.producer.send(&good).await.unwrap();

    let dead = env
        .reader(&stampede::kafka::Topics::dlq_of(&stats))
        .take(2)
        .await;
    let mut keys: Vec<&[u8]> = dead.iter().map(|r| r.key.as_deref().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, [b"11".as_slice(), b"12".as_slice()]);
    assert!(dead.iter().all(|r| r.headers["source.topic"] == stats));
    eventually("only the valid stats event is recorded", || async {
        let recorded: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM stats_orders")
            .fetch_all(&env.db)
            .await
            .unwrap();
        (recorded == [13]).then_some(())
    })
    .await;
    // The consumer is still running: stopping it is clean.
    app.stop().await;
    env.cleanup().await;
}
