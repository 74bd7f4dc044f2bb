//! Shared helpers for the integration tests. Every test gets its own
//! database, topic prefix, consumer groups and Redis key prefix, so tests run
//! in parallel against the same real services without seeing each other.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use stampede::app::{Roles, Running};
use stampede::config::{Settings, Url};
use stampede::counters::Counters;
use stampede::kafka::admin::create_topics;
use stampede::kafka::{Flow, OutMessage, Producer, Topics};
use stampede::store;
use tokio_util::sync::CancellationToken;

pub mod link;
pub mod private_redis;

/// How long any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(90);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Logs, and span export when a test configures it: once per test process.
static TELEMETRY: std::sync::OnceLock<stampede::telemetry::Telemetry> = std::sync::OnceLock::new();

/// Exports the spans this test process still buffers.
pub fn flush_spans() {
    if let Some(telemetry) = TELEMETRY.get() {
        telemetry.flush();
    }
}

/// The Prometheus text served at `url` (a `/metrics` address); empty while
/// nothing answers there.
pub async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of the samples of metric `name` (exactly) whose labels contain
/// every one of `labels`, in Prometheus text.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sum of a metric's series at `url`.
pub async fn metric(url: &str, name: &str) -> f64 {
    metric_sum(&scrape(url).await, name, &[])
}

/// POSTs JSON (with an `Idempotency-Key` when given): the status and the
/// body (null when it is not JSON).
pub async fn post_json(
    client: &reqwest::Client,
    url: String,
    body: Value,
    key: Option<&str>,
) -> (reqwest::StatusCode, Value) {
    let mut request = client.post(url).json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GETs JSON: the status and the body (null when it is not JSON).
pub async fn get_json(client: &reqwest::Client, url: String) -> (reqwest::StatusCode, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// POSTs a request to the gateway at `http` and waits for its result
/// (`GET /v1/requests/{id}?wait_ms=…`).
pub async fn post_and_wait(client: &reqwest::Client, http: &str, path: &str, body: Value) -> Value {
    let (status, accepted) = post_json(client, format!("{http}{path}"), body, None).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["request_id"].as_str().expect("a request id");
    let (status, result) = get_json(client, format!("{http}/v1/requests/{id}?wait_ms=20000")).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{result}");
    result
}

/// Asks `check` again and again until it answers `Some`, and returns that;
/// fails the test, saying `what` never happened, after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Waits until a metric at `url` reaches `at_least`.
pub async fn wait_metric(url: &str, name: &str, at_least: f64) {
    eventually(&format!("{name} reaches {at_least} at {url}"), || async {
        (metric(url, name).await >= at_least).then_some(())
    })
    .await
}

/// Settings isolated under `tag`.
pub fn isolated_settings(tag: &str) -> Settings {
    let mut s = Settings::default();
    s.kafka.brokers = env_or("STAMPEDE_TEST_BROKERS", "127.0.0.1:9092");
    s.kafka.topic_prefix = format!("{tag}.");
    s.kafka.partitions = 4;
    s.kafka.group_id = tag.to_owned();
    s.kafka.session_timeout_ms = 6_000;
    s.kafka.heartbeat_interval_ms = 500;
    let base = env_or(
        "STAMPEDE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432",
    );
    s.database.url = Url(format!("{base}/{tag}"));
    s.database.max_connections = 8;
    s.redis.url = Url(env_or("STAMPEDE_TEST_REDIS_URL", "redis://127.0.0.1:6379"));
    s.redis.key_prefix = tag.to_owned();
    s.gateway.listen = "127.0.0.1:0".parse().unwrap();
    s.worker.retry_initial_ms = 50;
    s.worker.retry_max_ms = 1_000;
    s.log.filter = "warn".into();
    s
}

/// One test's world: its database, topics and Redis keys, removed by
/// [`TestEnv::cleanup`] — or, when the test fails before it gets there, when
/// the environment is dropped.
pub struct TestEnv {
    pub tag: String,
    pub settings: Settings,
    pub db: PgPool,
    pub counters: Counters,
    pub producer: Producer,
    pub topics: Topics,
    config_dir: tempfile::TempDir,
    cleaned: bool,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A fresh environment whose settings `adjust` may change first.
    pub async fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let tag = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let mut settings = isolated_settings(&tag);
        adjust(&mut settings);
        TELEMETRY.get_or_init(|| stampede::telemetry::init(&settings.log).expect("telemetry"));
        store::migrate(&settings.database)
            .await
            .expect("migrate the test database");
        create_topics(&settings.kafka)
            .await
            .expect("create the test topics");
        let db = store::connect(&settings.database)
            .await
            .expect("connect to PostgreSQL");
        let counters = Counters::connect(&settings.redis)
            .await
            .expect("connect to Redis");
        let producer = Producer::new(&settings.kafka).expect("create a producer");
        let topics = Topics::new(settings.kafka.topic_prefix.clone());
        let config_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            config_dir.path().join("stampede.toml"),
            toml::to_string(&settings).expect("settings as TOML"),
        )
        .expect("write settings");
        Self {
            tag,
            settings,
            db,
            counters,
            producer,
            topics,
            config_dir,
            cleaned: false,
        }
    }

    /// A coupon of `stock` (1,000 off, valid for a day), its stock loaded
    /// into Redis as the admin API would.
    pub async fn create_coupon(&self, id: i64, stock: i64) {
        self.create_split_coupon(id, stock, 1).await;
    }

    /// [`Self::create_coupon`] with its stock split over `shards` Redis
    /// sub-counters.
    pub async fn create_split_coupon(&self, id: i64, stock: i64, shards: u32) {
        let spec = stampede::domain::messages::CouponSpec {
            name: format!("coupon-{id}"),
            discount: stampede::domain::coupon::Discount::Fixed { amount: 1_000 },
            total_quantity: stock,
            expires_at: chrono::Utc::now() + chrono::Duration::days(1),
            shards,
        };
        stampede::store::coupons::create(&self.db, Some(id), &spec)
            .await
            .expect("create a coupon");
        stampede::reconcile::load_coupon(&self.db, &self.counters, id, true)
            .await
            .expect("load its stock into Redis");
    }

    /// Product `id` (named `product-<id>`) at `price` with `stock` units,
    /// its stock loaded into Redis as the admin API would.
    pub async fn create_product(&self, id: i64, price: i64, stock: i64) {
        store::products::create(&self.db, Some(id), &format!("product-{id}"), price, stock)
            .await
            .expect("create a product");
        self.counters
            .load_products(&[(id, stock)], &[], true)
            .await
            .expect("load its stock into Redis");
    }

    /// Starts gateway and/or workers in this process.
    pub async fn start(&self, roles: Roles) -> App {
        self.start_with(roles, |_| {}).await
    }

    /// Starts gateway and/or workers in this process with settings of their
    /// own (e.g. reaching a service through a [`link::Link`]).
    pub async fn start_with(&self, roles: Roles, adjust: impl FnOnce(&mut Settings)) -> App {
        let mut settings = self.settings.clone();
        adjust(&mut settings);
        let shutdown = CancellationToken::new();
        let running = stampede::run(settings, roles, shutdown.clone())
            .await
            .expect("start stampede");
        App {
            running: Some(running),
            shutdown,
        }
    }

    /// Starts `stampede worker --only <only>` serving metrics; returns it
    /// and the URL of its `/metrics`.
    pub fn worker_with_metrics(&self, only: &str) -> (WorkerProcess, String) {
        self.worker_with_env(only, &[])
    }

    /// [`Self::worker_with_metrics`] with settings of its own, as
    /// `STAMPEDE_*` variables (e.g. `("STAMPEDE_WORKER__BATCH_SIZE", "1")`).
    pub fn worker_with_env(&self, only: &str, env: &[(&str, &str)]) -> (WorkerProcess, String) {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_stampede"))
            .envs(env.iter().copied())
            .args([
                "--config",
                self.config_path().as_str(),
                "worker",
                "--only",
                only,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn stampede worker");
        (
            WorkerProcess { child },
            format!("http://127.0.0.1:{port}/metrics"),
        )
    }

    /// Starts `stampede worker --only <only>` as a separate process.
    pub fn worker_process(&self, only: &str) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_stampede"))
            .args([
                "--config",
                self.config_path().as_str(),
                "worker",
                "--only",
                only,
            ])
            .env(
                "RUST_LOG",
                std::env::var("STAMPEDE_TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn stampede worker");
        WorkerProcess { child }
    }

    pub fn config_path(&self) -> String {
        self.config_dir
            .path()
            .join("stampede.toml")
            .display()
            .to_string()
    }

    /// Publishes raw bytes to a flow's request topic, as any producer could.
    pub async fn publish_raw(&self, flow: Flow, key: &str, payload: impl Into<Vec<u8>>) {
        let message = OutMessage::new(self.topics.requests(flow), key, payload);
        self.producer.send(&message).await.expect("publish");
    }

    pub async fn publish(&self, flow: Flow, key: i64, value: &Value) {
        self.publish_raw(flow, &key.to_string(), serde_json::to_vec(value).unwrap())
            .await;
    }

    /// Publishes many requests concurrently.
    pub async fn publish_all(&self, flow: Flow, requests: &[(i64, Value)]) {
        let messages = self.request_messages(flow, requests);
        for chunk in messages.chunks(5_000) {
            self.producer.send_all(chunk).await.expect("publish batch");
        }
    }

    fn request_messages(&self, flow: Flow, requests: &[(i64, Value)]) -> Vec<OutMessage> {
        requests
            .iter()
            .map(|(key, v)| {
                OutMessage::new(
                    self.topics.requests(flow),
                    key.to_string(),
                    serde_json::to_vec(v).unwrap(),
                )
            })
            .collect()
    }

    /// A reader of a topic from its beginning.
    pub fn reader(&self, topic: &str) -> TopicReader {
        let mut config = stampede::kafka::client_config(&self.settings.kafka);
        config
            .set("group.id", format!("{}.test-reader", self.tag))
            .set("enable.auto.commit", "false");
        let consumer: StreamConsumer = config.create().expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.settings.kafka.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        TopicReader { consumer }
    }

    pub fn results(&self, flow: Flow) -> TopicReader {
        self.reader(&self.topics.results(flow))
    }

    pub fn dlq(&self, flow: Flow) -> TopicReader {
        self.reader(&Topics::dlq_of(&self.topics.requests(flow)))
    }

    /// Reads results until every id in `ids` has at least one; returns every
    /// result seen per request id.
    pub async fn wait_results(
        &self,
        flow: Flow,
        ids: &HashSet<String>,
    ) -> HashMap<String, Vec<Value>> {
        let mut reader = self.results(flow);
        let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
        let deadline = Instant::now() + PATIENCE;
        while !ids.iter().all(|id| seen.contains_key(id)) {
            let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
            let m = reader.next_before(deadline).await.unwrap_or_else(|| {
                panic!(
                    "{missing} of {} results missing after {PATIENCE:?}",
                    ids.len()
                )
            });
            let v: Value = serde_json::from_slice(&m.payload).expect("results are JSON");
            seen.entry(v["request_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(v);
        }
        seen
    }

    /// One result, by request id.
    pub async fn result_of(&self, flow: Flow, request_id: &str) -> Value {
        let ids = HashSet::from([request_id.to_owned()]);
        self.wait_results(flow, &ids)
            .await
            .remove(request_id)
            .unwrap()
            .remove(0)
    }

    pub async fn balance(&self, user_id: i64) -> Option<i64> {
        store::users::balance(&self.db, user_id).await.unwrap()
    }

    /// Deletes every Redis key of this test, as if Redis had restarted empty.
    pub async fn wipe_redis(&self) {
        delete_keys(&self.counters, &self.tag)
            .await
            .expect("delete the test's Redis keys");
    }

    pub async fn audit(&self) -> stampede::audit::AuditReport {
        stampede::audit::audit(&self.db, &self.counters, Some(&self.settings))
            .await
            .expect("audit runs")
    }

    /// Drops the test database.
    pub async fn cleanup(mut self) {
        self.db.close().await;
        remove_world(&self.tag, &self.settings).await;
        self.cleaned = true;
    }
}

impl Drop for TestEnv {
    /// A test that failed (or returned early) leaves nothing behind either:
    /// the same removal, on a thread of its own (this one may be inside the
    /// test's runtime).
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (tag, settings) = (self.tag.clone(), self.settings.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove_world(&tag, &settings));
            }
        })
        .join();
    }
}

/// Deletes every Redis key of test `tag`.
async fn delete_keys(counters: &Counters, tag: &str) -> redis::RedisResult<()> {
    let mut conn = counters.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{tag}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    }
    Ok(())
}

/// Drops the database, deletes the Redis keys and the topics of test `tag`.
async fn remove_world(tag: &str, settings: &Settings) {
    if let Ok(admin) = PgPool::connect(&format!(
        "{}/postgres",
        env_or(
            "STAMPEDE_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432"
        )
    ))
    .await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{tag}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    if let Ok(counters) = Counters::connect(&settings.redis).await {
        let _ = delete_keys(&counters, tag).await;
    }
    let _ = stampede::kafka::admin::delete_topics(&settings.kafka).await;
}

/// A running in-process stampede; stopped (and waited for) on `stop`.
pub struct App {
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
}

impl App {
    pub fn http(&self) -> String {
        format!(
            "http://{}",
            self.running
                .as_ref()
                .unwrap()
                .http_addr
                .expect("gateway runs")
        )
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(PATIENCE, running.wait())
                .await
                .expect("stops in time")
                .expect("stops cleanly");
        }
    }
}

pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    /// SIGKILL: no chance to commit or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for worker")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
}

pub struct TopicReader {
    consumer: StreamConsumer,
}

impl TopicReader {
    /// The next record, or `None` once `deadline` passes.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<Record> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(remaining, self.consumer.stream().next())
            .await
            .ok()??
            .expect("consume");
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Record {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
            partition: m.partition(),
        })
    }

    /// Waits until `n` records have come (fails the test, saying `what`, if they do not).
    pub async fn wait_for(&mut self, n: usize, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        for seen in 0..n {
            assert!(
                self.next_before(deadline).await.is_some(),
                "{what}: only {seen} of {n} records came"
            );
        }
    }

    /// Exactly `n` records (fails the test if they do not come).
    pub async fn take(&mut self, n: usize) -> Vec<Record> {
        let deadline = Instant::now() + PATIENCE;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                self.next_before(deadline)
                    .await
                    .unwrap_or_else(|| panic!("only {} of {n} records arrived", out.len())),
            );
        }
        out
    }
}

pub fn ids(values: impl IntoIterator<Item = String>) -> HashSet<String> {
    values.into_iter().collect()
}
