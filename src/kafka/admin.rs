//! `topics create`: makes every contract topic; running it again is harmless.
//! [`delete_topics`] removes them again (isolated test runs clean up with it);
//! [`delete_named`] removes any topics by name.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::topics::Topics;
use crate::config::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("kafka admin request failed")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// No broker answered a metadata request in time.
    #[error("cannot reach the Kafka brokers at {brokers} (kafka.brokers)")]
    Unreachable {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// What happened to each topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created(String),
    Existed(String),
}

/// An admin client whose brokers answer: a request to brokers that are
/// not there would wait out its whole operation timeout and then say only
/// that it timed out.
fn admin(settings: &KafkaSettings) -> Result<AdminClient<DefaultClientContext>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = super::client_config(settings).create()?;
    admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|source| AdminError::Unreachable {
            brokers: settings.brokers.clone(),
            source,
        })?;
    Ok(admin)
}

pub async fn create_topics(settings: &KafkaSettings) -> Result<Vec<TopicOutcome>, AdminError> {
    let admin = admin(settings)?;
    let topics = Topics::new(settings.topic_prefix.clone()).all();
    let specs: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let answers = admin.create_topics(&specs, &options).await?;
    let mut outcomes = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer {
            Ok(topic) => outcomes.push(TopicOutcome::Created(topic)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push(TopicOutcome::Existed(topic))
            }
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    // Created is not yet usable: wait until every partition has a leader, so
    // whoever reads or writes next finds them (a busy controller takes a
    // while to elect them).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for topic in &topics {
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            if super::led_partitions(&metadata, topic).is_some() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(AdminError::Topic {
                    topic: topic.clone(),
                    code: RDKafkaErrorCode::LeaderNotAvailable,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(outcomes)
}

/// Deletes every contract topic under the settings' prefix; topics that do
/// not exist are skipped. Returns the topics deleted.
pub async fn delete_topics(settings: &KafkaSettings) -> Result<Vec<String>, AdminError> {
    let topics = Topics::new(settings.topic_prefix.clone()).all();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    delete_named(settings, &names).await
}

/// Deletes the topics `names`; those that do not exist are skipped. Returns
/// the topics deleted.
pub async fn delete_named(
    settings: &KafkaSettings,
    names: &[&str],
) -> Result<Vec<String>, AdminError> {
    let admin = admin(settings)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut deleted = Vec::new();
    for answer in admin.delete_topics(names, &options).await? {
        match answer {
            Ok(topic) => deleted.push(topic),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    Ok(deleted)
}
