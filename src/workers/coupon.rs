//! The coupon worker: first-come issue, exact under contention, crash-safe.
//!
//! # The hand-off between Redis and PostgreSQL
//!
//! 1. Users and coupons that do not exist are rejected first (one query each
//!    per batch, made while the pipeline looks up stored results), so they
//!    never touch the stock.
//! 2. One Lua call per coupon per batch (`issue_coupons.lua`) decides every
//!    request atomically: already-holding users and sold-out come out before
//!    any write; a granted unit is recorded as a *grant* keyed by
//!    `request_id`, together with the stock decrement and the holder entry.
//! 3. One PostgreSQL transaction locks the coupon rows, inserts the issued
//!    coupons (unique (user, coupon)), bumps `issued` (checked ≤ total), and
//!    stores every result in `processed_requests`. If Redis had drifted,
//!    PostgreSQL's figures win: the extra grants become `coupon_sold_out` or
//!    `coupon_already_issued` and the coupon's counter is reloaded.
//! 4. After the commit the grants are deleted; results are then published and
//!    offsets stored by the consumer loop.
//!
//! A worker killed between 2 and 3 leaves a grant and no row: the redelivered
//! request finds its own grant (code 2, "granted earlier") and commits — no
//! second unit is taken, none is lost. Killed between 3 and 4: the redelivery
//! finds the stored result and republishes it byte for byte, and the stale
//! grant is deleted then. A reload subtracts pending grants, so a reload never
//! hands out a unit a pending request already holds.
//!
//! # A coupon split over several Redis sub-counters
//!
//! A coupon created with `shards = N > 1` keeps its stock in N sub-counters,
//! each with its own hash tag (so on a Redis Cluster they spread over the
//! shards). A user's requests always go to the same sub-counter, their
//! *home* ([`crate::domain::coupon::home_shard`]), which holds the user's holder entry and grants:
//! "one coupon per user" stays one atomic check. When a home runs out, units
//! are moved to it from the other sub-counters in ring order
//! (`take_stock.lua`, then `give_stock.lua`) and its sold-out requests are
//! asked again, so the coupon sells out only when every sub-counter has.
//! Units taken but not yet given when a process dies are missing from Redis
//! until [`reconcile::repair_if_short`] notices (every sub-counter empty
//! while PostgreSQL has units left) and reloads; PostgreSQL's `issued ≤
//! total_quantity` stays the final guard against any unit counted twice.

use foldhash::{HashMap, HashSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;

use super::pipeline::{stored, Decide};
use super::WorkerError;
use crate::counters::{Counters, CouponShard};
use crate::domain::coupon::{donors, IssueDecision};
use crate::domain::coupon_batch::{admit, issue_result, recorded, IssueOutcome, Recorded};
use crate::domain::messages::{CouponIssueRequest, CouponIssueResult};
use crate::domain::Rejection;
use crate::kafka::turns::Turn;
use crate::kafka::Flow;
use crate::reconcile;
use crate::store::coupons::{self, CouponRow, Grant};
use crate::store::processed::{self, NewResult};
use crate::store::{users, StoreError};

pub struct CouponLogic {
    db: PgPool,
    counters: Counters,
    /// Split coupons whose every sub-counter was found empty, and when: for
    /// a second after, a home that runs out does not ask the others again
    /// (after a sell-out that would be N calls per batch for nothing).
    exhausted: Arc<Mutex<HashMap<i64, Instant>>>,
}

/// How long a split coupon found empty everywhere is not searched again.
const EXHAUSTED_FOR: Duration = Duration::from_secs(1);

/// Rounds of moving stock to a home and asking again, when other processes
/// take the units moved before this one's requests get them.
const HAND_OVER_ROUNDS: usize = 3;

/// The users of a batch that do not exist and its coupons that do (one
/// query each).
pub struct Known {
    missing_users: HashSet<i64>,
    coupons: HashMap<i64, CouponRow>,
}

/// A batch on its way: what is rejected so far, where each admitted request
/// is asked, which were granted, and the coupons it names.
struct Batch<'a> {
    /// Per request, its rejection once it has one.
    rejected: Vec<Option<Rejection>>,
    /// Admitted requests (indexes) by the sub-counter their user is homed on.
    homes: BTreeMap<CouponShard, Vec<usize>>,
    /// Requests Redis granted a unit, in the order they were asked.
    granted: Vec<usize>,
    coupons: &'a HashMap<i64, CouponRow>,
}

impl CouponLogic {
    pub fn new(db: PgPool, counters: Counters) -> Self {
        Self {
            db,
            counters,
            exhausted: Arc::default(),
        }
    }

    async fn issue_in_redis(
        &self,
        shard: CouponShard,
        requests: &[(&str, i64)],
    ) -> Result<Vec<IssueDecision>, WorkerError> {
        for _ in 0..3 {
            match self.counters.issue_coupons(shard, requests).await? {
                Ok(decisions) => return Ok(decisions),
                Err(_not_loaded) => {
                    reconcile::load_coupon(&self.db, &self.counters, shard.coupon_id, false)
                        .await?;
                }
            }
        }
        Err(WorkerError::NotLoaded(format!(
            "coupon {} could not be loaded into Redis",
            shard.coupon_id
        )))
    }

    /// Decides requests homed on one sub-counter; on a split coupon, the
    /// ones it has no stock for are asked again after stock is moved to it.
    async fn issue_at_home(
        &self,
        home: CouponShard,
        requests: &[(&str, i64)],
    ) -> Result<Vec<IssueDecision>, WorkerError> {
        let mut decisions = self.issue_in_redis(home, requests).await?;
        if home.shards <= 1 {
            return Ok(decisions);
        }
        for _ in 0..HAND_OVER_ROUNDS {
            let short: Vec<usize> = (0..decisions.len())
                .filter(|&i| decisions[i] == IssueDecision::SoldOut)
                .collect();
            if short.is_empty() || self.recently_exhausted(home.coupon_id) {
                break;
            }
            if self.move_stock_to(home, short.len() as i64).await? == 0
                && !reconcile::repair_if_short(&self.db, &self.counters, home.coupon_id).await?
            {
                self.mark_exhausted(home.coupon_id);
                break;
            }
            let again: Vec<(&str, i64)> = short.iter().map(|&i| requests[i]).collect();
            for (i, decision) in short
                .into_iter()
                .zip(self.issue_in_redis(home, &again).await?)
            {
                decisions[i] = decision;
            }
        }
        Ok(decisions)
    }

    /// Moves up to `want` units from the other sub-counters to `home`, in
    /// ring order; returns how many it moved.
    async fn move_stock_to(&self, home: CouponShard, want: i64) -> Result<i64, WorkerError> {
        let mut moved = 0;
        for donor in donors(home.index, home.shards) {
            if moved >= want {
                break;
            }
            moved += self
                .counters
                .take_stock(home.sibling(donor), want - moved)
                .await?;
        }
        if moved > 0 && !self.counters.give_stock(home, moved).await? {
            return Err(WorkerError::NotLoaded(format!(
                "coupon {} sub-counter {} vanished from Redis while stock moved to it",
                home.coupon_id, home.index
            )));
        }
        Ok(moved)
    }

    /// Step 1: rejects unknown users and coupons (found by
    /// [`Decide::prepare`]), and sorts the rest by the sub-counter their
    /// user is homed on.
    fn screen<'a>(&self, requests: &[&CouponIssueRequest], known: &'a Known) -> Batch<'a> {
        let mut batch = Batch {
            rejected: Vec::with_capacity(requests.len()),
            homes: BTreeMap::new(),
            granted: Vec::new(),
            coupons: &known.coupons,
        };
        for (i, r) in requests.iter().enumerate() {
            let admitted = admit(
                r,
                !known.missing_users.contains(&r.user_id),
                batch.coupons.contains_key(&r.coupon_id),
            );
            if admitted.is_ok() {
                let shards = batch.coupons[&r.coupon_id].shards();
                batch
                    .homes
                    .entry(CouponShard::of_user(r.coupon_id, shards, r.user_id))
                    .or_default()
                    .push(i);
            }
            batch.rejected.push(admitted.err());
        }
        batch
    }

    /// Step 2: one Lua call per sub-counter decides its requests.
    async fn ask_redis(
        &self,
        requests: &[&CouponIssueRequest],
        batch: &mut Batch<'_>,
    ) -> Result<(), WorkerError> {
        for (&home, indexes) in &batch.homes {
            let asks: Vec<(&str, i64)> = indexes
                .iter()
                .map(|&i| (requests[i].request_id.as_str(), requests[i].user_id))
                .collect();
            let decisions = self.issue_at_home(home, &asks).await?;
            for (&i, decision) in indexes.iter().zip(decisions) {
                match decision.rejection(home.coupon_id, requests[i].user_id) {
                    Some(rejection) => batch.rejected[i] = Some(rejection),
                    None => batch.granted.push(i),
                }
            }
        }
        Ok(())
    }

    /// Step 3: one transaction makes the grants durable and stores every
    /// result (the rejections are moved out of `batch` into them). Returns
    /// the results and the coupons Redis had drifted on.
    async fn record(
        &self,
        requests: &[&CouponIssueRequest],
        batch: &mut Batch<'_>,
    ) -> Result<(Vec<NewResult>, BTreeSet<i64>), WorkerError> {
        let grants: Vec<Grant> = batch
            .granted
            .iter()
            .map(|&i| Grant {
                request_id: requests[i].request_id.as_str().to_owned(),
                user_id: requests[i].user_id,
                coupon_id: requests[i].coupon_id,
            })
            .collect();
        // Nothing granted (a sold-out batch): the results are its only rows,
        // and one statement is a transaction of its own, two round trips
        // fewer than opening one around it.
        let mut tx = if grants.is_empty() {
            None
        } else {
            Some(self.db.begin().await.map_err(StoreError::from)?)
        };
        let written = match &mut tx {
            Some(tx) => coupons::issue(tx, &grants).await?,
            None => Vec::new(),
        };
        let mut outcomes: Vec<Option<IssueOutcome>> = batch
            .rejected
            .iter_mut()
            .map(|r| r.take().map(IssueOutcome::Rejected))
            .collect();
        let mut drifted = BTreeSet::new();
        for (&i, outcome) in batch.granted.iter().zip(written) {
            let r = requests[i];
            if !matches!(outcome, Recorded::Issued { .. }) {
                drifted.insert(r.coupon_id);
            }
            let expires_at = batch.coupons[&r.coupon_id].expires_at;
            outcomes[i] = Some(recorded(r, outcome, expires_at));
        }
        let mut results = Vec::with_capacity(requests.len());
        for (r, outcome) in requests.iter().zip(outcomes) {
            let outcome = outcome.ok_or_else(|| {
                WorkerError::Invariant(format!("request {} was not decided", r.request_id.as_str()))
            })?;
            let (code, result) = issue_result(r, outcome);
            results.push(stored(&r.request_id, r.user_id, code, &result)?);
        }
        match tx {
            Some(mut tx) => {
                processed::insert_all(&mut *tx, Flow::Coupon.kind(), &results).await?;
                tx.commit().await.map_err(StoreError::from)?;
            }
            None => processed::insert_all(&self.db, Flow::Coupon.kind(), &results).await?,
        }
        Ok((results, drifted))
    }

    /// Step 4: the grants are spent; the stock left is shown.
    async fn after_commit(
        &self,
        requests: &[&CouponIssueRequest],
        batch: &Batch<'_>,
    ) -> Result<(), WorkerError> {
        let granted: HashSet<usize> = batch.granted.iter().copied().collect();
        for (&home, indexes) in &batch.homes {
            let done: Vec<&str> = indexes
                .iter()
                .filter(|i| granted.contains(i))
                .map(|&i| requests[i].request_id.as_str())
                .collect();
            self.counters.finish_grants(home, &done).await?;
        }
        let coupons: HashSet<(i64, u32)> = batch
            .homes
            .keys()
            .map(|s| (s.coupon_id, s.shards))
            .collect();
        for (coupon_id, shards) in coupons {
            if let Some(left) = self.counters.coupon_stock_total(coupon_id, shards).await? {
                crate::telemetry::metrics::coupon_stock(coupon_id, left);
            }
        }
        Ok(())
    }

    fn recently_exhausted(&self, coupon_id: i64) -> bool {
        self.exhausted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&coupon_id)
            .is_some_and(|at| at.elapsed() < EXHAUSTED_FOR)
    }

    fn mark_exhausted(&self, coupon_id: i64) {
        self.exhausted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(coupon_id, Instant::now());
    }
}

#[async_trait]
impl Decide for CouponLogic {
    type Request = CouponIssueRequest;
    type Result = CouponIssueResult;
    type Context = Known;

    fn flow(&self) -> Flow {
        Flow::Coupon
    }

    /// A batch's Redis decisions are taken before its transaction; the next
    /// batch's look-ups and decisions overlap that transaction.
    fn in_flight(&self) -> usize {
        2
    }

    async fn prepare(&self, requests: &[&CouponIssueRequest]) -> Result<Known, WorkerError> {
        let user_ids: Vec<i64> = requests.iter().map(|r| r.user_id).collect();
        let coupon_ids: Vec<i64> = requests
            .iter()
            .map(|r| r.coupon_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (missing_users, coupons) = tokio::try_join!(
            users::missing(&self.db, &user_ids),
            coupons::find_many(&self.db, &coupon_ids)
        )?;
        Ok(Known {
            missing_users,
            coupons,
        })
    }

    async fn decide(
        &self,
        requests: &[&CouponIssueRequest],
        _traces: &[Option<&str>],
        known: &Known,
        turn: Turn<'_>,
    ) -> Result<Vec<NewResult>, WorkerError> {
        reconcile::reload_if_redis_replaced(&self.db, &self.counters).await?;
        let mut batch = self.screen(requests, known);
        self.ask_redis(requests, &mut batch).await?;
        // The decisions are taken, in batch order: the next batch may take
        // its own while this one is made durable.
        turn.to_record().await;
        let (results, drifted) = self.record(requests, &mut batch).await?;
        self.after_commit(requests, &batch).await?;
        for coupon_id in drifted {
            tracing::warn!(
                coupon_id,
                "Redis granted what PostgreSQL refused; reloading the coupon"
            );
            reconcile::load_coupon(&self.db, &self.counters, coupon_id, true).await?;
        }
        Ok(results)
    }

    async fn abandon(&self, request: &CouponIssueRequest) -> Result<(), WorkerError> {
        let shards = coupons::get(&self.db, request.coupon_id)
            .await?
            .map_or(1, |c| c.shards());
        let home = CouponShard::of_user(request.coupon_id, shards, request.user_id);
        self.counters
            .release_grant_of(home, request.request_id.as_str())
            .await?;
        Ok(())
    }

    async fn replayed(&self, request_ids: &[&str]) -> Result<(), WorkerError> {
        // Grants left by a crash after commit: the requests are durable, forget them.
        let mut by_shard: BTreeMap<CouponShard, Vec<&str>> = BTreeMap::new();
        let issued = coupons::issued_by(&self.db, request_ids).await?;
        for row in &issued {
            let shards = u32::try_from(row.shards).unwrap_or(1);
            by_shard
                .entry(CouponShard::of_user(row.coupon_id, shards, row.user_id))
                .or_default()
                .push(row.request_id.as_str());
        }
        for (shard, ids) in by_shard {
            self.counters.finish_grants(shard, &ids).await?;
        }
        Ok(())
    }
}
