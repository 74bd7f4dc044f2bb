//! Dead-letter copies: the original key and bytes of a message no worker can
//! read, with headers saying why and where it came from.

use super::consumer::Incoming;
use super::producer::OutMessage;
use super::topics::Topics;

pub const HEADER_ERROR: &str = "error";
pub const HEADER_SOURCE_TOPIC: &str = "source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "source.offset";

/// The dead-letter copy of `message`, carrying `reason`.
pub fn dead_letter(message: &Incoming, reason: &str) -> OutMessage {
    OutMessage::new(
        Topics::dlq_of(&message.topic),
        message.key.clone().unwrap_or_default(),
        message.payload.clone().unwrap_or_default(),
    )
    .header(HEADER_ERROR, reason)
    .header(HEADER_SOURCE_TOPIC, message.topic.as_str())
    .header(HEADER_SOURCE_PARTITION, message.partition.to_string())
    .header(HEADER_SOURCE_OFFSET, message.offset.to_string())
}
