//! Scenarios: their data, their requests, and what must hold afterwards.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::report::Report;
use super::{LoadgenError, LoadgenOptions, Planned};
use crate::config::Settings;
use crate::counters::Counters;
use crate::domain::coupon::Discount;
use crate::domain::messages::CouponSpec;
use crate::kafka::consumer::{run_batches, ConsumerOptions};
use crate::kafka::handler::{BatchHandler, HandlerError};
use crate::kafka::turns::Turn;
use crate::kafka::Incoming;
use crate::kafka::{Flow, Joined, OutMessage, Producer, Topics};
use crate::reconcile;
use crate::seed::{self, Progress};
use crate::store::{coupons, orders, products, users};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One coupon, everybody at once.
    CouponDrop,
    /// Orders of 1–3 products.
    Orders,
    /// Balance charges.
    Charges,
    /// A third each of charges, coupon requests and orders.
    Mixed,
    /// No stampede at all: the same bytes consumed and produced straight
    /// back through the broker — the transport's own limit.
    Passthrough,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CouponDrop => "coupon-drop",
            Scenario::Orders => "orders",
            Scenario::Charges => "charges",
            Scenario::Mixed => "mixed",
            Scenario::Passthrough => "passthrough",
        }
    }
}

/// The data a run created.
pub struct Setup {
    pub first_user: i64,
    pub users: i64,
    pub coupon_id: Option<i64>,
    pub first_product: i64,
    pub products: i64,
    pub passthrough_in: Option<String>,
    pub passthrough_out: Option<String>,
}

pub async fn setup(
    db: &PgPool,
    counters: &Counters,
    settings: &Settings,
    o: &LoadgenOptions,
    run_id: &str,
) -> Result<Setup, Box<dyn std::error::Error + Send + Sync>> {
    let first_user = users::free_block(db, o.users as i64).await?;
    let balance = settings.rules.max_balance.min(10_000_000);
    seed::users(
        db,
        (first_user, o.users as i64),
        balance,
        &Progress::silent(),
    )
    .await?;
    let mut coupon_id = None;
    if matches!(
        o.scenario,
        Scenario::CouponDrop | Scenario::Mixed | Scenario::Passthrough
    ) {
        let id = coupons::free_id(db).await?;
        let spec = CouponSpec {
            name: format!("{run_id} drop"),
            discount: Discount::Fixed { amount: 1_000 },
            total_quantity: o.stock,
            expires_at: chrono::Utc::now() + chrono::Duration::days(7),
            shards: o.coupon_shards,
        };
        coupons::create(db, Some(id), &spec).await?;
        reconcile::load_coupon(db, counters, id, true).await?;
        coupon_id = Some(id);
    }
    let first_product = products::free_block(db, o.products as i64).await?;
    if matches!(o.scenario, Scenario::Orders | Scenario::Mixed) {
        seed::products(
            db,
            counters,
            (first_product, o.products as i64),
            (1_000, o.stock),
            &Progress::silent(),
        )
        .await?;
    }
    let (mut passthrough_in, mut passthrough_out) = (None, None);
    if o.scenario == Scenario::Passthrough {
        let topics = Topics::new(settings.kafka.topic_prefix.clone());
        let (input, output) = (
            topics.name(&format!("bench.{run_id}.in")),
            topics.name(&format!("bench.{run_id}.out")),
        );
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            crate::kafka::client_config(&settings.kafka).create()?;
        let specs = [input.as_str(), output.as_str()].map(|t| {
            rdkafka::admin::NewTopic::new(
                t,
                settings.kafka.partitions,
                rdkafka::admin::TopicReplication::Fixed(settings.kafka.replication_factor),
            )
        });
        admin
            .create_topics(&specs, &rdkafka::admin::AdminOptions::new())
            .await?;
        passthrough_in = Some(input);
        passthrough_out = Some(output);
    }
    Ok(Setup {
        first_user,
        users: o.users as i64,
        coupon_id,
        first_product,
        products: o.products as i64,
        passthrough_in,
        passthrough_out,
    })
}

pub fn plan(o: &LoadgenOptions, s: &Setup, run_id: &str) -> Vec<Planned> {
    (0..o.requests)
        .map(|i| {
            // Spread repeats: request i belongs to user i mod users (scrambled).
            let user = s.first_user + ((i as i64).wrapping_mul(7_919) % s.users).abs();
            let request_id = format!("{run_id}-{i}");
            let kind = match o.scenario {
                Scenario::Mixed => [Flow::Charge, Flow::Coupon, Flow::Order][i % 3],
                Scenario::Charges => Flow::Charge,
                Scenario::Orders => Flow::Order,
                Scenario::CouponDrop | Scenario::Passthrough => Flow::Coupon,
            };
            let body = match kind {
                Flow::Charge => json!({"request_id": request_id, "user_id": user, "amount": 1_000 + (i as i64 % 5) * 1_000}),
                Flow::Coupon => json!({"request_id": request_id, "user_id": user, "coupon_id": s.coupon_id.unwrap_or(1)}),
                Flow::Order => {
                    let n = 1 + i % 3;
                    let items: Vec<_> = (0..n).map(|k| json!({"product_id": s.first_product + ((i * 31 + k * 17) as i64 % s.products.max(1)), "quantity": 1 + (i + k) as i64 % 2})).collect();
                    let mut seen = HashSet::new();
                    let items: Vec<_> = items.into_iter().filter(|it| seen.insert(it["product_id"].as_i64())).collect();
                    json!({"request_id": request_id, "user_id": user, "items": items})
                }
            };
            Planned { flow: kind, user_id: user, request_id, body }
        })
        .collect()
}

/// Posts one request as a well-behaved client does: a 503 (gateway at its
/// in-flight limit, or broker away) is retried after a short pause with the
/// same `Idempotency-Key`, until `give_up`. Returns how often it was turned
/// away.
pub async fn post(
    gateway: &super::http::Gateway,
    p: &Planned,
    give_up: std::time::Instant,
) -> Result<u64, LoadgenError> {
    let (path, body) = match p.flow {
        Flow::Charge => (
            "/v1/charges".to_owned(),
            json!({"user_id": p.user_id, "amount": p.body["amount"]}),
        ),
        Flow::Coupon => (
            format!("/v1/coupons/{}/issue", p.body["coupon_id"]),
            json!({"user_id": p.user_id}),
        ),
        Flow::Order => (
            "/v1/orders".to_owned(),
            json!({"user_id": p.user_id, "items": p.body["items"]}),
        ),
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&body)?);
    let mut turned_away = 0;
    loop {
        match gateway.post(&path, &p.request_id, body.clone()).await? {
            http::StatusCode::ACCEPTED => return Ok(turned_away),
            http::StatusCode::SERVICE_UNAVAILABLE if std::time::Instant::now() < give_up => {
                turned_away += 1;
                let pause = 10 * turned_away.min(20) + rand::random_range(0..10);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            status => {
                return Err(LoadgenError::Http(format!("{path} answered {status}")));
            }
        }
    }
}

/// Deletes the passthrough's own two topics once it has run (they are the
/// run's alone; a leftover would hold its partitions in the broker).
pub async fn drop_passthrough_topics(settings: &Settings, s: &Setup) {
    let names: Vec<&str> = [&s.passthrough_in, &s.passthrough_out]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if let Err(e) = crate::kafka::admin::delete_named(&settings.kafka, &names).await {
        tracing::warn!(error = %crate::telemetry::error_chain(&e), "could not delete the passthrough topics");
    }
}

/// Copies every message of `input` to `output`: the broker's round trip.
struct Passthrough {
    output: std::sync::Arc<str>,
}

#[async_trait::async_trait]
impl BatchHandler for Passthrough {
    async fn handle(
        &self,
        batch: &[Incoming],
        _turn: Turn<'_>,
    ) -> Result<Vec<OutMessage>, HandlerError> {
        Ok(batch
            .iter()
            .map(|m| {
                OutMessage::new(
                    self.output.clone(),
                    m.key.clone().unwrap_or_default(),
                    m.payload.clone().unwrap_or_default(),
                )
            })
            .collect())
    }
}

pub struct PassthroughRunner {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    joined: Joined,
    /// Cancelled when the consumer's task ends, however it ends.
    ended: CancellationToken,
}

impl PassthroughRunner {
    /// Returns once the passthrough's consumer holds its partitions (a
    /// group join is not the transport's latency, so the clock starts
    /// after it); an error when it stopped or `within` passed first.
    pub async fn assigned(
        &self,
        within: std::time::Duration,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        tokio::select! {
            biased;
            () = self.joined.assigned() => Ok(()),
            () = self.ended.cancelled() => Err(
                "the passthrough's consumer stopped before it was assigned its partitions".into(),
            ),
            () = tokio::time::sleep(within) => Err(format!(
                "the passthrough's consumer was not assigned its partitions within {within:?}"
            )
            .into()),
        }
    }

    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

pub fn start_passthrough(
    settings: &Settings,
    input: &str,
    output: &str,
    producer: Producer,
) -> PassthroughRunner {
    let token = CancellationToken::new();
    let settings = settings.clone();
    let joined = Joined::default();
    let options = ConsumerOptions {
        worker: "passthrough".into(),
        group_id: format!("{}.passthrough", settings.kafka.group_id),
        topics: vec![input.to_owned()],
        joined: joined.clone(),
        // The baseline forwards what it reads, with no wait for fairness.
        fcfs_wait: std::time::Duration::ZERO,
        frontiers: None,
    };
    let handler = Passthrough {
        output: output.into(),
    };
    let cancel = token.clone();
    let ended = CancellationToken::new();
    let end = ended.clone().drop_guard();
    let task = tokio::spawn(async move {
        let _end = end;
        if let Err(e) = run_batches(&settings, options, &handler, &producer, cancel).await {
            tracing::error!(error = %crate::telemetry::error_chain(&e), "passthrough stopped");
        }
    });
    PassthroughRunner {
        token,
        task,
        joined,
        ended,
    }
}

/// The correctness verdict: scenario rules, then the full audit.
pub async fn verify(
    db: &PgPool,
    counters: &Counters,
    settings: &Settings,
    o: &LoadgenOptions,
    s: &Setup,
    results: &HashMap<String, (String, usize, bool)>,
    report: &mut Report,
) {
    let missing = o.requests.saturating_sub(results.len());
    report.check(
        "every request answered",
        missing == 0,
        format!("{missing} of {} requests without a result", o.requests),
    );
    let differing = results
        .values()
        .filter(|(_, _, identical)| !identical)
        .count();
    report.check(
        "one result per request",
        differing == 0,
        format!("{differing} requests with differing result contents"),
    );
    // The audit reads the stats topic; wait briefly for the relay to drain
    // first (an error here is a paused PostgreSQL: wait for it too).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(0) = orders::unpublished_count(db).await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A fault may still be under way when the last result arrives (the
    // chaos run pauses PostgreSQL): wait for the dependencies first.
    let audit =
        crate::audit::audit_when_reachable(db, counters, Some(settings), AUDIT_PATIENCE).await;
    if let (Some(coupon), Scenario::CouponDrop) = (s.coupon_id, o.scenario) {
        let won = results
            .values()
            .filter(|(outcome, _, _)| outcome == "succeeded")
            .count() as i64;
        let expected = o.stock.min(s.users.min(o.requests as i64));
        report.check(
            "issued = min(stock, users)",
            won == expected,
            format!("{won} issued, expected {expected}"),
        );
        let in_db = coupons::get(db, coupon)
            .await
            .ok()
            .flatten()
            .map_or(-1, |c| c.issued);
        report.check(
            "database agrees",
            in_db == won,
            format!("PostgreSQL says {in_db} issued, results say {won}"),
        );
    }
    match audit {
        Ok(audit) => {
            for c in audit.checks {
                report.check(c.name, c.passed, c.detail);
            }
        }
        Err(e) => report.not_run(
            "audit",
            format!(
                "audit could not run within {}s: {}",
                AUDIT_PATIENCE.as_secs(),
                crate::telemetry::error_chain(&e)
            ),
        ),
    }
}

/// How long the verdict waits for PostgreSQL, Redis and the brokers to
/// answer the audit.
const AUDIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
