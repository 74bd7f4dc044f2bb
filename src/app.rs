//! Starts the parts of stampede a process runs — the gateway, workers, or
//! both — on shared connections, and stops them together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Settings;
use crate::counters::{CounterError, Counters};
use crate::gateway::{self, AppState, Shared, Waiters};
use crate::kafka::consumer::{run_batches, ConsumerOptions};
use crate::kafka::{Flow, Joined, Producer, Topics};
use crate::reconcile;
use crate::store::{self, StoreError};
use crate::telemetry::metrics;
use crate::workers::charge::ChargeLogic;
use crate::workers::coupon::CouponLogic;
use crate::workers::fairness::GroupFrontiers;
use crate::workers::order::OrderLogic;
use crate::workers::pipeline::RequestPipeline;
use crate::workers::stats::StatsConsumer;
use crate::workers::{counter_watch, outbox, retention, WorkerKind};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot reach PostgreSQL")]
    Store(#[from] StoreError),
    #[error("cannot reach Redis")]
    Redis(#[from] CounterError),
    #[error("cannot create a Kafka client")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot listen on {addr} ({setting})")]
    Listen {
        setting: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A part that was running (gateway, a worker, the metrics server)
    /// failed; the chain says which and why.
    #[error(transparent)]
    Task(anyhow::Error),
}

/// What one process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    pub gateway: bool,
    pub workers: Vec<WorkerKind>,
}

impl Roles {
    pub fn everything() -> Self {
        Self {
            gateway: true,
            workers: WorkerKind::ALL.to_vec(),
        }
    }

    pub fn gateway_only() -> Self {
        Self {
            gateway: true,
            workers: Vec::new(),
        }
    }

    pub fn workers(workers: Vec<WorkerKind>) -> Self {
        Self {
            gateway: false,
            workers,
        }
    }
}

/// A started process: its addresses, and its tasks to wait for.
pub struct Running {
    /// The gateway's address, when it runs.
    pub http_addr: Option<SocketAddr>,
    /// The worker's `/metrics` address, when it runs without the gateway.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Asks every part to stop (the same as cancelling the token given to [`run`]).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every part has stopped. If one fails, the others are stopped too.
    pub async fn wait(mut self) -> Result<(), AppError> {
        let mut failure = None;
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined
                .map_err(|e| anyhow::Error::new(e).context("a task of stampede panicked"))
                .and_then(|r| r);
            if let Err(e) = outcome {
                error!(
                    error = format!("{e:#}"),
                    "a part of stampede failed; stopping the rest"
                );
                self.shutdown.cancel();
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), |e| Err(AppError::Task(e)))
    }
}

/// Starts what `roles` asks for and returns once it is serving.
pub async fn run(
    settings: Settings,
    roles: Roles,
    shutdown: CancellationToken,
) -> Result<Running, AppError> {
    metrics::install();
    let settings = Arc::new(settings);
    let parts = Parts {
        db: store::connect(&settings.database).await?,
        counters: Counters::connect(&settings.redis).await?,
        producers: Producers::new(&settings, &roles)?,
        topics: Topics::new(settings.kafka.topic_prefix.clone()),
        settings,
    };
    let consumers: Vec<(String, Joined)> = roles
        .workers
        .iter()
        .map(|k| (k.name().to_owned(), Joined::default()))
        .collect();
    let state = parts.app_state(consumers.clone());
    let mut tasks = JoinSet::new();
    if roles
        .workers
        .iter()
        .any(|k| matches!(k, WorkerKind::Coupon | WorkerKind::Order))
    {
        load_missing_counters(&parts).await?;
        let watch = counter_watch::run(
            parts.db.clone(),
            parts.counters.clone(),
            std::time::Duration::from_millis(parts.settings.redis.watch_interval_ms),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            watch.await;
            Ok(())
        });
    }
    let (http_addr, metrics_addr) = serve_http(&roles, state, &shutdown, &mut tasks).await?;
    for (kind, (_, joined)) in roles.workers.iter().zip(&consumers) {
        parts.spawn_worker(*kind, joined.clone(), &shutdown, &mut tasks);
    }
    if roles.workers.iter().any(|k| *k != WorkerKind::Stats) {
        let sweeper = retention::run_sweeper(
            parts.settings.worker.clone(),
            parts.db.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            sweeper.await;
            Ok(())
        });
    }
    // At shutdown, what the producers still hold goes out.
    let token = shutdown.clone();
    let flushers: Vec<Producer> = std::iter::once(parts.producers.main.clone())
        .chain(parts.producers.gateway.clone())
        .collect();
    tasks.spawn(async move {
        token.cancelled().await;
        let _ = tokio::task::spawn_blocking(move || {
            for flusher in flushers {
                let _ = flusher.flush(std::time::Duration::from_secs(10));
            }
        })
        .await;
        Ok(())
    });
    Ok(Running {
        http_addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

/// What every part of a process shares.
struct Parts {
    settings: Arc<Settings>,
    db: sqlx::PgPool,
    counters: Counters,
    producers: Producers,
    topics: Topics,
}

/// A process's producers: one, unless the gateway runs beside workers and
/// lingers (`gateway.linger_ms`) other than their producer does.
struct Producers {
    /// The workers' (results, dead letters), and the gateway's when it has
    /// no producer of its own; lingering `gateway.linger_ms` in a process
    /// that runs only the gateway.
    main: Producer,
    /// The gateway's own, beside workers.
    gateway: Option<Producer>,
}

impl Producers {
    fn new(settings: &Settings, roles: &Roles) -> Result<Self, rdkafka::error::KafkaError> {
        let (kafka, linger) = (&settings.kafka, settings.gateway.linger_ms);
        if roles.gateway && roles.workers.is_empty() {
            return Ok(Self {
                main: Producer::lingering(kafka, linger)?,
                gateway: None,
            });
        }
        Ok(Self {
            main: Producer::new(kafka)?,
            gateway: (roles.gateway && linger != Producer::WORKER_LINGER_MS)
                .then(|| Producer::lingering(kafka, linger))
                .transpose()?,
        })
    }

    /// What the gateway publishes requests with.
    fn for_gateway(&self) -> &Producer {
        self.gateway.as_ref().unwrap_or(&self.main)
    }
}

impl Parts {
    fn app_state(&self, consumers: Vec<(String, Joined)>) -> AppState {
        let settings = &self.settings;
        AppState::new(Shared {
            line: Default::default(),
            settings: settings.clone(),
            db: self.db.clone(),
            counters: self.counters.clone(),
            claims: crate::gateway::idempotency::Claims::start(
                self.counters.clone(),
                settings.gateway.idempotency_ttl_secs,
                std::time::Duration::from_millis(settings.redis.response_timeout_ms),
            ),
            producer: self.producers.for_gateway().clone(),
            topics: self.topics.clone(),
            waiters: Waiters::default(),
            consumers,
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.gateway.max_in_flight)),
            limits: Arc::new(crate::gateway::limits::Limiters::new(
                &settings.gateway.limits,
            )),
        })
    }

    /// How worker `kind` consumes.
    fn consumer_options(&self, kind: WorkerKind, joined: Joined) -> ConsumerOptions {
        let group = format!("{}.{}", self.settings.kafka.group_id, kind.name());
        let wait = self.settings.worker.fcfs_wait_ms;
        ConsumerOptions {
            joined,
            worker: kind.name().to_owned(),
            topics: vec![match kind {
                WorkerKind::Charge => self.topics.requests(Flow::Charge),
                WorkerKind::Coupon => self.topics.requests(Flow::Coupon),
                WorkerKind::Order => self.topics.requests(Flow::Order),
                WorkerKind::Stats => self.topics.stats(),
            }],
            // Statistics events carry no race to be fair in; balance charges
            // take nothing anyone else could have had.
            fcfs_wait: match kind {
                WorkerKind::Stats => std::time::Duration::ZERO,
                _ => std::time::Duration::from_millis(wait),
            },
            frontiers: match kind {
                WorkerKind::Coupon | WorkerKind::Order if wait > 0 => Some(Arc::new(
                    GroupFrontiers::new(self.counters.clone(), group.clone()),
                )
                    as Arc<dyn crate::kafka::merge::Frontiers>),
                _ => None,
            },
            group_id: group,
        }
    }

    /// What worker `kind` does with a batch.
    fn handler(&self, kind: WorkerKind) -> Box<dyn crate::kafka::BatchHandler> {
        let (db, counters) = (self.db.clone(), self.counters.clone());
        let max_bytes = self.settings.kafka.max_message_bytes;
        let topics = self.topics.clone();
        match kind {
            WorkerKind::Charge => Box::new(RequestPipeline::new(
                ChargeLogic {
                    db: db.clone(),
                    limits: self.settings.charge_limits(),
                },
                db,
                topics,
                max_bytes,
            )),
            WorkerKind::Coupon => Box::new(RequestPipeline::new(
                CouponLogic::new(db.clone(), counters),
                db,
                topics,
                max_bytes,
            )),
            WorkerKind::Order => Box::new(RequestPipeline::new(
                OrderLogic {
                    db: db.clone(),
                    counters,
                },
                db,
                topics,
                max_bytes,
            )),
            WorkerKind::Stats => Box::new(StatsConsumer { db }),
        }
    }

    /// Starts worker `kind` (and, for orders, the outbox relay).
    fn spawn_worker(
        &self,
        kind: WorkerKind,
        joined: Joined,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<anyhow::Result<()>>,
    ) {
        if kind == WorkerKind::Order {
            let relay =
                outbox::run_relay((*self.settings).clone(), self.db.clone(), shutdown.clone());
            tasks.spawn(async move {
                relay.await;
                Ok(())
            });
        }
        let options = self.consumer_options(kind, joined);
        let handler = self.handler(kind);
        let settings = self.settings.clone();
        let producer = self.producers.main.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            Ok(run_batches(&settings, options, handler.as_ref(), &producer, token).await?)
        });
    }
}

/// Loads the counters Redis is missing from PostgreSQL before any worker
/// decides.
async fn load_missing_counters(parts: &Parts) -> Result<(), AppError> {
    let report = reconcile::reconcile_all(&parts.db, &parts.counters, false)
        .await
        .map_err(|e| {
            AppError::Task(anyhow::Error::new(e).context("loading counters from PostgreSQL failed"))
        })?;
    info!(
        coupons = report.coupons.iter().filter(|c| c.loaded).count(),
        products = report.products_written,
        "counters missing from Redis loaded from PostgreSQL"
    );
    Ok(())
}

/// The gateway, or a workers-only process's `/metrics` server when one is
/// configured. Returns their addresses.
async fn serve_http(
    roles: &Roles,
    state: AppState,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), AppError> {
    if roles.gateway {
        let listen = state.settings.gateway.listen;
        let (addr, handle) = gateway::serve(state, shutdown.clone())
            .await
            .map_err(|source| AppError::Listen {
                setting: "gateway.listen",
                addr: listen,
                source,
            })?;
        tasks.spawn(async move {
            handle
                .await
                .context("the gateway panicked")?
                .context("gateway")
        });
        return Ok((Some(addr), None));
    }
    let Some(addr) = state.settings.worker.metrics_addr else {
        return Ok((None, None));
    };
    let cannot = |source| AppError::Listen {
        setting: "worker.metrics_addr",
        addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    let app = gateway::ops_router(state);
    let token = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
            .context("metrics server")
    });
    Ok((None, Some(local)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_has_a_producer_of_its_own_only_beside_workers_and_lingering_otherwise() {
        let mut settings = Settings::default();
        let own = |settings: &Settings, roles: Roles| {
            Producers::new(settings, &roles)
                .expect("producers")
                .gateway
                .is_some()
        };
        assert!(
            !own(&settings, Roles::everything()),
            "the same linger: one producer"
        );
        assert!(!own(&settings, Roles::gateway_only()));
        assert!(!own(&settings, Roles::workers(WorkerKind::ALL.to_vec())));
        settings.gateway.linger_ms = 10;
        assert!(own(&settings, Roles::everything()));
        assert!(
            !own(&settings, Roles::gateway_only()),
            "its only producer lingers 10 ms"
        );
        assert!(!own(&settings, Roles::workers(WorkerKind::ALL.to_vec())));
    }
}
