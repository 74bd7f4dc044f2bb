//! The record of dead-letter replays (`stampede dlq replay`): who replayed
//! what, when, and where each record went. Rows are written as the replay
//! goes, each after the broker acknowledged it, so a replay cut short still
//! says exactly what it sent.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::Result;

/// A replay about to start.
#[derive(Debug, Clone)]
pub struct NewReplay<'a> {
    pub operator: &'a str,
    pub host: &'a str,
    pub dlq_topic: &'a str,
    pub target_topic: &'a str,
    /// The selection, as given on the command line.
    pub filter: serde_json::Value,
    pub dry_run: bool,
}

/// What a replay did with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Published again to the request topic.
    Replayed,
    /// A dry run: would have been published.
    WouldReplay,
    /// Left alone: the copy was cut to fit the broker, so it is not the
    /// original message.
    Truncated,
    /// Left alone: an earlier replay sent it already.
    AlreadyReplayed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Replayed => "replayed",
            Outcome::WouldReplay => "would_replay",
            Outcome::Truncated => "truncated",
            Outcome::AlreadyReplayed => "already_replayed",
        }
    }
}

/// One dead letter a replay looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub request_id: Option<String>,
    pub outcome: Outcome,
    /// Where it went, when replayed.
    pub target: Option<(i32, i64)>,
}

/// One past replay, as `stampede dlq history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ReplayRow {
    pub id: i64,
    pub operator: String,
    pub host: String,
    pub dlq_topic: String,
    pub target_topic: String,
    pub filter: serde_json::Value,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub replayed: i32,
    pub skipped: i32,
}

/// Records that a replay starts; returns its id.
pub async fn begin(db: &PgPool, replay: &NewReplay<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO dlq_replays (operator, host, dlq_topic, target_topic, filter, dry_run)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(replay.operator)
    .bind(replay.host)
    .bind(replay.dlq_topic)
    .bind(replay.target_topic)
    .bind(&replay.filter)
    .bind(replay.dry_run)
    .fetch_one(db)
    .await?)
}

/// Records what the replay did with these dead letters.
pub async fn record(db: &PgPool, replay_id: i64, entries: &[Entry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = entries.iter().map(|e| e.dlq_partition).collect();
    let offsets: Vec<i64> = entries.iter().map(|e| e.dlq_offset).collect();
    let request_ids: Vec<Option<String>> = entries.iter().map(|e| e.request_id.clone()).collect();
    let outcomes: Vec<&str> = entries.iter().map(|e| e.outcome.as_str()).collect();
    let target_partitions: Vec<Option<i32>> =
        entries.iter().map(|e| e.target.map(|t| t.0)).collect();
    let target_offsets: Vec<Option<i64>> = entries.iter().map(|e| e.target.map(|t| t.1)).collect();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO dlq_replayed (replay_id, dlq_partition, dlq_offset, request_id, outcome, target_partition, target_offset)
         SELECT $1, * FROM UNNEST($2::int4[], $3::int8[], $4::text[], $5::text[], $6::int4[], $7::int8[])",
    )
    .bind(replay_id)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&request_ids)
    .bind(&outcomes)
    .bind(&target_partitions)
    .bind(&target_offsets)
    .execute(&mut *tx)
    .await?;
    let replayed = entries
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Replayed | Outcome::WouldReplay))
        .count() as i32;
    sqlx::query(
        "UPDATE dlq_replays SET replayed = replayed + $2, skipped = skipped + $3 WHERE id = $1",
    )
    .bind(replay_id)
    .bind(replayed)
    .bind(entries.len() as i32 - replayed)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Marks a replay finished.
pub async fn finish(db: &PgPool, replay_id: i64) -> Result<()> {
    sqlx::query("UPDATE dlq_replays SET finished_at = now() WHERE id = $1")
        .bind(replay_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Which of these dead letters (partition, offset) of `dlq_topic` an earlier
/// replay (not a dry run) already sent.
pub async fn already_replayed(
    db: &PgPool,
    dlq_topic: &str,
    letters: &[(i32, i64)],
) -> Result<HashSet<(i32, i64)>> {
    let partitions: Vec<i32> = letters.iter().map(|l| l.0).collect();
    let offsets: Vec<i64> = letters.iter().map(|l| l.1).collect();
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT e.dlq_partition, e.dlq_offset
         FROM dlq_replayed e JOIN dlq_replays r ON r.id = e.replay_id
         JOIN UNNEST($2::int4[], $3::int8[]) AS l(p, o) ON l.p = e.dlq_partition AND l.o = e.dlq_offset
         WHERE r.dlq_topic = $1 AND e.outcome = 'replayed'",
    )
    .bind(dlq_topic)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The latest replays, newest first; of one DLQ topic when given.
pub async fn history(db: &PgPool, dlq_topic: Option<&str>, limit: i64) -> Result<Vec<ReplayRow>> {
    Ok(sqlx::query_as(
        "SELECT id, operator, host, dlq_topic, target_topic, filter, dry_run, started_at,
                finished_at, replayed, skipped
         FROM dlq_replays WHERE $1::text IS NULL OR dlq_topic = $1
         ORDER BY id DESC LIMIT $2",
    )
    .bind(dlq_topic)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    dlq_partition: i32,
    dlq_offset: i64,
    request_id: Option<String>,
    outcome: String,
    target_partition: Option<i32>,
    target_offset: Option<i64>,
}

/// What one replay did with each dead letter, in DLQ order.
pub async fn entries(db: &PgPool, replay_id: i64) -> Result<Vec<Entry>> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT dlq_partition, dlq_offset, request_id, outcome, target_partition, target_offset
         FROM dlq_replayed WHERE replay_id = $1 ORDER BY dlq_partition, dlq_offset",
    )
    .bind(replay_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Entry {
            dlq_partition: r.dlq_partition,
            dlq_offset: r.dlq_offset,
            request_id: r.request_id,
            outcome: match r.outcome.as_str() {
                "replayed" => Outcome::Replayed,
                "would_replay" => Outcome::WouldReplay,
                "truncated" => Outcome::Truncated,
                _ => Outcome::AlreadyReplayed,
            },
            target: r.target_partition.zip(r.target_offset),
        })
        .collect())
}
