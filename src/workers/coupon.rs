//! The coupon worker: first-come issue, exact under contention, crash-safe.
//!
//! # The hand-off between Redis and PostgreSQL
//!
//! 1. Users and coupons that do not exist are rejected first (one query each
//!    per batch), so they never touch the stock.
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

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use sqlx::PgPool;

use super::pipeline::{stored, Decide, ResultMessage};
use super::{reconcile, WorkerError};
use crate::counters::Counters;
use crate::domain::coupon::IssueDecision;
use crate::domain::messages::{CouponIssueRequest, CouponIssueResult, Status};
use crate::domain::{ErrorCode, Rejection};
use crate::kafka::Flow;
use crate::store::coupons::{self, Grant, GrantOutcome};
use crate::store::processed::{self, NewResult};
use crate::store::{users, StoreError};

pub struct CouponLogic {
    pub db: PgPool,
    pub counters: Counters,
}

enum Verdict {
    Rejected(Rejection),
    Granted,
}

impl CouponLogic {
    async fn issue_in_redis(
        &self,
        coupon_id: i64,
        requests: &[(&str, i64)],
    ) -> Result<Vec<IssueDecision>, WorkerError> {
        for _ in 0..3 {
            match self.counters.issue_coupons(coupon_id, requests).await? {
                Ok(decisions) => return Ok(decisions),
                Err(_not_loaded) => {
                    reconcile::load_coupon(&self.db, &self.counters, coupon_id, false).await?;
                }
            }
        }
        Err(WorkerError::NotLoaded(format!(
            "coupon {coupon_id} could not be loaded into Redis"
        )))
    }
}

#[async_trait]
impl Decide for CouponLogic {
    type Request = CouponIssueRequest;
    type Result = CouponIssueResult;

    fn flow(&self) -> Flow {
        Flow::Coupon
    }

    async fn decide(
        &self,
        requests: &[&CouponIssueRequest],
        _traces: &[Option<&str>],
    ) -> Result<Vec<NewResult>, WorkerError> {
        reconcile::reload_if_redis_replaced(&self.db, &self.counters).await?;
        let user_ids: Vec<i64> = requests.iter().map(|r| r.user_id).collect();
        let coupon_ids: Vec<i64> = requests
            .iter()
            .map(|r| r.coupon_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (known_users, known_coupons) = tokio::try_join!(
            users::existing(&self.db, &user_ids),
            coupons::find_many(&self.db, &coupon_ids)
        )?;

        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(requests.len());
        let mut by_coupon: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            if !known_users.contains(&r.user_id) {
                verdicts.push(Some(Verdict::Rejected(Rejection::new(
                    ErrorCode::UserNotFound,
                    format!("user {} does not exist", r.user_id),
                ))));
            } else if !known_coupons.contains_key(&r.coupon_id) {
                verdicts.push(Some(Verdict::Rejected(Rejection::new(
                    ErrorCode::CouponNotFound,
                    format!("coupon {} does not exist", r.coupon_id),
                ))));
            } else {
                verdicts.push(None);
                by_coupon.entry(r.coupon_id).or_default().push(i);
            }
        }
        let mut grants = Vec::new();
        let mut granted_index = Vec::new();
        for (&coupon_id, indexes) in &by_coupon {
            let asks: Vec<(&str, i64)> = indexes
                .iter()
                .map(|&i| (requests[i].request_id.as_str(), requests[i].user_id))
                .collect();
            let decisions = self.issue_in_redis(coupon_id, &asks).await?;
            for (&i, decision) in indexes.iter().zip(decisions) {
                verdicts[i] = Some(match decision.rejection(coupon_id, requests[i].user_id) {
                    Some(rejection) => Verdict::Rejected(rejection),
                    None => {
                        granted_index.push(i);
                        grants.push(Grant {
                            request_id: requests[i].request_id.as_str().to_owned(),
                            user_id: requests[i].user_id,
                            coupon_id,
                        });
                        Verdict::Granted
                    }
                });
            }
        }

        let mut tx = self.db.begin().await.map_err(StoreError::from)?;
        let outcomes = coupons::issue(&mut tx, &grants).await?;
        let mut issued = vec![None; requests.len()];
        let mut drifted = BTreeMap::new();
        for (&i, outcome) in granted_index.iter().zip(&outcomes) {
            let r = requests[i];
            issued[i] = Some(*outcome);
            if !matches!(outcome, GrantOutcome::Issued { .. }) {
                drifted.insert(r.coupon_id, ());
            }
        }
        let mut results = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let rejection = match (&verdicts[i], issued[i]) {
                (Some(Verdict::Rejected(rejection)), _) => Some(rejection.clone()),
                (_, Some(GrantOutcome::Issued { user_coupon_id })) => {
                    let coupon = &known_coupons[&r.coupon_id];
                    let result = CouponIssueResult {
                        request_id: r.request_id.clone(),
                        user_id: Some(r.user_id),
                        status: Status::Succeeded,
                        coupon_id: Some(r.coupon_id),
                        user_coupon_id: Some(user_coupon_id),
                        expires_at: Some(coupon.expires_at),
                        error: None,
                    };
                    results.push(stored(&r.request_id, r.user_id, None, &result)?);
                    continue;
                }
                (_, Some(GrantOutcome::AlreadyHeld)) => {
                    IssueDecision::AlreadyIssued.rejection(r.coupon_id, r.user_id)
                }
                (_, Some(GrantOutcome::SoldOut)) | (_, None) => {
                    IssueDecision::SoldOut.rejection(r.coupon_id, r.user_id)
                }
            };
            let rejection = rejection.unwrap_or_else(|| {
                Rejection::new(
                    ErrorCode::CouponSoldOut,
                    format!("coupon {} has no stock left", r.coupon_id),
                )
            });
            let code = rejection.code;
            let mut result =
                CouponIssueResult::rejected(r.request_id.clone(), Some(r.user_id), rejection);
            if code != ErrorCode::CouponNotFound {
                result.coupon_id = Some(r.coupon_id);
            }
            results.push(stored(&r.request_id, r.user_id, Some(code), &result)?);
        }
        processed::insert_all(&mut tx, Flow::Coupon.kind(), &results).await?;
        tx.commit().await.map_err(StoreError::from)?;

        let granted: HashSet<usize> = granted_index.iter().copied().collect();
        for (&coupon_id, indexes) in &by_coupon {
            let done: Vec<&str> = indexes
                .iter()
                .filter(|i| granted.contains(i))
                .map(|&i| requests[i].request_id.as_str())
                .collect();
            self.counters.finish_grants(coupon_id, &done).await?;
            if let Some(left) = self.counters.coupon_stock(coupon_id).await? {
                crate::telemetry::metrics::coupon_stock(coupon_id, left);
            }
        }
        for coupon_id in drifted.keys() {
            tracing::warn!(
                coupon_id,
                "Redis granted what PostgreSQL refused; reloading the coupon"
            );
            reconcile::load_coupon(&self.db, &self.counters, *coupon_id, true).await?;
        }
        Ok(results)
    }

    async fn abandon(&self, request: &CouponIssueRequest) -> Result<(), WorkerError> {
        self.counters
            .release_grant_of(request.coupon_id, request.request_id.as_str())
            .await?;
        Ok(())
    }

    async fn replayed(&self, request_ids: &[&str]) -> Result<(), WorkerError> {
        // Grants left by a crash after commit: the requests are durable, forget them.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT request_id, coupon_id FROM user_coupons WHERE request_id = ANY($1)",
        )
        .bind(request_ids)
        .fetch_all(&self.db)
        .await
        .map_err(StoreError::from)?;
        let mut by_coupon: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
        for (request_id, coupon_id) in &rows {
            by_coupon
                .entry(*coupon_id)
                .or_default()
                .push(request_id.as_str());
        }
        for (coupon_id, ids) in by_coupon {
            self.counters.finish_grants(coupon_id, &ids).await?;
        }
        Ok(())
    }
}
