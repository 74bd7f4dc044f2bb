//! The charge worker: minimum charge, maximum balance, one transaction per
//! micro-batch. Users' rows are locked in id order, so concurrent charges of
//! the same user (even from another worker after a rebalance) serialize.

use foldhash::{HashMap, HashMapExt};

use async_trait::async_trait;
use sqlx::PgPool;

use super::pipeline::{stored, Decide, ResultMessage};
use super::WorkerError;
use crate::domain::charge::{apply_charge, ChargeLimits};
use crate::domain::messages::{ChargeRequest, ChargeResult, Status};
use crate::domain::{ErrorCode, Rejection};
use crate::kafka::turns::Turn;
use crate::kafka::Flow;
use crate::store::processed::{self, NewResult};
use crate::store::users::{self, HistoryRow};

pub struct ChargeLogic {
    pub db: PgPool,
    pub limits: ChargeLimits,
}

#[async_trait]
impl Decide for ChargeLogic {
    type Request = ChargeRequest;
    type Result = ChargeResult;
    /// A charge locks its users' rows in its own transaction: nothing to
    /// look up before.
    type Context = ();

    fn flow(&self) -> Flow {
        Flow::Charge
    }

    async fn prepare(&self, _requests: &[&ChargeRequest]) -> Result<(), WorkerError> {
        Ok(())
    }

    async fn decide(
        &self,
        requests: &[&ChargeRequest],
        _traces: &[Option<&str>],
        _context: &(),
        _turn: Turn<'_>,
    ) -> Result<Vec<NewResult>, WorkerError> {
        let mut tx = self
            .db
            .begin()
            .await
            .map_err(crate::store::StoreError::from)?;
        let mut user_ids: Vec<i64> = requests.iter().map(|r| r.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let mut balances = users::lock_balances(&mut tx, &user_ids).await?;
        let mut changed = HashMap::new();
        let mut history = Vec::new();
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            let decision = match balances.get_mut(&request.user_id) {
                None => Err(Rejection::new(
                    ErrorCode::UserNotFound,
                    format!("user {} does not exist", request.user_id),
                )),
                Some(balance) => {
                    apply_charge(*balance, request.amount, self.limits).inspect(|after| {
                        *balance = *after;
                    })
                }
            };
            let result = match decision {
                Ok(after) => {
                    changed.insert(request.user_id, after);
                    history.push(HistoryRow {
                        user_id: request.user_id,
                        kind: "charge",
                        amount: request.amount,
                        balance_after: after,
                        request_id: Some(request.request_id.as_str().to_owned()),
                        order_id: None,
                    });
                    let result = ChargeResult {
                        request_id: request.request_id.clone(),
                        user_id: Some(request.user_id),
                        status: Status::Succeeded,
                        balance: Some(after),
                        error: None,
                    };
                    stored(&request.request_id, request.user_id, None, &result)?
                }
                Err(rejection) => {
                    let code = rejection.code;
                    let result = ChargeResult::rejected(
                        request.request_id.clone(),
                        Some(request.user_id),
                        rejection,
                    );
                    stored(&request.request_id, request.user_id, Some(code), &result)?
                }
            };
            results.push(result);
        }
        users::write_balances(&mut tx, &changed, &history).await?;
        processed::insert_all(&mut *tx, Flow::Charge.kind(), &results).await?;
        tx.commit().await.map_err(crate::store::StoreError::from)?;
        Ok(results)
    }
}
