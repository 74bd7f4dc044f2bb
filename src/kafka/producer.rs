//! The idempotent producer (acks=all): a message counts as sent only when the
//! broker has it durably.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// Header names are the protocol's own constants.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// Set when the sender chooses the partition itself.
    pub partition: Option<i32>,
}

impl OutMessage {
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            headers: Vec::new(),
            partition: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The client's view of `message`.
fn record(message: &OutMessage) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record = FutureRecord::to(&message.topic)
        .key(&message.key)
        .payload(&message.payload)
        .headers(headers);
    if let Some(partition) = message.partition {
        record = record.partition(partition);
    }
    record
}

/// Where the broker put a message queued with `send_result`, once it has it.
async fn delivered(delivery: DeliveryFuture) -> Result<(i32, i64), KafkaError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    queue_timeout: Duration,
}

impl Producer {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Self::create(settings, None)
    }

    /// A producer whose messages become visible only when its transaction
    /// commits. Starting one under `transactional_id` fences every earlier
    /// producer of that id: their open transaction is aborted and nothing
    /// they send afterwards is accepted. Call [`Producer::init_transactions`]
    /// before the first transaction.
    pub fn transactional(
        settings: &KafkaSettings,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        Self::create(settings, Some(transactional_id))
    }

    fn create(
        settings: &KafkaSettings,
        transactional_id: Option<&str>,
    ) -> Result<Self, KafkaError> {
        let mut config = super::client_config(settings);
        if let Some(id) = transactional_id {
            // The broker aborts a transaction left open this long by a relay
            // that died with no successor; it must cover a delivery attempt.
            config.set("transactional.id", id).set(
                "transaction.timeout.ms",
                settings.delivery_timeout_ms.max(10_000).to_string(),
            );
        }
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            );
        for (key, value) in &settings.client {
            config.set(key, value);
        }
        Ok(Self {
            inner: config.create()?,
            queue_timeout: Duration::from_millis(u64::from(settings.delivery_timeout_ms)),
        })
    }

    /// Publishes one message and waits until the broker has it.
    pub async fn send(&self, message: &OutMessage) -> Result<(i32, i64), KafkaError> {
        let delivery = self
            .inner
            .send(record(message), Timeout::After(self.queue_timeout))
            .await
            .map_err(|(e, _)| e)?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Hands one message to the client now, and returns what resolves once
    /// the broker has it. (An `async` send starts only when first polled.)
    /// When the client's queue is full, the message waits for room as with
    /// [`Producer::send`].
    pub fn start(
        &self,
        message: &OutMessage,
    ) -> BoxFuture<'static, Result<(i32, i64), KafkaError>> {
        match self.inner.send_result(record(message)) {
            Ok(delivery) => delivered(delivery).boxed(),
            Err(_) => {
                let producer = self.clone();
                let message = message.clone();
                async move { producer.send(&message).await }.boxed()
            }
        }
    }

    /// Publishes all messages and waits until the broker has every one;
    /// returns where each landed (partition, offset), in the slice's order.
    /// Each is queued in the client at once, in order (a delivery channel
    /// per message, no future, timer or clock read per message); one that
    /// meets a full queue waits there before the ones after it are queued,
    /// so per-partition order is the slice's order.
    pub async fn send_all(&self, messages: &[OutMessage]) -> Result<Vec<(i32, i64)>, KafkaError> {
        let mut places = vec![(0, 0); messages.len()];
        let mut deliveries = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            match self.inner.send_result(record(message)) {
                Ok(delivery) => deliveries.push((i, delivery)),
                Err(_) => places[i] = self.send(message).await?,
            }
        }
        for (i, delivery) in deliveries {
            places[i] = delivered(delivery).await?;
        }
        Ok(places)
    }

    /// Waits for everything queued to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(Timeout::After(timeout))
    }
}

impl Producer {
    /// Registers the transactional id with the broker, fencing earlier
    /// producers of the same id.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.blocking(move |p| p.init_transactions(timeout)).await
    }

    pub async fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.blocking(|p| p.begin_transaction()).await
    }

    /// Makes everything sent since `begin_transaction` visible at once.
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.blocking(move |p| p.commit_transaction(timeout)).await
    }

    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.blocking(move |p| p.abort_transaction(timeout)).await
    }

    async fn blocking(
        &self,
        call: impl FnOnce(&FutureProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || call(&inner))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Whether the broker answers a metadata request within `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.client().fetch_metadata(None, timeout).map(|_| ())
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }
}
