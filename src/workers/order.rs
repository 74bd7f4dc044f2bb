//! The order worker: stock, coupon, payment, compensation, statistics.
//!
//! Per micro-batch, inside one PostgreSQL transaction: the users' rows and
//! the named coupon holdings are locked (ascending id) and read, with the
//! products' prices and stock, into an order book; each order is priced and
//! paid on it (the pure rules of [`crate::domain::order_batch`]); then one Lua
//! call per *round* reserves stock all-or-nothing for the orders that can pay
//! (`reserve`) and only checks it for the others (`check`, so `out_of_stock`
//! keeps its precedence and nothing is held). A user's k-th order of the
//! batch is in round k, so it sees the balance and coupon use of the user's
//! earlier orders. Paid orders, items, balances, history, coupon use, stock
//! and the stats event (outbox) commit together with every result.
//!
//! # Two batches in flight
//!
//! The products' rows, which every batch of a sale shares, are locked only
//! once the batch's Redis decisions are taken and the batch before it has
//! recorded ([`Turn::to_record`]): batch n+1 locks its users, reads its
//! products and reserves its stock while batch n's transaction writes. A user
//! in both waits on batch n's lock, and so sees its balance after it. With
//! the products locked, their stock must cover what the batch sold; if it
//! does not (Redis sold more than PostgreSQL has), or a product has to be
//! loaded into Redis first (which takes the products' locks), the attempt
//! is given up — its holds go back — and the batch is decided again with the
//! products locked from the start, after the batch before it has recorded.
//!
//! Crash safety matches the coupon flow: a hold is keyed by `request_id`, so a
//! redelivered order finds its own hold instead of taking stock twice; a
//! redelivery that is now rejected gives its old hold back; holds are deleted
//! once the order is durable; a replay answers from the stored result and
//! cleans up any hold a crash left. PostgreSQL's locked stock is checked too:
//! if Redis ever sold more than PostgreSQL has, the order is `out_of_stock`,
//! its hold released, and the product reloaded.

use foldhash::{HashMap, HashMapExt};
use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::pipeline::{stored, Decide, ResultMessage};
use super::WorkerError;
use crate::counters::{Counters, StockAnswer, StockRequest};
use crate::domain::messages::{OrderRequest, OrderResult};
use crate::domain::order_batch::{paid_order, rounds, Candidate, OrderBook, Stock, Verdict};
use crate::kafka::topics::ORDER_STATS;
use crate::kafka::turns::Turn;
use crate::kafka::Flow;
use crate::reconcile;
use crate::store::orders::{self, NewEvent, NewOrder};
use crate::store::processed::{self, NewResult};
use crate::store::users::{self, HistoryRow};
use crate::store::{products, StoreError};
use crate::telemetry::metrics;

pub struct OrderLogic {
    pub db: PgPool,
    pub counters: Counters,
}

/// What a batch's transaction writes for its paid orders and results.
#[derive(Default)]
struct Writes<'a> {
    orders: Vec<NewOrder>,
    history: Vec<HistoryRow>,
    balances: HashMap<i64, i64>,
    sold: HashMap<i64, i64>,
    events: Vec<NewEvent>,
    results: Vec<NewResult>,
    /// Requests whose holds become spent once the transaction commits.
    paid: Vec<&'a str>,
}

impl OrderLogic {
    /// Reserves a round; the requests whose stock this call took (not an
    /// earlier attempt's) are added to `fresh`.
    /// `batch` is the batch's transaction, which holds the products' locks.
    /// A round asked before the products are locked ([`Products::Late`])
    /// does not load missing products (that would take their locks out of
    /// turn): it returns `None`, and the batch is decided again.
    async fn reserve_round(
        &self,
        batch: &mut PgConnection,
        round: &[StockRequest],
        fresh: &mut Vec<String>,
        products: Products,
    ) -> Result<Option<Vec<StockAnswer>>, WorkerError> {
        for _ in 0..3 {
            let answers = self.counters.reserve_stock(round).await?;
            fresh.extend(
                round
                    .iter()
                    .zip(&answers)
                    .filter(|(_, answer)| matches!(answer, StockAnswer::Reserved))
                    .map(|(ask, _)| ask.request_id.clone()),
            );
            let missing: BTreeSet<i64> = answers
                .iter()
                .filter_map(|a| match a {
                    StockAnswer::NotLoaded { product_id } => Some(*product_id),
                    _ => None,
                })
                .collect();
            if missing.is_empty() {
                return Ok(Some(answers));
            }
            if products == Products::Late {
                return Ok(None);
            }
            // Orders of this round already reserved answer "reserved earlier" on the rerun.
            let ids: Vec<i64> = missing.into_iter().collect();
            reconcile::load_missing_products_in(batch, &self.counters, &ids).await?;
        }
        Err(WorkerError::NotLoaded(
            "products could not be loaded into Redis".into(),
        ))
    }

    /// Locks the users and coupon holdings the batch touches (and its
    /// products, when they are locked first) and reads them into its book.
    async fn open_book(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        requests: &[&OrderRequest],
        products: Products,
    ) -> Result<OrderBook, WorkerError> {
        let user_ids = sorted_unique(requests.iter().map(|r| r.user_id));
        let product_ids = sorted_unique(
            requests
                .iter()
                .flat_map(|r| r.items.iter().map(|i| i.product_id)),
        );
        let balances = users::lock_balances(tx, &user_ids).await?;
        let catalogue = match products {
            Products::First => products::lock(tx, &product_ids).await?,
            Products::Late => products::read(tx, &product_ids).await?,
        };
        let pairs: Vec<(i64, i64)> = requests
            .iter()
            .filter_map(|r| r.coupon_id.map(|c| (r.user_id, c)))
            .collect();
        let holdings = orders::holdings(tx, &pairs).await?;
        Ok(OrderBook::new(balances, catalogue, holdings, Utc::now()))
    }

    /// Decides a batch (see [`Decide::decide`]), locking its products
    /// `when` said. `fresh` collects the holds this attempt took;
    /// `committed` turns true once its transaction is. `None`: a [`Products::Late`] attempt given up, nothing
    /// of it durable.
    async fn decide_batch(
        &self,
        requests: &[&OrderRequest],
        traces: &[Option<&str>],
        (when, turn): (Products, Turn<'_>),
        fresh: &mut Vec<String>,
        committed: &mut bool,
    ) -> Result<Option<Vec<NewResult>>, WorkerError> {
        if when == Products::First {
            turn.previous_recorded().await;
        }
        // Before the batch's own locks: a reload takes the products' locks.
        reconcile::reload_if_redis_replaced(&self.db, &self.counters).await?;
        let now = Utc::now();
        let mut tx = self.db.begin().await.map_err(StoreError::from)?;
        let mut book = self.open_book(&mut tx, requests, when).await?;
        let mut verdicts: Vec<Option<Verdict>> = vec![None; requests.len()];
        let mut to_release: Vec<&str> = Vec::new();
        let mut drifted: BTreeSet<i64> = BTreeSet::new();
        for round in rounds(requests.iter().map(|r| r.user_id)) {
            let mut candidates = Vec::new();
            for i in round {
                match book.candidate(requests[i]) {
                    Ok(candidate) => candidates.push((i, candidate)),
                    Err(rejection) => verdicts[i] = Some(Verdict::Rejected(rejection)),
                }
            }
            let asks: Vec<StockRequest> = candidates
                .iter()
                .map(|(i, c)| StockRequest {
                    request_id: requests[*i].request_id.as_str().to_owned(),
                    reserve: c.reserves(),
                    items: c.items.iter().map(|i| (i.product_id, i.quantity)).collect(),
                })
                .collect();
            let Some(answers) = self.reserve_round(&mut tx, &asks, fresh, when).await? else {
                return Ok(None);
            };
            for ((i, candidate), answer) in candidates.into_iter().zip(answers) {
                let stock = stock_of(&candidate, answer)?;
                let settled = book.settle(requests[i], candidate, stock);
                if let Some(product_id) = settled.short {
                    drifted.insert(product_id);
                    to_release.push(requests[i].request_id.as_str());
                }
                verdicts[i] = Some(settled.verdict);
            }
        }
        // The decisions are taken: the next batch may take its own while
        // this one locks its products and writes.
        turn.to_record().await;
        let sold = units_sold(&verdicts);
        if when == Products::Late && !covered(&mut tx, &sold).await? {
            return Ok(None);
        }
        let writes = writes(&mut tx, requests, verdicts, sold, traces, now).await?;
        orders::insert(&mut tx, &writes.orders).await?;
        users::write_balances(&mut tx, &writes.balances, &writes.history).await?;
        products::decrement(&mut tx, &writes.sold).await?;
        orders::enqueue(&mut tx, ORDER_STATS, &writes.events).await?;
        processed::insert_all(&mut *tx, Flow::Order.kind(), &writes.results).await?;
        tx.commit().await.map_err(StoreError::from)?;
        *committed = true;

        self.counters.finish_holds(&writes.paid).await?;
        self.counters.release_stock(&to_release).await?;
        if !drifted.is_empty() {
            tracing::warn!(products = ?drifted, "Redis reserved what PostgreSQL does not have; reloading products");
            reconcile::load_products(&self.db, &self.counters, true).await?;
        }
        Ok(Some(writes.results))
    }

    /// One attempt at a batch; if it fails before its transaction commits,
    /// or is given up, the stock it took goes back.
    async fn attempt(
        &self,
        requests: &[&OrderRequest],
        traces: &[Option<&str>],
        products: Products,
        turn: Turn<'_>,
    ) -> Result<Option<Vec<NewResult>>, WorkerError> {
        let mut fresh = Vec::new();
        let mut committed = false;
        let outcome = self
            .decide_batch(
                requests,
                traces,
                (products, turn),
                &mut fresh,
                &mut committed,
            )
            .await;
        let given_up = matches!(outcome, Err(_) | Ok(None));
        if given_up && !committed && !fresh.is_empty() {
            // Nothing of this attempt is durable: the stock it took goes back.
            // (Holds of earlier attempts stay: their owner may commit them.)
            // Were it kept, a worker that lost the race for these requests to
            // another, which has committed and finished them, would leave
            // stock reserved for orders that are already paid.
            let ids: Vec<&str> = fresh.iter().map(String::as_str).collect();
            if let Err(e) = self.counters.release_stock(&ids).await {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), holds = ids.len(), "could not give back the holds of a failed batch; reconcile repairs them");
            }
        }
        outcome
    }
}

/// When a batch locks its products' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Products {
    /// Once its Redis decisions are taken and the batch before has recorded.
    Late,
    /// First, with its users, once the batch before has recorded; the next
    /// batch decides only after this one's Redis decisions.
    First,
}

/// Units of each product the paid orders among `verdicts` bought.
fn units_sold(verdicts: &[Option<Verdict>]) -> HashMap<i64, i64> {
    let mut sold: HashMap<i64, i64> = HashMap::new();
    for verdict in verdicts.iter().flatten() {
        if let Verdict::Paid { items, .. } = verdict {
            for item in items {
                *sold.entry(item.product_id).or_default() += item.quantity;
            }
        }
    }
    sold
}

/// Locks the products `sold` names; whether their stock covers it.
async fn covered(
    tx: &mut Transaction<'static, Postgres>,
    sold: &HashMap<i64, i64>,
) -> Result<bool, WorkerError> {
    let ids = sorted_unique(sold.keys().copied());
    let stock = products::lock(tx, &ids).await?;
    Ok(sold
        .iter()
        .all(|(id, quantity)| stock.get(id).is_some_and(|(_, left)| left >= quantity)))
}

/// What Redis's answer means for a candidate. An order that can pay must
/// have been reserved (or found out of stock); one that cannot, checked.
fn stock_of(candidate: &Candidate, answer: StockAnswer) -> Result<Stock, WorkerError> {
    match answer {
        StockAnswer::OutOfStock { product_id } => Ok(Stock::OutOfStock { product_id }),
        StockAnswer::Reserved | StockAnswer::ReservedEarlier if candidate.reserves() => {
            Ok(Stock::Available)
        }
        StockAnswer::CheckPassed if !candidate.reserves() => Ok(Stock::Available),
        answer => Err(WorkerError::Invariant(format!(
            "stock answer {answer:?} for an order that {}",
            if candidate.reserves() {
                "reserves"
            } else {
                "only checks"
            }
        ))),
    }
}

/// The rows a batch's verdicts write, with the ids its paid orders take;
/// `sold` is what they bought ([`units_sold`]).
async fn writes<'a>(
    tx: &mut Transaction<'static, Postgres>,
    requests: &[&'a OrderRequest],
    verdicts: Vec<Option<Verdict>>,
    sold: HashMap<i64, i64>,
    traces: &[Option<&str>],
    now: chrono::DateTime<Utc>,
) -> Result<Writes<'a>, WorkerError> {
    let paid_count = verdicts
        .iter()
        .filter(|v| matches!(v, Some(Verdict::Paid { .. })))
        .count();
    let mut order_ids = orders::next_ids(tx, paid_count).await?.into_iter();
    let mut w = Writes {
        sold,
        ..Writes::default()
    };
    for ((r, verdict), trace) in requests.iter().zip(verdicts).zip(traces) {
        let verdict = verdict.ok_or_else(|| {
            WorkerError::Invariant(format!("order {} was not decided", r.request_id.as_str()))
        })?;
        let (payment, items) = match verdict {
            Verdict::Rejected(rejection) => {
                let code = rejection.code;
                let result =
                    OrderResult::rejected(r.request_id.clone(), Some(r.user_id), rejection);
                w.results
                    .push(stored(&r.request_id, r.user_id, Some(code), &result)?);
                continue;
            }
            Verdict::Paid { payment, items } => (payment, items),
        };
        let order_id = order_ids
            .next()
            .ok_or_else(|| WorkerError::Invariant("fewer order ids than paid orders".into()))?;
        let (result, stats) = paid_order(r, order_id, &payment, &items, now);
        let pricing = payment.pricing;
        w.paid.push(r.request_id.as_str());
        w.balances.insert(r.user_id, payment.balance_after);
        w.history.push(HistoryRow {
            user_id: r.user_id,
            kind: "payment",
            amount: -pricing.paid,
            balance_after: payment.balance_after,
            request_id: Some(r.request_id.as_str().to_owned()),
            order_id: Some(order_id),
        });
        w.events.push(NewEvent {
            order_id,
            payload: serde_json::to_string(&stats)?,
            traceparent: trace.map(str::to_owned),
        });
        w.results
            .push(stored(&r.request_id, r.user_id, None, &result)?);
        w.orders.push(NewOrder {
            id: order_id,
            request_id: r.request_id.as_str().to_owned(),
            user_id: r.user_id,
            total_amount: pricing.total,
            discount_amount: pricing.discount,
            paid_amount: pricing.paid,
            coupon_id: r.coupon_id,
            used_coupon: payment.used_coupon,
            coupon_applied: pricing.coupon_applied,
            ordered_at: now,
            items,
        });
    }
    Ok(w)
}

#[async_trait]
impl Decide for OrderLogic {
    type Request = OrderRequest;
    type Result = OrderResult;
    /// An order locks its user, products and coupon rows in its own
    /// transaction: nothing to look up before.
    type Context = ();

    fn flow(&self) -> Flow {
        Flow::Order
    }

    /// Batch n+1 is decided while batch n's transaction writes (see the
    /// module's doc).
    fn in_flight(&self) -> usize {
        2
    }

    async fn prepare(&self, _requests: &[&OrderRequest]) -> Result<(), WorkerError> {
        Ok(())
    }

    async fn decide(
        &self,
        requests: &[&OrderRequest],
        traces: &[Option<&str>],
        _context: &(),
        turn: Turn<'_>,
    ) -> Result<Vec<NewResult>, WorkerError> {
        if let Some(results) = self.attempt(requests, traces, Products::Late, turn).await? {
            return Ok(results);
        }
        metrics::order_batch_redecided();
        self.attempt(requests, traces, Products::First, turn)
            .await?
            .ok_or_else(|| {
                WorkerError::Invariant("a batch with its products locked was given up".into())
            })
    }

    async fn abandon(&self, request: &OrderRequest) -> Result<(), WorkerError> {
        self.counters
            .release_stock(&[request.request_id.as_str()])
            .await?;
        Ok(())
    }

    async fn replayed(&self, request_ids: &[&str]) -> Result<(), WorkerError> {
        // A paid order's hold left by a crash after commit: forget it. A
        // rejected order's hold (its release was cut short): give it back.
        let paid = orders::paid_among(&self.db, request_ids).await?;
        let (done, rejected): (Vec<&str>, Vec<&str>) =
            request_ids.iter().partition(|id| paid.contains(**id));
        self.counters.finish_holds(&done).await?;
        self.counters.release_stock(&rejected).await?;
        Ok(())
    }
}

fn sorted_unique(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let set: BTreeSet<i64> = ids.collect();
    set.into_iter().collect()
}
