//! The producer every worker publishes through: a batch counts as sent only
//! when the broker has confirmed every message of it, and a message the
//! broker refuses fails the batch instead of being forgotten.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestEnv;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use stampede::kafka::{Flow, OutMessage};

fn to_partition(topic: &str, partition: i32, payload: String) -> OutMessage {
    let mut message = OutMessage::new(topic, "k", payload);
    message.partition = Some(partition);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_returns_once_every_message_is_confirmed_and_where_each_landed() {
    let env = TestEnv::new().await;
    let topic = env.topics.requests(Flow::Charge);
    // Interleaved over three partitions of a fresh topic.
    let messages: Vec<OutMessage> = (0..300)
        .map(|i| to_partition(&topic, i % 3, format!("m-{i}")))
        .collect();
    let places = env.producer.send_all(&messages).await.expect("send_all");
    assert_eq!(places.len(), messages.len(), "one place per message");
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset) in places {
        by_partition.entry(partition).or_default().push(offset);
    }
    // Each partition holds its 100 messages at offsets 0..100, each once.
    for partition in 0..3 {
        let mut offsets = by_partition.remove(&partition).unwrap_or_default();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..100).collect::<Vec<i64>>(),
            "partition {partition}"
        );
    }
    assert!(by_partition.is_empty(), "{by_partition:?}");
    // And they are readable, in the order sent per partition.
    let read = env.reader(&topic).take(300).await;
    for partition in 0..3 {
        let payloads: Vec<String> = read
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect();
        let sent: Vec<String> = (0..300)
            .filter(|i| i % 3 == partition)
            .map(|i| format!("m-{i}"))
            .collect();
        assert_eq!(payloads, sent, "partition {partition}");
    }
    // A single message, and an empty batch.
    let (partition, offset) = env
        .producer
        .send(&to_partition(&topic, 1, "one more".into()))
        .await
        .expect("send");
    assert_eq!((partition, offset), (1, 100));
    assert!(env.producer.send_all(&[]).await.unwrap().is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_fails_its_batch() {
    let env = TestEnv::new().await;
    // A topic of its own that takes at most 2,000 bytes per batch; the
    // client's own limit (1 MB) lets a larger message through to it. The
    // limit is part of the topic's creation: a limit altered afterwards
    // reaches the broker's log a moment after the change is acknowledged,
    // and a message sent in that moment is taken.
    let topic = format!("{}refusing", env.settings.kafka.topic_prefix);
    let admin: AdminClient<DefaultClientContext> =
        stampede::kafka::client_config(&env.settings.kafka)
            .create()
            .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let spec =
        NewTopic::new(&topic, 4, TopicReplication::Fixed(1)).set("max.message.bytes", "2000");
    let created = admin
        .create_topics(&[spec], &options)
        .await
        .expect("create the topic");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let batch = [
        to_partition(&topic, 0, "small".into()),
        to_partition(&topic, 1, "x".repeat(10_000)),
        to_partition(&topic, 2, "small".into()),
    ];
    let sent = tokio::time::timeout(Duration::from_secs(60), env.producer.send_all(&batch))
        .await
        .expect("the batch is answered, not left waiting");
    match sent {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {}
        other => panic!("expected the broker's refusal, got {other:?}"),
    }
    // The producer goes on: the next batch is confirmed.
    let places = env
        .producer
        .send_all(&[to_partition(&topic, 3, "after".into())])
        .await
        .expect("a batch after the refusal");
    assert_eq!(places.len(), 1);
    let _ = admin.delete_topics(&[topic.as_str()], &options).await;
    env.cleanup().await;
}
