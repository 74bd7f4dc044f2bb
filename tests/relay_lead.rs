//! A relay that fails after taking the lead (here: the stats topic is not
//! there yet) must let go of the lead, or no relay ever publishes again.
//! Its own test binary: it reads the process's relay retry counter.

mod common;

use common::{eventually, TestEnv};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use stampede::kafka::admin::{create_topics, TopicOutcome};
use stampede::store::orders::{self, NewEvent};
use stampede::workers::WorkerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_fails_after_taking_the_lead_lets_go_of_it() {
    let env = TestEnv::new().await;
    let stats = env.topics.stats();
    let admin: AdminClient<DefaultClientContext> =
        stampede::kafka::client_config(&env.settings.kafka)
            .create()
            .unwrap();
    admin
        .delete_topics(&[stats.as_str()], &AdminOptions::new())
        .await
        .unwrap();
    let mut tx = env.db.begin().await.unwrap();
    let event = NewEvent {
        order_id: 21,
        payload: json!({"order_id": 21, "user_id": 1, "ordered_at": "2026-11-24T12:00:00Z",
            "items": [{"product_id": 1, "quantity": 1, "unit_price": 1000}],
            "total_amount": 1000, "discount_amount": 0, "paid_amount": 1000})
        .to_string(),
        traceparent: None,
    };
    orders::enqueue(&mut tx, &stats, &[event]).await.unwrap();
    tx.commit().await.unwrap();

    let app = env
        .start(stampede::app::Roles {
            gateway: true,
            workers: vec![WorkerKind::Order],
        })
        .await;
    let metrics_url = format!("{}/metrics", app.http());
    // The relay took the lead and failed on the missing topic at least once.
    let relay_retries = || async {
        common::metric_sum(
            &common::scrape(&metrics_url).await,
            "stampede_retries_total",
            &["cause=\"relay\""],
        )
    };
    eventually("the relay takes the lead and fails", || async {
        (relay_retries().await >= 1.0).then_some(())
    })
    .await;
    // Readers grow the process's pool, so a retry may be handed another
    // connection than the one the failed leader used.
    let client = reqwest::Client::new();
    let reads = (0..16).map(|u| {
        client
            .get(format!("{}/v1/users/{u}/balance", app.http()))
            .send()
    });
    for answer in futures::future::join_all(reads).await {
        answer.unwrap();
    }
    // Leading is tried again and again while the topic is missing: a relay
    // that kept the lead on a pooled connection would stand by for ever.
    eventually("the relay keeps trying to lead", || async {
        (relay_retries().await >= 4.0).then_some(())
    })
    .await;
    // The topic is back (once the broker has finished deleting it).
    eventually("the stats topic is made again", || async {
        create_topics(&env.settings.kafka)
            .await
            .is_ok_and(|outcomes| outcomes.contains(&TopicOutcome::Created(stats.clone())))
            .then_some(())
    })
    .await;
    // The relay deletes an event's row once the event is on the topic.
    eventually("the event is published", || async {
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE order_id = 21")
            .fetch_one(&env.db)
            .await
            .unwrap();
        (queued == 0).then_some(())
    })
    .await;
    let events = stampede::audit::stats_events_per_order(&env.settings)
        .await
        .unwrap();
    assert_eq!(events.get(&21), Some(&1));
    app.stop().await;
    env.cleanup().await;
}
