//! The order worker: stock, coupon, payment, compensation, statistics.
//!
//! Per micro-batch, inside one PostgreSQL transaction: the users' and
//! products' rows are locked (ascending id) and the named coupon holdings
//! read; each order is priced and paid against in-memory balances (pure rules
//! of [`crate::domain::order`]); then one Lua call per *round* reserves stock
//! all-or-nothing for the orders that can pay (`reserve`) and only checks it
//! for the others (`check`, so `out_of_stock` keeps its precedence and nothing
//! is held). A user's k-th order of the batch is in round k, so it sees the
//! balance and coupon use of the user's earlier orders. Paid orders, items,
//! balances, history, coupon use, stock and the stats event (outbox) commit
//! together with every result.
//!
//! Crash safety matches the coupon flow: a hold is keyed by `request_id`, so a
//! redelivered order finds its own hold instead of taking stock twice; a
//! redelivery that is now rejected gives its old hold back; holds are deleted
//! once the order is durable; a replay answers from the stored result and
//! cleans up any hold a crash left. PostgreSQL's locked stock is checked too:
//! if Redis ever sold more than PostgreSQL has, the order is `out_of_stock`,
//! its hold released, and the product reloaded.

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{PgConnection, PgPool};

use super::pipeline::{stored, Decide, ResultMessage};
use super::WorkerError;
use crate::counters::{Counters, StockAnswer, StockRequest};
use crate::domain::messages::{OrderRequest, OrderResult, OrderStats, StatsItem, Status};
use crate::domain::order::{pay, price_order, CouponHolding, PricedItem, Pricing};
use crate::domain::{ErrorCode, Rejection};
use crate::kafka::topics::ORDER_STATS;
use crate::kafka::Flow;
use crate::reconcile;
use crate::store::orders::{self, NewEvent, NewOrder};
use crate::store::processed::{self, NewResult};
use crate::store::users::{self, HistoryRow};
use crate::store::{products, StoreError};

pub struct OrderLogic {
    pub db: PgPool,
    pub counters: Counters,
}

/// How an order ended.
enum Verdict {
    Rejected(Rejection),
    Paid {
        pricing: Pricing,
        balance: i64,
        items: Vec<PricedItem>,
        used_coupon: Option<i64>,
    },
}

/// What an order looked like before the stock answered.
struct Candidate {
    index: usize,
    items: Vec<PricedItem>,
    priced: Result<(Pricing, i64, Option<i64>), Rejection>,
}

impl OrderLogic {
    /// Reserves a round; the requests whose stock this call took (not an
    /// earlier attempt's) are added to `fresh`.
    /// `batch` is the batch's transaction, which holds the products' locks.
    async fn reserve_round(
        &self,
        batch: &mut PgConnection,
        round: &[StockRequest],
        fresh: &mut Vec<String>,
    ) -> Result<Vec<StockAnswer>, WorkerError> {
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
                return Ok(answers);
            }
            // Orders of this round already reserved answer "reserved earlier" on the rerun.
            let ids: Vec<i64> = missing.into_iter().collect();
            reconcile::load_missing_products_in(batch, &self.counters, &ids).await?;
        }
        Err(WorkerError::NotLoaded(
            "products could not be loaded into Redis".into(),
        ))
    }

    /// Decides a batch (see [`Decide::decide`]). `fresh` collects the holds
    /// this attempt took; `committed` turns true once its transaction is.
    async fn decide_batch(
        &self,
        requests: &[&OrderRequest],
        traces: &[Option<&str>],
        fresh: &mut Vec<String>,
        committed: &mut bool,
    ) -> Result<Vec<NewResult>, WorkerError> {
        // Before the batch's own locks: a reload takes the products' locks.
        reconcile::reload_if_redis_replaced(&self.db, &self.counters).await?;
        let now = Utc::now();
        let mut tx = self.db.begin().await.map_err(StoreError::from)?;
        let user_ids: Vec<i64> = sorted_unique(requests.iter().map(|r| r.user_id));
        let product_ids: Vec<i64> = sorted_unique(
            requests
                .iter()
                .flat_map(|r| r.items.iter().map(|i| i.product_id)),
        );
        let mut balances = users::lock_balances(&mut tx, &user_ids).await?;
        let catalogue = products::lock(&mut tx, &product_ids).await?;
        let pairs: Vec<(i64, i64)> = requests
            .iter()
            .filter_map(|r| r.coupon_id.map(|c| (r.user_id, c)))
            .collect();
        let holdings = orders::holdings(&mut tx, &pairs).await?;
        let mut pg_stock: HashMap<i64, i64> = catalogue
            .iter()
            .map(|(id, (_, stock))| (*id, *stock))
            .collect();
        let mut coupons_used: HashSet<i64> = HashSet::new();

        // Rounds: the k-th order of each user goes into round k.
        let mut per_user: HashMap<i64, usize> = HashMap::new();
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let k = per_user.entry(r.user_id).or_default();
            if rounds.len() <= *k {
                rounds.push(Vec::new());
            }
            rounds[*k].push(i);
            *k += 1;
        }

        let mut verdicts: Vec<Option<Verdict>> = (0..requests.len()).map(|_| None).collect();
        let mut to_release: Vec<&str> = Vec::new();
        let mut drifted: BTreeSet<i64> = BTreeSet::new();
        for round in rounds {
            let mut candidates = Vec::new();
            for i in round {
                let r = requests[i];
                let Some(&balance) = balances.get(&r.user_id) else {
                    verdicts[i] = Some(Verdict::Rejected(Rejection::new(
                        ErrorCode::UserNotFound,
                        format!("user {} does not exist", r.user_id),
                    )));
                    continue;
                };
                if let Some(item) = r
                    .items
                    .iter()
                    .find(|item| !catalogue.contains_key(&item.product_id))
                {
                    verdicts[i] = Some(Verdict::Rejected(Rejection::new(
                        ErrorCode::ProductNotFound,
                        format!("product {} does not exist", item.product_id),
                    )));
                    continue;
                }
                let items: Vec<PricedItem> = r
                    .items
                    .iter()
                    .map(|item| PricedItem {
                        product_id: item.product_id,
                        quantity: item.quantity,
                        unit_price: catalogue[&item.product_id].0,
                    })
                    .collect();
                let holding = r.coupon_id.map(|c| match holdings.get(&(r.user_id, c)) {
                    None => (CouponHolding::NotOwned, None),
                    Some(h) => (
                        CouponHolding::Owned {
                            used: h.used || coupons_used.contains(&h.user_coupon_id),
                            expires_at: h.expires_at,
                            discount: h.discount,
                        },
                        Some(h.user_coupon_id),
                    ),
                });
                let priced = price_order(r.coupon_id, &items, holding.map(|(h, _)| h), now)
                    .and_then(|pricing| {
                        let after = pay(balance, pricing.paid)?;
                        let used = if pricing.coupon_applied {
                            holding.and_then(|(_, id)| id)
                        } else {
                            None
                        };
                        Ok((pricing, after, used))
                    });
                candidates.push(Candidate {
                    index: i,
                    items,
                    priced,
                });
            }
            let asks: Vec<StockRequest> = candidates
                .iter()
                .map(|c| StockRequest {
                    request_id: requests[c.index].request_id.as_str().to_owned(),
                    reserve: c.priced.is_ok(),
                    items: c.items.iter().map(|i| (i.product_id, i.quantity)).collect(),
                })
                .collect();
            let answers = self.reserve_round(&mut tx, &asks, fresh).await?;
            for (candidate, answer) in candidates.into_iter().zip(answers) {
                let r = requests[candidate.index];
                let verdict = match (answer, candidate.priced) {
                    (StockAnswer::OutOfStock { product_id }, _) => {
                        Verdict::Rejected(out_of_stock(product_id))
                    }
                    (
                        StockAnswer::Reserved | StockAnswer::ReservedEarlier,
                        Ok((pricing, balance, used_coupon)),
                    ) => {
                        match candidate.items.iter().find(|i| {
                            pg_stock.get(&i.product_id).copied().unwrap_or(0) < i.quantity
                        }) {
                            Some(short) => {
                                drifted.insert(short.product_id);
                                to_release.push(r.request_id.as_str());
                                Verdict::Rejected(out_of_stock(short.product_id))
                            }
                            None => {
                                for item in &candidate.items {
                                    *pg_stock.entry(item.product_id).or_default() -= item.quantity;
                                }
                                balances.insert(r.user_id, balance);
                                coupons_used.extend(used_coupon);
                                Verdict::Paid {
                                    pricing,
                                    balance,
                                    items: candidate.items,
                                    used_coupon,
                                }
                            }
                        }
                    }
                    (_, Err(rejection)) => Verdict::Rejected(rejection),
                    (StockAnswer::CheckPassed | StockAnswer::NotLoaded { .. }, Ok(_)) => {
                        return Err(WorkerError::Invariant(format!(
                            "stock answer {answer:?} for an order that reserves"
                        )));
                    }
                };
                verdicts[candidate.index] = Some(verdict);
            }
        }

        let paid_count = verdicts
            .iter()
            .filter(|v| matches!(v, Some(Verdict::Paid { .. })))
            .count();
        let mut order_ids = orders::next_ids(&mut tx, paid_count).await?.into_iter();
        let mut new_orders = Vec::with_capacity(paid_count);
        let mut history = Vec::with_capacity(paid_count);
        let mut changed_balances = HashMap::new();
        let mut sold: HashMap<i64, i64> = HashMap::new();
        let mut events = Vec::with_capacity(paid_count);
        let mut results = Vec::with_capacity(requests.len());
        let mut paid_requests = Vec::with_capacity(paid_count);
        for ((r, verdict), trace) in requests.iter().zip(verdicts).zip(traces) {
            match verdict.unwrap_or_else(|| {
                Verdict::Rejected(Rejection::new(
                    ErrorCode::InvalidRequest,
                    "order was not decided",
                ))
            }) {
                Verdict::Rejected(rejection) => {
                    let code = rejection.code;
                    let result =
                        OrderResult::rejected(r.request_id.clone(), Some(r.user_id), rejection);
                    results.push(stored(&r.request_id, r.user_id, Some(code), &result)?);
                }
                Verdict::Paid {
                    pricing,
                    balance,
                    items,
                    used_coupon,
                } => {
                    let order_id = order_ids.next().ok_or_else(|| {
                        WorkerError::Invariant("fewer order ids than paid orders".into())
                    })?;
                    paid_requests.push(r.request_id.as_str());
                    changed_balances.insert(r.user_id, balance);
                    history.push(HistoryRow {
                        user_id: r.user_id,
                        kind: "payment",
                        amount: -pricing.paid,
                        balance_after: balance,
                        request_id: Some(r.request_id.as_str().to_owned()),
                        order_id: Some(order_id),
                    });
                    for item in &items {
                        *sold.entry(item.product_id).or_default() += item.quantity;
                    }
                    let stats = OrderStats {
                        order_id,
                        user_id: r.user_id,
                        ordered_at: now,
                        items: items
                            .iter()
                            .map(|i| StatsItem {
                                product_id: i.product_id,
                                quantity: i.quantity,
                                unit_price: i.unit_price,
                            })
                            .collect(),
                        total_amount: pricing.total,
                        discount_amount: pricing.discount,
                        paid_amount: pricing.paid,
                        coupon_id: if pricing.coupon_applied {
                            r.coupon_id
                        } else {
                            None
                        },
                    };
                    events.push(NewEvent {
                        order_id,
                        payload: serde_json::to_string(&stats)?,
                        traceparent: trace.map(str::to_owned),
                    });
                    let result = OrderResult {
                        request_id: r.request_id.clone(),
                        user_id: Some(r.user_id),
                        status: Status::Succeeded,
                        order_id: Some(order_id),
                        total_amount: Some(pricing.total),
                        discount_amount: Some(pricing.discount),
                        paid_amount: Some(pricing.paid),
                        balance: Some(balance),
                        coupon_applied: Some(pricing.coupon_applied),
                        error: None,
                    };
                    results.push(stored(&r.request_id, r.user_id, None, &result)?);
                    new_orders.push(NewOrder {
                        id: order_id,
                        request_id: r.request_id.as_str().to_owned(),
                        user_id: r.user_id,
                        total_amount: pricing.total,
                        discount_amount: pricing.discount,
                        paid_amount: pricing.paid,
                        coupon_id: r.coupon_id,
                        used_coupon,
                        coupon_applied: pricing.coupon_applied,
                        ordered_at: now,
                        items,
                    });
                }
            }
        }
        orders::insert(&mut tx, &new_orders).await?;
        users::write_balances(&mut tx, &changed_balances, &history).await?;
        products::decrement(&mut tx, &sold).await?;
        orders::enqueue(&mut tx, ORDER_STATS, &events).await?;
        processed::insert_all(&mut tx, Flow::Order.kind(), &results).await?;
        tx.commit().await.map_err(StoreError::from)?;
        *committed = true;

        self.counters.finish_holds(&paid_requests).await?;
        self.counters.release_stock(&to_release).await?;
        if !drifted.is_empty() {
            tracing::warn!(products = ?drifted, "Redis reserved what PostgreSQL does not have; reloading products");
            reconcile::load_products(&self.db, &self.counters, true).await?;
        }
        Ok(results)
    }
}

#[async_trait]
impl Decide for OrderLogic {
    type Request = OrderRequest;
    type Result = OrderResult;

    fn flow(&self) -> Flow {
        Flow::Order
    }

    async fn decide(
        &self,
        requests: &[&OrderRequest],
        traces: &[Option<&str>],
    ) -> Result<Vec<NewResult>, WorkerError> {
        let mut fresh = Vec::new();
        let mut committed = false;
        let outcome = self
            .decide_batch(requests, traces, &mut fresh, &mut committed)
            .await;
        if outcome.is_err() && !committed && !fresh.is_empty() {
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

fn out_of_stock(product_id: i64) -> Rejection {
    Rejection::new(
        ErrorCode::OutOfStock,
        format!("product {product_id} does not have enough stock"),
    )
}

fn sorted_unique(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let set: BTreeSet<i64> = ids.collect();
    set.into_iter().collect()
}
