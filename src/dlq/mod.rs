//! Dead-letter queues for operators: what is on a request topic's DLQ, one
//! record in full, and replaying records to the request topic once their
//! cause is fixed (`stampede dlq list|show|replay|history`).
//!
//! A replay publishes the original key and bytes again, so a request keeps
//! its `request_id`: one already decided is answered from its stored result,
//! never decided twice; one that was never decided (it met a bug, since
//! fixed) is decided now; poison goes back to the DLQ, with headers naming
//! the replay. Copies cut to fit the broker are not the original message and
//! are never replayed; records an earlier replay sent are skipped unless
//! asked again. Every replay, dry runs too, is recorded in PostgreSQL
//! ([`crate::store::replays`]) as it goes.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{Headers, Message};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::KafkaSettings;
use crate::kafka::dlq::{
    HEADER_ERROR, HEADER_REPLAY_ID, HEADER_REPLAY_OF, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, HEADER_TRUNCATED,
};
use crate::kafka::producer::{OutMessage, Producer};
use crate::kafka::tail::{self, Start};
use crate::store::replays::{self, Entry, NewReplay, Outcome};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no dead letter at {topic} partition {partition} offset {offset}")]
    NotFound {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// How long reading a DLQ to its end may take.
const READ_LIMIT: Duration = Duration::from_secs(120);
/// Replayed records recorded in PostgreSQL per statement.
const RECORD_CHUNK: usize = 100;

/// One record of a DLQ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(serialize_with = "lossy")]
    pub key: Vec<u8>,
    #[serde(serialize_with = "lossy")]
    pub payload: Vec<u8>,
    #[serde(serialize_with = "lossy_headers")]
    pub headers: Vec<(String, Vec<u8>)>,
}

fn lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

fn lossy_headers<S: serde::Serializer>(
    headers: &[(String, Vec<u8>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        headers
            .iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned())),
    )
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Why the worker dead-lettered it.
    pub fn error(&self) -> String {
        self.header(HEADER_ERROR).unwrap_or_default()
    }

    /// Whether the copy was cut to fit the broker (then it is not the
    /// original message).
    pub fn truncated(&self) -> bool {
        self.header(HEADER_TRUNCATED).is_some()
    }

    /// The `request_id` of the original, when it is readable.
    pub fn request_id(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.payload).ok()?;
        Some(value.get("request_id")?.as_str()?.to_owned())
    }

    /// Where the original was read: topic, partition, offset.
    pub fn source(&self) -> String {
        format!(
            "{}:{}:{}",
            self.header(HEADER_SOURCE_TOPIC).unwrap_or_default(),
            self.header(HEADER_SOURCE_PARTITION).unwrap_or_default(),
            self.header(HEADER_SOURCE_OFFSET).unwrap_or_default()
        )
    }
}

/// Which dead letters a command applies to; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// The reason contains this text (case-insensitive).
    pub error: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    pub partition: Option<i32>,
    /// First DLQ offset (inclusive).
    pub from_offset: Option<i64>,
    /// Last DLQ offset (inclusive).
    pub to_offset: Option<i64>,
    pub request_id: Option<String>,
    /// At most this many, the oldest first.
    pub limit: Option<usize>,
}

impl Selection {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let error = self
            .error
            .as_ref()
            .is_none_or(|e| letter.error().to_lowercase().contains(&e.to_lowercase()));
        let time = |bound: Option<DateTime<Utc>>, after: bool| {
            bound.is_none_or(|b| {
                letter
                    .timestamp
                    .is_some_and(|t| if after { t >= b } else { t < b })
            })
        };
        error
            && time(self.since, true)
            && time(self.until, false)
            && self.partition.is_none_or(|p| p == letter.partition)
            && self.from_offset.is_none_or(|o| letter.offset >= o)
            && self.to_offset.is_none_or(|o| letter.offset <= o)
            && self
                .request_id
                .as_ref()
                .is_none_or(|id| letter.request_id().as_ref() == Some(id))
    }
}

/// The dead letters of `dlq_topic` that `selection` picks, by partition then
/// offset; reads the topic to the end it has when called.
pub async fn read(
    settings: &KafkaSettings,
    dlq_topic: &str,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, DlqError> {
    let settings = settings.clone();
    let topic = dlq_topic.to_owned();
    let selection = selection.clone();
    let start = match (selection.partition, selection.from_offset) {
        (Some(p), Some(o)) => Start::At(HashMap::from([(p, o)])),
        _ => Start::Earliest,
    };
    tokio::task::spawn_blocking(move || {
        let consumer = tail::reader(&settings, &format!("{}.dlq-reader", settings.group_id))?;
        let mut letters = Vec::new();
        tail::read_to_end(&consumer, &topic, &start, READ_LIMIT, |m| {
            let letter = DeadLetter {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m
                    .timestamp()
                    .to_millis()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                key: m.key().unwrap_or_default().to_vec(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            if selection.matches(&letter) {
                letters.push(letter);
            }
        })?;
        letters.sort_by_key(|l| (l.partition, l.offset));
        if let Some(limit) = selection.limit {
            letters.truncate(limit);
        }
        Ok(letters)
    })
    .await
    .expect("reading a DLQ does not panic")
}

/// One dead letter by its place on the DLQ.
pub async fn find(
    settings: &KafkaSettings,
    dlq_topic: &str,
    partition: i32,
    offset: i64,
) -> Result<DeadLetter, DlqError> {
    let selection = Selection {
        partition: Some(partition),
        from_offset: Some(offset),
        to_offset: Some(offset),
        ..Selection::default()
    };
    read(settings, dlq_topic, &selection)
        .await?
        .pop()
        .ok_or_else(|| DlqError::NotFound {
            topic: dlq_topic.to_owned(),
            partition,
            offset,
        })
}

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Who runs it, for the record.
    pub operator: String,
    /// Decide and record what would be sent, send nothing.
    pub dry_run: bool,
    /// Records published per second at most.
    pub rate: u32,
    /// Send records an earlier replay sent, too.
    pub again: bool,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub replay_id: i64,
    pub entries: Vec<Entry>,
}

impl ReplayReport {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.entries.iter().filter(|e| e.outcome == outcome).count()
    }
}

/// Replays the selected dead letters of `dlq_topic` to `target_topic`,
/// recording every step; `progress(done, of)` is called as it goes.
pub async fn replay(
    settings: &KafkaSettings,
    db: &PgPool,
    dlq_topic: &str,
    target_topic: &str,
    selection: &Selection,
    options: &ReplayOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ReplayReport, DlqError> {
    let letters = read(settings, dlq_topic, selection).await?;
    let places: Vec<(i32, i64)> = letters.iter().map(|l| (l.partition, l.offset)).collect();
    let sent_before = if options.again {
        Default::default()
    } else {
        replays::already_replayed(db, dlq_topic, &places).await?
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let replay_id = replays::begin(
        db,
        &NewReplay {
            operator: &options.operator,
            host: &host,
            dlq_topic,
            target_topic,
            filter: serde_json::to_value(selection).unwrap_or_default(),
            dry_run: options.dry_run,
        },
    )
    .await?;
    let producer = (!options.dry_run)
        .then(|| Producer::new(settings))
        .transpose()?;
    let mut pace = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(options.rate.max(1)),
    ));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut entries = Vec::with_capacity(letters.len());
    let mut unrecorded = 0;
    for (done, letter) in letters.iter().enumerate() {
        let mut entry = Entry {
            dlq_partition: letter.partition,
            dlq_offset: letter.offset,
            request_id: letter.request_id(),
            outcome: Outcome::WouldReplay,
            target: None,
        };
        if letter.truncated() {
            entry.outcome = Outcome::Truncated;
        } else if sent_before.contains(&(letter.partition, letter.offset)) {
            entry.outcome = Outcome::AlreadyReplayed;
        } else if let Some(producer) = &producer {
            pace.tick().await;
            let message = OutMessage::new(target_topic, letter.key.clone(), letter.payload.clone())
                .header(HEADER_REPLAY_ID, replay_id.to_string())
                .header(
                    HEADER_REPLAY_OF,
                    format!("{dlq_topic}:{}:{}", letter.partition, letter.offset),
                );
            entry.target = Some(producer.send(&message).await?);
            entry.outcome = Outcome::Replayed;
        }
        entries.push(entry);
        unrecorded += 1;
        if unrecorded == RECORD_CHUNK {
            replays::record(db, replay_id, &entries[entries.len() - unrecorded..]).await?;
            unrecorded = 0;
        }
        progress(done + 1, letters.len());
    }
    replays::record(db, replay_id, &entries[entries.len() - unrecorded..]).await?;
    replays::finish(db, replay_id).await?;
    Ok(ReplayReport { replay_id, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64, error: &str, payload: &str) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            timestamp: Utc.timestamp_millis_opt(1_000_000).single(),
            key: b"1".to_vec(),
            payload: payload.as_bytes().to_vec(),
            headers: vec![(HEADER_ERROR.into(), error.as_bytes().to_vec())],
        }
    }

    #[test]
    fn every_field_of_a_selection_narrows_it() {
        let l = letter(2, 40, "Redis script failed", r#"{"request_id":"k-1"}"#);
        assert!(Selection::default().matches(&l));
        let pick = |s: Selection| s.matches(&l);
        assert!(pick(Selection {
            error: Some("SCRIPT".into()),
            ..Default::default()
        }));
        assert!(!pick(Selection {
            error: Some("json".into()),
            ..Default::default()
        }));
        assert!(pick(Selection {
            partition: Some(2),
            from_offset: Some(40),
            to_offset: Some(40),
            ..Default::default()
        }));
        assert!(!pick(Selection {
            from_offset: Some(41),
            ..Default::default()
        }));
        assert!(!pick(Selection {
            to_offset: Some(39),
            ..Default::default()
        }));
        assert!(!pick(Selection {
            partition: Some(1),
            ..Default::default()
        }));
        assert!(pick(Selection {
            request_id: Some("k-1".into()),
            ..Default::default()
        }));
        assert!(!pick(Selection {
            request_id: Some("k-2".into()),
            ..Default::default()
        }));
        let at = l.timestamp.unwrap();
        assert!(pick(Selection {
            since: Some(at),
            until: Some(at + chrono::Duration::seconds(1)),
            ..Default::default()
        }));
        assert!(!pick(Selection {
            until: Some(at),
            ..Default::default()
        }));
    }

    #[test]
    fn a_request_id_is_read_only_from_json() {
        assert_eq!(
            letter(0, 0, "", r#"{"request_id":"k-9"}"#)
                .request_id()
                .as_deref(),
            Some("k-9")
        );
        assert_eq!(letter(0, 0, "", "not json").request_id(), None);
        assert_eq!(letter(0, 0, "", r#"{"request_id":7}"#).request_id(), None);
    }
}
