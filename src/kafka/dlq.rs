//! Dead-letter copies: the original key and bytes of a message no worker can
//! read, with headers saying why and where it came from. A copy always fits
//! the producers' message limit: a key or payload larger than the room kept
//! for it is cut, and a `truncated` header says what was kept.

use super::incoming::Incoming;
use super::producer::OutMessage;
pub use super::producer::{HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use super::topics::Topics;

pub const HEADER_ERROR: &str = "error";
pub const HEADER_SOURCE_TOPIC: &str = "source.topic";
pub const HEADER_TRUNCATED: &str = "truncated";
/// On a message `stampede dlq replay` published: the replay's id in its record.
pub const HEADER_REPLAY_ID: &str = "replay.id";
/// On a message `stampede dlq replay` published: the dead letter it came
/// from, `<dlq topic>:<partition>:<offset>`. A replayed message dead-lettered
/// again keeps both replay headers.
pub const HEADER_REPLAY_OF: &str = "replay.of";

/// Payload bytes a copy keeps: half the producers' default limit
/// (`message.max.bytes`, 1,000,000), leaving room for key and headers.
pub const MAX_COPY_PAYLOAD: usize = 500_000;
/// Key bytes a copy keeps (a key is a decimal id; anything longer is hostile).
pub const MAX_COPY_KEY: usize = 1_024;
/// Characters of the reason a copy keeps.
const MAX_REASON: usize = 2_048;

/// The dead-letter copy of `message`, carrying `reason`.
pub fn dead_letter(message: &Incoming, reason: &str) -> OutMessage {
    let key = message.key.as_deref().unwrap_or_default();
    let payload = message.payload.as_deref().unwrap_or_default();
    let reason: String = reason.chars().take(MAX_REASON).collect();
    let mut copy = OutMessage::new(
        Topics::dlq_of(&message.topic),
        &key[..key.len().min(MAX_COPY_KEY)],
        &payload[..payload.len().min(MAX_COPY_PAYLOAD)],
    )
    .header(HEADER_ERROR, reason)
    .header(HEADER_SOURCE_TOPIC, &*message.topic)
    .header(HEADER_SOURCE_PARTITION, message.partition.to_string())
    .header(HEADER_SOURCE_OFFSET, message.offset.to_string());
    for (name, value) in &message.headers {
        let Some(&kept) = [HEADER_REPLAY_ID, HEADER_REPLAY_OF]
            .iter()
            .find(|kept| **kept == name)
        else {
            continue;
        };
        copy = copy.header(
            kept,
            value.iter().take(MAX_REASON).copied().collect::<Vec<u8>>(),
        );
    }
    if key.len() > MAX_COPY_KEY || payload.len() > MAX_COPY_PAYLOAD {
        copy = copy.header(
            HEADER_TRUNCATED,
            format!(
                "kept the first {} of {} key bytes and {} of {} payload bytes",
                key.len().min(MAX_COPY_KEY),
                key.len(),
                payload.len().min(MAX_COPY_PAYLOAD),
                payload.len()
            ),
        );
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(key: usize, payload: usize) -> Incoming {
        Incoming {
            topic: "charge.requests.v1".into(),
            partition: 3,
            offset: 42,
            key: Some(vec![b'7'; key]),
            payload: Some(vec![b'x'; payload]),
            headers: Vec::new(),
            timestamp_ms: None,
            accepted_ms: i64::MAX,
        }
    }

    #[test]
    fn a_small_message_is_copied_whole() {
        let copy = dead_letter(&incoming(2, 100), "bad");
        assert_eq!(&*copy.topic, "charge.requests.v1.dlq");
        assert_eq!(copy.payload.len(), 100);
        assert!(copy.headers.iter().all(|(k, _)| *k != HEADER_TRUNCATED));
    }

    #[test]
    fn an_oversize_message_is_cut_to_fit_and_says_so() {
        let copy = dead_letter(&incoming(5_000, 1_040_000), &"why ".repeat(10_000));
        let size = copy.key.len()
            + copy.payload.len()
            + copy
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        assert!(size < 1_000_000 - 1_000, "copy of {size} bytes");
        let truncated = &copy
            .headers
            .iter()
            .find(|(k, _)| *k == HEADER_TRUNCATED)
            .unwrap()
            .1;
        assert_eq!(
            std::str::from_utf8(truncated).unwrap(),
            "kept the first 1024 of 5000 key bytes and 500000 of 1040000 payload bytes"
        );
    }
}
