//! Typed settings: built-in defaults, then an optional TOML file (`--config`),
//! then `STAMPEDE_*` environment variables (`__` separates nested keys, e.g.
//! `STAMPEDE_KAFKA__BROKERS`). Validated once at start with messages a person
//! can act on; secrets never appear in logs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::domain::charge::ChargeLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read settings")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid settings:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// A value that must never be logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A connection URL whose password is hidden when printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Url(pub String);

impl Url {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The top-level sections of [`Settings`].
const SECTIONS: [&str; 7] = [
    "kafka", "database", "redis", "gateway", "worker", "rules", "log",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub gateway: GatewaySettings,
    pub worker: WorkerSettings,
    pub rules: RuleSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Prepended to every topic name (isolates environments and tests).
    pub topic_prefix: String,
    /// Partitions of each request/result topic `topics create` makes.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group of the workers; each flow appends its own suffix.
    pub group_id: String,
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// Longest a worker may spend on one batch (retries included) before the
    /// group gives its partitions to another worker.
    pub max_poll_interval_ms: u32,
    /// How long a produce may take before it counts as failed.
    pub delivery_timeout_ms: u32,
    /// Largest request message a worker accepts; larger ones go to the DLQ.
    pub max_message_bytes: usize,
    /// Extra librdkafka properties, applied to every client (e.g. security).
    pub client: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Url,
    pub max_connections: u32,
    /// Create the database named in `url` when it does not exist (`migrate`).
    pub create_if_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Url,
    /// Prefix of every key stampede writes.
    pub key_prefix: String,
    /// Talk to a Redis Cluster; `url` may then list several nodes, comma-separated.
    pub cluster: bool,
    /// How long a command may wait for its answer before it fails (and the
    /// work is retried, or the gateway answers 503).
    pub response_timeout_ms: u64,
    /// How often a coupon or order worker asks which Redis server answers,
    /// so counters of a Redis restarted, restored from a snapshot or failed
    /// over are reloaded from PostgreSQL even while no request arrives.
    pub watch_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    /// Keys that may call `/v1/*` except `/v1/admin/*`. Empty with no admin
    /// keys either: the gateway is open.
    pub client_keys: Vec<Secret>,
    /// Keys that may call everything, `/v1/admin/*` included.
    pub admin_keys: Vec<Secret>,
    /// Upper bound of `wait_ms` on `GET /v1/requests/{id}`.
    pub max_wait_ms: u64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_secs: u64,
    /// Write requests (POSTs to publish) handled at once; beyond it the
    /// gateway answers 503 `overloaded` at once instead of queueing, so its
    /// memory stays flat however hard it is pushed.
    pub max_in_flight: usize,
    /// How long the gateway's producer gathers accepted requests into one
    /// batch per partition before sending it (librdkafka's `linger.ms`).
    /// Longer: fewer, larger produce requests, so less broker CPU per
    /// request from many connections; but each 202 waits up to that much
    /// longer, which caps a client that sends on few connections.
    pub linger_ms: u32,
    /// Token buckets per user and per client address, per flow.
    pub limits: GatewayLimits,
    /// How long a client may take to send a request's headers (HTTP/1.1),
    /// counted from its first byte; then the connection is closed.
    pub header_timeout_ms: u64,
    /// How long a client may take to send a whole request body; then the
    /// request is answered 408 and the connection closed.
    pub body_timeout_ms: u64,
}

/// Rate limits of the write endpoints, per flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayLimits {
    pub charge: FlowLimit,
    pub coupon: FlowLimit,
    pub order: FlowLimit,
}

/// Requests a second (fractions allowed) and bucket size, per user and per
/// client address; a rate of 0 is no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowLimit {
    pub user_per_sec: f64,
    pub user_burst: u32,
    pub client_per_sec: f64,
    pub client_burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Most messages handled as one micro-batch.
    pub batch_size: usize,
    /// First retry delay after a broker, database or Redis failure.
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Stats-outbox relay: rows published per round.
    pub outbox_batch: i64,
    /// Where a worker process serves `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: Option<SocketAddr>,
    /// How long stored results (the answers to redeliveries) and published
    /// outbox rows are kept. Longer than the request topics' retention, so a
    /// request still readable on a topic always finds its stored answer.
    pub retention_hours: u64,
    /// How often a worker process deletes what is past `retention_hours`.
    pub retention_sweep_secs: u64,
    /// First come, first served across partitions: how long a request
    /// waits for a partition that was delivering a moment ago and may still
    /// bring an earlier one (0: decide what has arrived, in acceptance order).
    pub fcfs_wait_ms: u64,
    /// Most messages a worker holds while merging partitions in acceptance
    /// order; past it the earliest are decided whatever may still come.
    pub fcfs_buffer: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSettings {
    pub min_charge: i64,
    pub max_balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info,stampede=debug`. `RUST_LOG` wins when set.
    pub filter: String,
    /// OpenTelemetry collector (OTLP over HTTP, protobuf), e.g.
    /// `http://127.0.0.1:4318`; spans go to `<endpoint>/v1/traces`. Unset:
    /// no spans are exported (trace context is still carried in headers).
    pub otlp_endpoint: Option<Url>,
    /// Share of new traces exported (0.0–1.0); a caller's sampled flag wins.
    pub otlp_sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 8,
            replication_factor: 1,
            group_id: "stampede".into(),
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            max_poll_interval_ms: 300_000,
            delivery_timeout_ms: 30_000,
            max_message_bytes: 64 * 1024,
            client: BTreeMap::new(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Url("postgres://postgres@127.0.0.1:5432/stampede".into()),
            max_connections: 16,
            create_if_missing: true,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: Url("redis://127.0.0.1:6379".into()),
            key_prefix: "stampede".into(),
            cluster: false,
            response_timeout_ms: 500,
            watch_interval_ms: 1_000,
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            client_keys: Vec::new(),
            admin_keys: Vec::new(),
            max_wait_ms: 30_000,
            idempotency_ttl_secs: 24 * 3600,
            max_in_flight: 4_096,
            linger_ms: 2,
            limits: GatewayLimits::default(),
            header_timeout_ms: 30_000,
            body_timeout_ms: 30_000,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            outbox_batch: 1_000,
            metrics_addr: None,
            retention_hours: 24 * 7,
            retention_sweep_secs: 600,
            fcfs_wait_ms: 25,
            fcfs_buffer: 20_000,
        }
    }
}

impl Default for RuleSettings {
    fn default() -> Self {
        let limits = ChargeLimits::default();
        Self {
            min_charge: limits.min_charge,
            max_balance: limits.max_balance,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
            otlp_endpoint: None,
            otlp_sample_ratio: 1.0,
            service_name: "stampede".into(),
        }
    }
}

impl Settings {
    /// Defaults → `file` (if given) → `STAMPEDE_*` environment, then validated.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(vec![format!(
                    "config file {} does not exist",
                    file.display()
                )]));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only variables of a settings section are settings: STAMPEDE_CONFIG
        // and the scripts' own STAMPEDE_* variables are not.
        figment = figment.merge(Env::prefixed("STAMPEDE_").split("__").filter(|key| {
            let key = key.as_str();
            let section = key
                .split("__")
                .next()
                .unwrap_or(key)
                .split('.')
                .next()
                .unwrap_or(key);
            SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
        }));
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every problem at once, so a person can fix them in one go.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        self.check_kafka(&mut problems);
        self.check_stores(&mut problems);
        self.check_rules(&mut problems);
        self.check_worker(&mut problems);
        self.check_gateway(&mut problems);
        self.check_log(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The broker, topics and consumer group.
    fn check_kafka(&self, problems: &mut Vec<String>) {
        for broker in self.kafka.brokers.split(',') {
            let broker = broker.trim();
            let ok = broker.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                problems.push(format!(
                    "kafka.brokers: {broker:?} is not host:port (e.g. 127.0.0.1:9092)"
                ));
            }
        }
        if !self
            .kafka
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            problems.push(format!(
                "kafka.topic_prefix: {:?} may only use A-Z a-z 0-9 . _ -",
                self.kafka.topic_prefix
            ));
        }
        if !(1..=10_000).contains(&self.kafka.partitions) {
            problems.push(format!(
                "kafka.partitions must be 1 to 10000, got {}",
                self.kafka.partitions
            ));
        }
        if self.kafka.replication_factor < 1 {
            problems.push("kafka.replication_factor must be at least 1".into());
        }
        if self.kafka.group_id.is_empty() {
            problems.push("kafka.group_id must not be empty".into());
        }
        if self.kafka.max_poll_interval_ms < self.kafka.session_timeout_ms {
            problems.push(format!(
                "kafka.max_poll_interval_ms ({}) must be at least kafka.session_timeout_ms ({})",
                self.kafka.max_poll_interval_ms, self.kafka.session_timeout_ms
            ));
        }
        if self.kafka.heartbeat_interval_ms >= self.kafka.session_timeout_ms {
            problems.push(format!(
                "kafka.heartbeat_interval_ms ({}) must be below kafka.session_timeout_ms ({})",
                self.kafka.heartbeat_interval_ms, self.kafka.session_timeout_ms
            ));
        }
        if self.kafka.max_message_bytes < 1024 {
            problems.push("kafka.max_message_bytes must be at least 1024".into());
        }
    }

    /// PostgreSQL and Redis addresses and pools.
    fn check_stores(&self, problems: &mut Vec<String>) {
        let db = self.database.url.as_str();
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            problems.push(format!(
                "database.url must be a postgres:// URL, got {:?}",
                redact_url(db)
            ));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections must be at least 1".into());
        }
        for url in self.redis.url.as_str().split(',') {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems.push(format!(
                    "redis.url must be redis:// URLs, got {:?}",
                    redact_url(url)
                ));
            }
        }
    }

    /// The business rules.
    fn check_rules(&self, problems: &mut Vec<String>) {
        if self.rules.min_charge < 1 {
            problems.push(format!(
                "rules.min_charge must be at least 1 KRW, got {}",
                self.rules.min_charge
            ));
        }
        if self.rules.min_charge > self.rules.max_balance {
            problems.push(format!(
                "rules.min_charge ({}) is above rules.max_balance ({}): no charge could ever succeed",
                self.rules.min_charge, self.rules.max_balance
            ));
        }
    }

    /// Batches, fairness, retries and retention.
    fn check_worker(&self, problems: &mut Vec<String>) {
        if !(1..=50_000).contains(&self.worker.batch_size) {
            problems.push(format!(
                "worker.batch_size must be 1 to 50000, got {}",
                self.worker.batch_size
            ));
        }
        if self.worker.fcfs_wait_ms > 10_000 {
            problems.push(format!(
                "worker.fcfs_wait_ms must be at most 10000, got {}",
                self.worker.fcfs_wait_ms
            ));
        }
        if self.worker.fcfs_buffer < self.worker.batch_size || self.worker.fcfs_buffer > 1_000_000 {
            problems.push(format!(
                "worker.fcfs_buffer must be at least worker.batch_size ({}) and at most 1000000, got {}",
                self.worker.batch_size, self.worker.fcfs_buffer
            ));
        }
        if self.worker.retry_initial_ms == 0
            || self.worker.retry_initial_ms > self.worker.retry_max_ms
        {
            problems.push(
                "worker.retry_initial_ms must be positive and at most worker.retry_max_ms".into(),
            );
        }
        if self.worker.retention_hours == 0 || self.worker.retention_sweep_secs == 0 {
            problems.push(
                "worker.retention_hours and worker.retention_sweep_secs must be positive".into(),
            );
        }
    }

    /// Rate limits, bodies, waits, keys, Redis timeouts and load shedding.
    fn check_gateway(&self, problems: &mut Vec<String>) {
        for (flow, limit) in [
            ("charge", &self.gateway.limits.charge),
            ("coupon", &self.gateway.limits.coupon),
            ("order", &self.gateway.limits.order),
        ] {
            let valid = |rate: f64| rate.is_finite() && rate >= 0.0;
            if !(valid(limit.user_per_sec) && valid(limit.client_per_sec)) {
                problems.push(format!(
                    "gateway.limits.{flow}: user_per_sec and client_per_sec must be 0 (no limit) or positive"
                ));
            }
        }
        if self.gateway.body_limit_bytes < 256 {
            problems.push("gateway.body_limit_bytes must be at least 256".into());
        }
        if self.gateway.header_timeout_ms == 0 || self.gateway.body_timeout_ms == 0 {
            problems.push(
                "gateway.header_timeout_ms and gateway.body_timeout_ms must be at least 1".into(),
            );
        }
        if self.gateway.max_wait_ms > 30_000 {
            problems.push("gateway.max_wait_ms may be at most 30000".into());
        }
        if self
            .gateway
            .client_keys
            .iter()
            .chain(&self.gateway.admin_keys)
            .any(|k| k.0.len() < 16)
        {
            problems.push("gateway keys must be at least 16 characters long".into());
        }
        if self.redis.response_timeout_ms == 0 {
            problems.push("redis.response_timeout_ms must be at least 1".into());
        }
        if self.redis.watch_interval_ms == 0 {
            problems.push("redis.watch_interval_ms must be at least 1".into());
        }
        if self.gateway.max_in_flight == 0 {
            problems.push("gateway.max_in_flight must be at least 1".into());
        }
        if self.gateway.linger_ms > 1_000 {
            problems.push(format!(
                "gateway.linger_ms must be at most 1000, got {}",
                self.gateway.linger_ms
            ));
        }
    }

    /// Logs and span export.
    fn check_log(&self, problems: &mut Vec<String>) {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problems.push(format!(
                "log.format must be text or json, got {:?}",
                self.log.format
            ));
        }
        if let Some(endpoint) = &self.log.otlp_endpoint {
            let rest = endpoint.as_str().strip_prefix("http://");
            if rest.is_none_or(|host| host.trim_end_matches('/').is_empty()) {
                problems.push(format!(
                    "log.otlp_endpoint must be an http:// collector address (e.g. http://127.0.0.1:4318), got {:?}",
                    redact_url(endpoint.as_str())
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.log.otlp_sample_ratio) {
            problems.push(format!(
                "log.otlp_sample_ratio must be between 0.0 and 1.0, got {}",
                self.log.otlp_sample_ratio
            ));
        }
        if self.log.service_name.trim().is_empty() {
            problems.push("log.service_name must not be empty".into());
        }
    }

    pub fn charge_limits(&self) -> ChargeLimits {
        ChargeLimits {
            min_charge: self.rules.min_charge,
            max_balance: self.rules.max_balance,
        }
    }

    pub fn retry_initial(&self) -> Duration {
        Duration::from_millis(self.worker.retry_initial_ms)
    }

    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.worker.retry_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.rules.min_charge, 1_000);
        assert_eq!(s.rules.max_balance, 10_000_000);
        assert_eq!(s.kafka.partitions, 8);
        assert_eq!(s.gateway.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn problems_are_reported_together_and_readably() {
        let mut s = Settings::default();
        s.kafka.brokers = "localhost".into();
        s.rules.min_charge = 20_000_000;
        s.log.otlp_endpoint = Some(Url("grpc://collector:4317".into()));
        s.log.otlp_sample_ratio = 1.5;
        s.gateway.linger_ms = 5_000;
        let msg = s.validate().unwrap_err().to_string();
        assert!(
            msg.contains("gateway.linger_ms must be at most 1000, got 5000"),
            "{msg}"
        );
        assert!(msg.contains("kafka.brokers"), "{msg}");
        assert!(msg.contains("log.otlp_endpoint"), "{msg}");
        assert!(msg.contains("log.otlp_sample_ratio"), "{msg}");
        assert!(msg.contains("no charge could ever succeed"), "{msg}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let mut s = Settings::default();
        s.database.url = Url("postgres://app:hunter2@db:5432/x".into());
        s.gateway.admin_keys = vec![Secret("admin-key-0123456789".into())];
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("admin-key-0123456789"), "{shown}");
        assert!(shown.contains("postgres://app:***@db:5432/x"), "{shown}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "stampede.toml",
                "[kafka]\npartitions = 3\n[rules]\nmin_charge = 500\n",
            )?;
            jail.set_env("STAMPEDE_RULES__MIN_CHARGE", "700");
            jail.set_env("STAMPEDE_KAFKA__TOPIC_PREFIX", "staging.");
            jail.set_env("STAMPEDE_CONFIG", "stampede.toml");
            // A variable of the scripts, not a setting: ignored.
            jail.set_env("STAMPEDE_SERVICES_DIR", "/tmp/services");
            let s = Settings::load(Some(Path::new("stampede.toml"))).expect("valid");
            assert_eq!(s.kafka.partitions, 3);
            assert_eq!(s.rules.min_charge, 700);
            assert_eq!(s.kafka.topic_prefix, "staging.");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[kafka]\nbrokerz = \"x:1\"\n")?;
            let err = crate::telemetry::error_chain(
                &Settings::load(Some(Path::new("bad.toml"))).unwrap_err(),
            );
            assert!(err.contains("brokerz"), "{err}");
            jail.create_file("good.toml", "")?;
            jail.set_env("STAMPEDE_KAFKA__BROKERZ", "x:1");
            let err = crate::telemetry::error_chain(
                &Settings::load(Some(Path::new("good.toml"))).unwrap_err(),
            );
            assert!(err.contains("brokerz"), "{err}");
            Ok(())
        });
    }
}
