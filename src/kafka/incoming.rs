//! A consumed message, owned: what every handler reads.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers, Message};

/// One consumed message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Shared by the messages of a topic ([`TopicName`]).
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// When the producer created the message (ms since the epoch), if known.
    pub timestamp_ms: Option<i64>,
    /// When the request counts as accepted (ms since the epoch), as the
    /// handler reads it ([`super::BatchHandler::accepted_ms`]): the order batches
    /// are formed and decided in.
    pub accepted_ms: i64,
}

impl Incoming {
    /// `message`, owned; its topic's name comes from `names`.
    pub(super) fn from_message(message: &BorrowedMessage<'_>, names: &mut TopicName) -> Self {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: names.of(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
            accepted_ms: i64::MAX,
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// A header's value as text, when it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The name of the topic messages last came from, shared by them rather
/// than copied into each.
#[derive(Debug, Default)]
pub struct TopicName {
    last: Option<Arc<str>>,
}

impl TopicName {
    pub fn of(&mut self, topic: &str) -> Arc<str> {
        match &self.last {
            Some(last) if **last == *topic => Arc::clone(last),
            _ => Arc::clone(self.last.insert(Arc::from(topic))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_one_topic_share_its_name_and_a_new_topic_gets_its_own() {
        let mut names = TopicName::default();
        let first = names.of("coupon.requests.v1");
        let again = names.of("coupon.requests.v1");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*names.of("order.requests.v1"), "order.requests.v1");
        assert_eq!(&*names.of("coupon.requests.v1"), "coupon.requests.v1");
    }
}
