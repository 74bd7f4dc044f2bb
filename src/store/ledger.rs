//! The ledger's promises as queries: each counts the rows that break one
//! (`stampede audit`, loadgen's verdict, the chaos runs).

use sqlx::PgPool;

use super::Result;

/// One promise the ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    IssuedWithinStock,
    IssuedMatchesRows,
    OneCouponPerUser,
    BalanceNotNegative,
    BalanceIsHistory,
    ProductStockNotNegative,
    OrderAmountsAddUp,
    OneResultPerRequest,
    CouponUsedOnce,
    OneStatsEventPerOrder,
    ReferencesExist,
}

impl Invariant {
    pub const ALL: [Invariant; 11] = [
        Invariant::IssuedWithinStock,
        Invariant::IssuedMatchesRows,
        Invariant::OneCouponPerUser,
        Invariant::BalanceNotNegative,
        Invariant::BalanceIsHistory,
        Invariant::ProductStockNotNegative,
        Invariant::OrderAmountsAddUp,
        Invariant::OneResultPerRequest,
        Invariant::CouponUsedOnce,
        Invariant::OneStatsEventPerOrder,
        Invariant::ReferencesExist,
    ];

    /// The query counting violations. `recent` bounds the checks that match
    /// effects against stored results, which are only kept for the
    /// retention window.
    fn sql(self, recent: &str) -> String {
        match self {
            Invariant::IssuedWithinStock => {
                "SELECT count(*) FROM coupons WHERE issued > total_quantity".into()
            }
            Invariant::IssuedMatchesRows => "SELECT count(*) FROM coupons c WHERE c.issued <> \
                (SELECT count(*) FROM user_coupons uc WHERE uc.coupon_id = c.id)"
                .into(),
            Invariant::OneCouponPerUser => "SELECT count(*) FROM (SELECT 1 FROM user_coupons \
                GROUP BY user_id, coupon_id HAVING count(*) > 1) d"
                .into(),
            Invariant::BalanceNotNegative => "SELECT count(*) FROM users WHERE balance < 0".into(),
            Invariant::BalanceIsHistory => "SELECT count(*) FROM users u LEFT JOIN \
                (SELECT user_id, sum(amount) AS total FROM balance_history GROUP BY user_id) h \
                ON h.user_id = u.id WHERE u.balance <> COALESCE(h.total, 0)"
                .into(),
            Invariant::ProductStockNotNegative => {
                "SELECT count(*) FROM products WHERE stock < 0".into()
            }
            Invariant::OrderAmountsAddUp => "SELECT count(*) FROM orders o \
                WHERE o.paid_amount <> o.total_amount - o.discount_amount"
                .into(),
            Invariant::OneResultPerRequest => format!(
                "SELECT (SELECT count(*) FROM orders o WHERE o.ordered_at > {recent} AND NOT EXISTS \
                   (SELECT 1 FROM processed_requests p WHERE p.request_id = o.request_id AND p.status = 'succeeded'))
                 + (SELECT count(*) FROM user_coupons uc WHERE uc.issued_at > {recent} AND NOT EXISTS \
                   (SELECT 1 FROM processed_requests p WHERE p.request_id = uc.request_id AND p.status = 'succeeded'))
                 + (SELECT count(*) FROM balance_history h WHERE h.kind = 'charge' AND h.created_at > {recent} AND NOT EXISTS \
                   (SELECT 1 FROM processed_requests p WHERE p.request_id = h.request_id AND p.status = 'succeeded'))
                 + (SELECT count(*) FROM processed_requests p WHERE p.status = 'succeeded' AND p.kind = 'order' AND NOT EXISTS \
                   (SELECT 1 FROM orders o WHERE o.request_id = p.request_id))
                 + (SELECT count(*) FROM processed_requests p WHERE p.status = 'succeeded' AND p.kind = 'coupon' AND NOT EXISTS \
                   (SELECT 1 FROM user_coupons uc WHERE uc.request_id = p.request_id))"
            ),
            Invariant::CouponUsedOnce => "SELECT count(*) FROM (SELECT coupon_id FROM orders o \
                WHERE o.coupon_applied GROUP BY user_id, coupon_id HAVING count(*) > 1) d"
                .into(),
            // A published event's row is deleted: published events are
            // counted on the stats topic (`audit::audit_stats_topic`).
            Invariant::OneStatsEventPerOrder => {
                "SELECT (SELECT count(*) FROM outbox x WHERE x.published_at IS NULL \
                   AND x.order_id IS NOT NULL AND NOT EXISTS \
                   (SELECT 1 FROM orders o WHERE o.id = x.order_id))
                 + (SELECT count(*) FROM (SELECT 1 FROM outbox x WHERE x.published_at IS NULL \
                   AND x.order_id IS NOT NULL GROUP BY x.order_id HAVING count(*) > 1) d)"
                .into()
            },
            // The order and coupon paths' references have no foreign keys
            // (migrations `hot_path_references`, `issue_references`):
            // checked here instead.
            Invariant::ReferencesExist => "SELECT \
                (SELECT count(*) FROM balance_history h WHERE NOT EXISTS \
                   (SELECT 1 FROM users u WHERE u.id = h.user_id))
                + (SELECT count(*) FROM orders o WHERE NOT EXISTS \
                   (SELECT 1 FROM users u WHERE u.id = o.user_id) \
                   OR (o.coupon_id IS NOT NULL AND NOT EXISTS \
                   (SELECT 1 FROM coupons c WHERE c.id = o.coupon_id)))
                + (SELECT count(*) FROM order_items i WHERE NOT EXISTS \
                   (SELECT 1 FROM orders o WHERE o.id = i.order_id) \
                   OR NOT EXISTS (SELECT 1 FROM products p WHERE p.id = i.product_id))
                + (SELECT count(*) FROM user_coupons uc WHERE NOT EXISTS \
                   (SELECT 1 FROM users u WHERE u.id = uc.user_id) \
                   OR NOT EXISTS (SELECT 1 FROM coupons c WHERE c.id = uc.coupon_id))"
                .into(),
        }
    }
}

/// How far back, in hours, the audit matches effects against what is kept
/// for `retention_hours` only (stored results; stats events, on the topic):
/// the retention window less an hour's margin.
pub fn window_hours(retention_hours: u64) -> u64 {
    retention_hours.saturating_sub(1)
}

/// Rows breaking `invariant`; effects older than [`window_hours`] are not
/// matched against stored results.
pub async fn violations(db: &PgPool, invariant: Invariant, retention_hours: u64) -> Result<i64> {
    let recent = format!("now() - interval '{} hours'", window_hours(retention_hours));
    Ok(sqlx::query_scalar(&invariant.sql(&recent))
        .fetch_one(db)
        .await?)
}
