//! The idempotent producer (acks=all): a message counts as sent only when the
//! broker has it durably.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message};

use crate::config::KafkaSettings;

/// How long a message that meets the client's full queue waits before it
/// is offered again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// The header naming the partition of the request a result answers (and,
/// on a dead letter, of the message it copies).
pub const HEADER_SOURCE_PARTITION: &str = "source.partition";
/// The header naming that message's offset.
pub const HEADER_SOURCE_OFFSET: &str = "source.offset";

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Shared: a flow's results all name the same topic.
    pub topic: Arc<str>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// The request a result answers, as (partition, offset) on its request
    /// topic: sent as the headers `source.partition` and `source.offset`,
    /// written out only when the message is handed to the client.
    pub source: Option<(i32, i64)>,
    /// Header names are the protocol's own constants; sent after `source`'s.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// Set when the sender chooses the partition itself.
    pub partition: Option<i32>,
}

impl OutMessage {
    pub fn new(
        topic: impl Into<Arc<str>>,
        key: impl Into<Vec<u8>>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            source: None,
            headers: Vec::new(),
            partition: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Marks the message as the answer to the request at `offset` of
    /// `partition` (see [`OutMessage::source`]).
    pub fn answering(mut self, partition: i32, offset: i64) -> Self {
        self.source = Some((partition, offset));
        self
    }
}

/// The client's view of `message`, reporting its delivery to `deliveries`.
fn record<'a>(
    message: &'a OutMessage,
    deliveries: &Arc<Deliveries>,
) -> BaseRecord<'a, Vec<u8>, Vec<u8>, Arc<Deliveries>> {
    let mut record = BaseRecord::with_opaque_to(&message.topic, Arc::clone(deliveries))
        .key(&message.key)
        .payload(&message.payload);
    if message.source.is_some() || !message.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2);
        if let Some((partition, offset)) = message.source {
            let (mut p, mut o) = (itoa::Buffer::new(), itoa::Buffer::new());
            headers = headers
                .insert(Header {
                    key: HEADER_SOURCE_PARTITION,
                    value: Some(p.format(partition)),
                })
                .insert(Header {
                    key: HEADER_SOURCE_OFFSET,
                    value: Some(o.format(offset)),
                });
        }
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        record = record.headers(headers);
    }
    if let Some(partition) = message.partition {
        record = record.partition(partition);
    }
    record
}

/// The client's context: each delivery report goes to the [`Deliveries`]
/// its message was sent with.
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<Deliveries>;

    fn delivery(&self, result: &DeliveryResult<'_>, deliveries: Arc<Deliveries>) {
        deliveries.report(match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((e, _)) => Err(e.clone()),
        });
    }
}

/// The delivery reports of one call's messages, gathered as the client's
/// polling thread hands them over; the caller is woken once, when the last
/// one is in (not once per message).
struct Deliveries {
    gathered: Mutex<Gathered>,
}

struct Gathered {
    expected: usize,
    places: Vec<(i32, i64)>,
    failed: Option<KafkaError>,
    reported: usize,
    all_in: Option<oneshot::Sender<()>>,
}

impl Deliveries {
    /// Deliveries of `expected` messages, and what resolves when all are in.
    fn new(expected: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (all_in, receiver) = oneshot::channel();
        let deliveries = Self {
            gathered: Mutex::new(Gathered {
                expected,
                places: Vec::with_capacity(expected),
                failed: None,
                reported: 0,
                all_in: Some(all_in),
            }),
        };
        (Arc::new(deliveries), receiver)
    }

    fn report(&self, outcome: Result<(i32, i64), KafkaError>) {
        let mut gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(place) => gathered.places.push(place),
            Err(e) => {
                gathered.failed.get_or_insert(e);
            }
        }
        gathered.reported += 1;
        if gathered.reported == gathered.expected {
            if let Some(all_in) = gathered.all_in.take() {
                let _ = all_in.send(());
            }
        }
    }

    /// Once `all_in` resolves: where each message landed (in the order the
    /// reports came), or the first failure.
    async fn outcome(&self, all_in: oneshot::Receiver<()>) -> Result<Vec<(i32, i64)>, KafkaError> {
        all_in.await.map_err(|_| KafkaError::Canceled)?;
        let mut gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        match gathered.failed.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut gathered.places)),
        }
    }
}

/// The place of the one message a call sent.
fn only(places: Vec<(i32, i64)>) -> Result<(i32, i64), KafkaError> {
    places.first().copied().ok_or(KafkaError::Canceled)
}

/// The client settings of an idempotent producer (acks=all) that waits
/// `linger_ms` to gather a batch per partition; `kafka.client` overrides
/// any of them.
fn config(
    settings: &KafkaSettings,
    transactional_id: Option<&str>,
    linger_ms: u32,
) -> ClientConfig {
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
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout_ms.to_string(),
        );
    for (key, value) in &settings.client {
        config.set(key, value);
    }
    config
}

#[derive(Clone)]
pub struct Producer {
    inner: Arc<BaseProducer<Reports>>,
    /// Stops the client's polling thread when the last clone goes.
    _polling: Arc<Polling>,
    queue_timeout: Duration,
}

/// How long one poll of the client's queue lasts. Delivery reports are
/// handed over as they arrive, whatever the length; but rdkafka spins
/// through the last, sub-millisecond part of every poll, so a long one
/// spins rarely. The cost: a producer's thread notices it is no longer
/// needed up to this much later, and ends on its own.
const POLL_FOR: Duration = Duration::from_secs(1);

/// The client's polling thread, told to stop when this goes.
struct Polling {
    stop: Arc<AtomicBool>,
}

impl Polling {
    /// Hands `client`'s delivery reports over until told to stop; the
    /// thread holds the client, which goes with it.
    fn start(client: Arc<BaseProducer<Reports>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("kafka producer poll".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    client.poll(POLL_FOR);
                }
            })?;
        Ok(Self { stop })
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Producer {
    /// `linger.ms` of [`Producer::new`], the workers' producers: a worker
    /// sends a whole batch's results at once, so a short wait is enough to
    /// gather them.
    pub const WORKER_LINGER_MS: u32 = 2;

    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Self::create(settings, None, Self::WORKER_LINGER_MS)
    }

    /// A producer that gathers messages into one batch per partition for
    /// up to `linger_ms` before sending it (the gateway's, whose requests
    /// arrive one by one; [`Producer::new`] waits 2 ms).
    pub fn lingering(settings: &KafkaSettings, linger_ms: u32) -> Result<Self, KafkaError> {
        Self::create(settings, None, linger_ms)
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
        Self::create(settings, Some(transactional_id), Self::WORKER_LINGER_MS)
    }

    fn create(
        settings: &KafkaSettings,
        transactional_id: Option<&str>,
        linger_ms: u32,
    ) -> Result<Self, KafkaError> {
        let inner: Arc<BaseProducer<Reports>> =
            Arc::new(config(settings, transactional_id, linger_ms).create_with_context(Reports)?);
        let polling = Polling::start(Arc::clone(&inner))
            .map_err(|e| KafkaError::ClientCreation(format!("the polling thread: {e}")))?;
        Ok(Self {
            inner,
            _polling: Arc::new(polling),
            queue_timeout: Duration::from_millis(u64::from(settings.delivery_timeout_ms)),
        })
    }

    /// Publishes one message and waits until the broker has it.
    pub async fn send(&self, message: &OutMessage) -> Result<(i32, i64), KafkaError> {
        only(self.send_all(std::slice::from_ref(message)).await?)
    }

    /// Hands one message to the client now, and returns what resolves once
    /// the broker has it. (An `async` send starts only when first polled.)
    /// When the client's queue is full, the message waits for room as with
    /// [`Producer::send`].
    pub fn start(
        &self,
        message: &OutMessage,
    ) -> BoxFuture<'static, Result<(i32, i64), KafkaError>> {
        let (deliveries, all_in) = Deliveries::new(1);
        match self.inner.send(record(message, &deliveries)) {
            Ok(()) => async move { only(deliveries.outcome(all_in).await?) }.boxed(),
            Err(_) => {
                let producer = self.clone();
                let message = message.clone();
                async move { producer.send(&message).await }.boxed()
            }
        }
    }

    /// Publishes all messages and waits until the broker has every one;
    /// returns where they landed (partition, offset), in the order the
    /// broker confirmed them. Each is queued in the client at once, in order
    /// (one that meets a full queue waits there before the ones after it
    /// are queued, so per-partition order is the slice's order); the
    /// client's delivery reports are gathered in one place and the caller
    /// is woken once, when the last is in.
    pub async fn send_all(&self, messages: &[OutMessage]) -> Result<Vec<(i32, i64)>, KafkaError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (deliveries, all_in) = Deliveries::new(messages.len());
        for message in messages {
            self.queue(message, &deliveries).await?;
        }
        deliveries.outcome(all_in).await
    }

    /// Queues one message in the client, waiting for room while its queue
    /// is full (at most the delivery timeout; the clock is read only once
    /// the queue is found full).
    async fn queue(
        &self,
        message: &OutMessage,
        deliveries: &Arc<Deliveries>,
    ) -> Result<(), KafkaError> {
        let mut give_up = None;
        loop {
            match self.inner.send(record(message, deliveries)) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now()
                        < *give_up.get_or_insert_with(|| Instant::now() + self.queue_timeout) =>
                {
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
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
        call: impl FnOnce(&BaseProducer<Reports>) -> Result<(), KafkaError> + Send + 'static,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_is_the_callers_unless_kafka_client_overrides_it() {
        let mut settings = KafkaSettings::default();
        assert_eq!(config(&settings, None, 10).get("linger.ms"), Some("10"));
        assert_eq!(
            config(&settings, None, Producer::WORKER_LINGER_MS).get("linger.ms"),
            Some("2")
        );
        settings.client.insert("linger.ms".into(), "50".into());
        assert_eq!(config(&settings, None, 10).get("linger.ms"), Some("50"));
        let relay = config(&settings, Some("relay-1"), Producer::WORKER_LINGER_MS);
        assert_eq!(relay.get("transactional.id"), Some("relay-1"));
        assert_eq!(relay.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn a_result_names_the_request_it_answers_in_its_first_headers() {
        use rdkafka::message::Headers;
        let message = OutMessage::new("coupon.results.v1", "42", "{}")
            .answering(3, 1_234_567)
            .header("traceparent", "00-1-2-01");
        let (deliveries, _all_in) = Deliveries::new(1);
        let sent = record(&message, &deliveries);
        let headers: Vec<(String, String)> = sent
            .headers
            .as_ref()
            .expect("headers")
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.unwrap_or_default().to_vec());
                (h.key.to_owned(), value.expect("UTF-8"))
            })
            .collect();
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("source.partition", "3"),
                ("source.offset", "1234567"),
                ("traceparent", "00-1-2-01")
            ]
        );
        let plain = OutMessage::new("coupon.results.v1", "42", "{}");
        assert!(record(&plain, &deliveries).headers.is_none());
    }

    #[tokio::test]
    async fn the_client_goes_with_the_last_clone_of_its_producer() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:9".into(),
            ..KafkaSettings::default()
        };
        let producer = Producer::new(&settings).expect("a producer");
        let client = Arc::downgrade(&producer.inner);
        let copy = producer.clone();
        drop(producer);
        assert!(client.upgrade().is_some(), "a clone still sends with it");
        drop(copy);
        // Its polling thread notices within a poll, and drops the client.
        let deadline = Instant::now() + POLL_FOR * 10;
        while client.strong_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the client outlived its producer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_batch_no_broker_takes_fails_once_its_delivery_timeout_passes() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let settings = KafkaSettings {
            brokers: format!("127.0.0.1:{port}"),
            delivery_timeout_ms: 1_500,
            ..KafkaSettings::default()
        };
        let producer = Producer::new(&settings).expect("a producer");
        let batch: Vec<OutMessage> = (0..3)
            .map(|i| OutMessage::new("nowhere", "k", format!("m-{i}")))
            .collect();
        let sent = tokio::time::timeout(Duration::from_secs(30), producer.send_all(&batch))
            .await
            .expect("the batch is answered, not left waiting");
        assert!(
            matches!(
                sent,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut
                ))
            ),
            "{sent:?}"
        );
        let one = tokio::time::timeout(Duration::from_secs(30), producer.start(&batch[0]))
            .await
            .expect("one message is answered too");
        assert!(one.is_err(), "{one:?}");
    }
}
