//! How each request of a coupon batch ends, without I/O: the checks before
//! any stock, what Redis's decision and PostgreSQL's grant outcome mean, and
//! the result a request is answered with.

use chrono::{DateTime, Utc};

use super::coupon::IssueDecision;
use super::error_code::{ErrorCode, Rejection};
use super::messages::{CouponIssueRequest, CouponIssueResult, ResultMessage, Status};

/// How one request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued {
        user_coupon_id: i64,
        expires_at: DateTime<Utc>,
    },
    Rejected(Rejection),
}

/// Before any stock is touched: the user and the coupon must exist.
pub fn admit(
    request: &CouponIssueRequest,
    user_exists: bool,
    coupon_exists: bool,
) -> Result<(), Rejection> {
    if !user_exists {
        return Err(Rejection::new(
            ErrorCode::UserNotFound,
            format!("user {} does not exist", request.user_id),
        ));
    }
    if !coupon_exists {
        return Err(Rejection::new(
            ErrorCode::CouponNotFound,
            format!("coupon {} does not exist", request.coupon_id),
        ));
    }
    Ok(())
}

/// What PostgreSQL made of a unit Redis granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Issued {
        user_coupon_id: i64,
    },
    /// The user already held the coupon (Redis had lost that).
    AlreadyHeld,
    /// No unit was left (Redis had counted too many).
    SoldOut,
}

/// The outcome of a granted request once PostgreSQL recorded it: its
/// figures win over Redis's.
pub fn recorded(
    request: &CouponIssueRequest,
    recorded: Recorded,
    expires_at: DateTime<Utc>,
) -> IssueOutcome {
    let refused = |decision: IssueDecision| {
        IssueOutcome::Rejected(
            decision
                .rejection(request.coupon_id, request.user_id)
                .unwrap_or_else(|| sold_out(request.coupon_id)),
        )
    };
    match recorded {
        Recorded::Issued { user_coupon_id } => IssueOutcome::Issued {
            user_coupon_id,
            expires_at,
        },
        Recorded::AlreadyHeld => refused(IssueDecision::AlreadyIssued),
        Recorded::SoldOut => refused(IssueDecision::SoldOut),
    }
}

fn sold_out(coupon_id: i64) -> Rejection {
    Rejection::new(
        ErrorCode::CouponSoldOut,
        format!("coupon {coupon_id} has no stock left"),
    )
}

/// The result a request is answered with, and its error code when rejected.
pub fn issue_result(
    request: &CouponIssueRequest,
    outcome: IssueOutcome,
) -> (Option<ErrorCode>, CouponIssueResult) {
    match outcome {
        IssueOutcome::Issued {
            user_coupon_id,
            expires_at,
        } => (
            None,
            CouponIssueResult {
                request_id: request.request_id.clone(),
                user_id: Some(request.user_id),
                status: Status::Succeeded,
                coupon_id: Some(request.coupon_id),
                user_coupon_id: Some(user_coupon_id),
                expires_at: Some(expires_at),
                error: None,
            },
        ),
        IssueOutcome::Rejected(rejection) => {
            let code = rejection.code;
            let mut result = CouponIssueResult::rejected(
                request.request_id.clone(),
                Some(request.user_id),
                rejection,
            );
            // A coupon that does not exist is not named back.
            if code != ErrorCode::CouponNotFound {
                result.coupon_id = Some(request.coupon_id);
            }
            (Some(code), result)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RequestId;

    fn request() -> CouponIssueRequest {
        CouponIssueRequest {
            request_id: RequestId::parse("c-1").unwrap(),
            user_id: 4,
            coupon_id: 7,
            requested_at: None,
        }
    }

    #[test]
    fn unknown_users_come_before_unknown_coupons() {
        assert_eq!(
            admit(&request(), false, false).unwrap_err().code,
            ErrorCode::UserNotFound
        );
        assert_eq!(
            admit(&request(), true, false).unwrap_err().code,
            ErrorCode::CouponNotFound
        );
        assert!(admit(&request(), true, true).is_ok());
    }

    #[test]
    fn postgres_refusing_a_grant_answers_as_it_says() {
        let at = Utc::now();
        let held = recorded(&request(), Recorded::AlreadyHeld, at);
        let (code, _) = issue_result(&request(), held);
        assert_eq!(code, Some(ErrorCode::CouponAlreadyIssued));
        let (code, result) = issue_result(&request(), recorded(&request(), Recorded::SoldOut, at));
        assert_eq!(code, Some(ErrorCode::CouponSoldOut));
        assert_eq!(result.coupon_id, Some(7));
        let issued = recorded(&request(), Recorded::Issued { user_coupon_id: 9 }, at);
        let (code, result) = issue_result(&request(), issued);
        assert_eq!(code, None);
        assert_eq!(
            (result.user_coupon_id, result.expires_at),
            (Some(9), Some(at))
        );
    }

    proptest::proptest! {
        /// Whatever the outcome: the result answers the request it is for,
        /// succeeds exactly when no error code comes with it, and names the
        /// coupon unless the coupon does not exist.
        #[test]
        fn every_outcome_answers_its_request(
            user_exists: bool,
            coupon_exists: bool,
            recorded_as in 0u8..4,
            user_coupon_id in 1i64..1_000_000,
        ) {
            let r = request();
            let outcome = match admit(&r, user_exists, coupon_exists) {
                Err(rejection) => IssueOutcome::Rejected(rejection),
                Ok(()) => match recorded_as {
                    0 => IssueOutcome::Rejected(IssueDecision::SoldOut.rejection(7, 4).unwrap()),
                    1 => recorded(&r, Recorded::AlreadyHeld, Utc::now()),
                    2 => recorded(&r, Recorded::SoldOut, Utc::now()),
                    _ => recorded(&r, Recorded::Issued { user_coupon_id }, Utc::now()),
                },
            };
            let (code, result) = issue_result(&r, outcome);
            proptest::prop_assert_eq!(&result.request_id, &r.request_id);
            proptest::prop_assert_eq!(result.user_id, Some(4));
            proptest::prop_assert_eq!(code.is_none(), result.status == Status::Succeeded);
            proptest::prop_assert_eq!(code.is_none(), result.user_coupon_id.is_some());
            proptest::prop_assert_eq!(
                result.coupon_id.is_none(),
                code == Some(ErrorCode::CouponNotFound)
            );
        }
    }

    #[test]
    fn a_missing_coupon_is_not_named_back() {
        let rejection = admit(&request(), true, false).unwrap_err();
        let (_, result) = issue_result(&request(), IssueOutcome::Rejected(rejection));
        assert_eq!(result.coupon_id, None);
        assert_eq!(result.status, Status::Rejected);
    }
}
