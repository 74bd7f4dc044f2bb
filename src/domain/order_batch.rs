//! Deciding a batch of orders against the state read for it, without I/O.
//!
//! The order worker locks the rows a batch touches and reads them into an
//! [`OrderBook`]. Orders go in [`rounds`]: a user's k-th order of the batch is
//! in round k, so it sees the balance and coupon use the user's earlier
//! orders left. For each order of a round the book gives a [`Candidate`]
//! (priced and paid for, or rejected); Redis then answers whether its stock is
//! there, and [`OrderBook::settle`] turns candidate and answer into a
//! [`Verdict`], updating the book (balance, coupon used, stock left) for the
//! rounds after. [`paid_order`] is what a paid order answers and reports.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use chrono::{DateTime, Utc};

use super::coupon::Discount;
use super::error_code::{ErrorCode, Rejection};
use super::messages::{OrderRequest, OrderResult, OrderStats, StatsItem, Status};
use super::order::{pay, price_order, CouponHolding, PricedItem, Pricing};

/// A coupon a user holds, as an order sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponHeld {
    /// The holding's own id (`user_coupons.id`), marked used by a payment.
    pub user_coupon_id: i64,
    pub used: bool,
    pub expires_at: DateTime<Utc>,
    pub discount: Discount,
}

/// The rounds of a batch whose orders come from `users` (in batch order):
/// indexes into the batch, a user's k-th order in round k.
pub fn rounds(users: impl IntoIterator<Item = i64>) -> Vec<Vec<usize>> {
    let mut per_user: HashMap<i64, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, user) in users.into_iter().enumerate() {
        let k = per_user.entry(user).or_default();
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// How an order that can be paid pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub pricing: Pricing,
    /// The user's balance once paid.
    pub balance_after: i64,
    /// The holding marked used, when a valid coupon was applied.
    pub used_coupon: Option<i64>,
}

/// An order before its stock answered: its lines at today's prices, and how
/// it pays — or why it cannot (its stock is only checked then, so
/// `out_of_stock` keeps its precedence and nothing is held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub items: Vec<PricedItem>,
    pub payment: Result<Payment, Rejection>,
}

impl Candidate {
    /// Whether its stock is to be reserved (it can pay) or only checked.
    pub fn reserves(&self) -> bool {
        self.payment.is_ok()
    }
}

/// What Redis said about a candidate's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    /// Reserved (or, for an order that cannot pay, checked and there).
    Available,
    OutOfStock {
        product_id: i64,
    },
}

/// How an order ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Rejected(Rejection),
    Paid {
        payment: Payment,
        items: Vec<PricedItem>,
    },
}

/// A settled order. `short`: Redis reserved stock of this product that
/// PostgreSQL does not have — the order is out of stock, its hold must go
/// back and the product be reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub verdict: Verdict,
    pub short: Option<i64>,
}

/// The state a batch of orders is decided against (read under its locks),
/// kept up to date as orders are paid.
#[derive(Debug, Clone)]
pub struct OrderBook {
    balances: HashMap<i64, i64>,
    prices: HashMap<i64, i64>,
    stock: HashMap<i64, i64>,
    holdings: HashMap<(i64, i64), CouponHeld>,
    used: HashSet<i64>,
    now: DateTime<Utc>,
}

impl OrderBook {
    /// `balances` per user; `products`: id → (price, stock); `holdings` per
    /// (user, coupon) the batch names.
    pub fn new(
        balances: HashMap<i64, i64>,
        products: impl IntoIterator<Item = (i64, (i64, i64))>,
        holdings: HashMap<(i64, i64), CouponHeld>,
        now: DateTime<Utc>,
    ) -> Self {
        let (prices, stock) = products
            .into_iter()
            .map(|(id, (price, stock))| ((id, price), (id, stock)))
            .unzip();
        Self {
            balances,
            prices,
            stock,
            holdings,
            used: HashSet::new(),
            now,
        }
    }

    /// A user's balance as the batch has left it so far.
    pub fn balance(&self, user_id: i64) -> Option<i64> {
        self.balances.get(&user_id).copied()
    }

    /// Prices an order and pays for it on paper. `Err`: it is rejected
    /// before any stock is asked for (unknown user or product).
    pub fn candidate(&self, order: &OrderRequest) -> Result<Candidate, Rejection> {
        let Some(balance) = self.balance(order.user_id) else {
            return Err(Rejection::new(
                ErrorCode::UserNotFound,
                format!("user {} does not exist", order.user_id),
            ));
        };
        let items = order
            .items
            .iter()
            .map(|item| {
                let unit_price = *self.prices.get(&item.product_id).ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::ProductNotFound,
                        format!("product {} does not exist", item.product_id),
                    )
                })?;
                Ok(PricedItem {
                    product_id: item.product_id,
                    quantity: item.quantity,
                    unit_price,
                })
            })
            .collect::<Result<Vec<_>, Rejection>>()?;
        let held =
            order
                .coupon_id
                .map(|coupon| match self.holdings.get(&(order.user_id, coupon)) {
                    None => (CouponHolding::NotOwned, None),
                    Some(h) => (
                        CouponHolding::Owned {
                            used: h.used || self.used.contains(&h.user_coupon_id),
                            expires_at: h.expires_at,
                            discount: h.discount,
                        },
                        Some(h.user_coupon_id),
                    ),
                });
        let payment = price_order(order.coupon_id, &items, held.map(|(h, _)| h), self.now)
            .and_then(|pricing| {
                Ok(Payment {
                    pricing,
                    balance_after: pay(balance, pricing.paid)?,
                    used_coupon: held
                        .and_then(|(_, id)| id)
                        .filter(|_| pricing.coupon_applied),
                })
            });
        Ok(Candidate { items, payment })
    }

    /// Decides a candidate once its stock answered; a paid order's balance,
    /// coupon and stock count for the orders after it.
    pub fn settle(&mut self, order: &OrderRequest, candidate: Candidate, stock: Stock) -> Settled {
        let rejected = |rejection| Settled {
            verdict: Verdict::Rejected(rejection),
            short: None,
        };
        let payment = match (stock, candidate.payment) {
            (Stock::OutOfStock { product_id }, _) => return rejected(out_of_stock(product_id)),
            (Stock::Available, Err(rejection)) => return rejected(rejection),
            (Stock::Available, Ok(payment)) => payment,
        };
        // PostgreSQL's stock is the truth: Redis selling more is drift.
        if let Some(short) = candidate
            .items
            .iter()
            .find(|i| self.stock.get(&i.product_id).copied().unwrap_or(0) < i.quantity)
        {
            return Settled {
                verdict: Verdict::Rejected(out_of_stock(short.product_id)),
                short: Some(short.product_id),
            };
        }
        for item in &candidate.items {
            *self.stock.entry(item.product_id).or_default() -= item.quantity;
        }
        self.balances.insert(order.user_id, payment.balance_after);
        self.used.extend(payment.used_coupon);
        Settled {
            verdict: Verdict::Paid {
                payment,
                items: candidate.items,
            },
            short: None,
        }
    }
}

/// The rejection of an order whose stock ran out.
pub fn out_of_stock(product_id: i64) -> Rejection {
    Rejection::new(
        ErrorCode::OutOfStock,
        format!("product {product_id} does not have enough stock"),
    )
}

/// What a paid order answers, and the statistics event it reports.
pub fn paid_order(
    order: &OrderRequest,
    order_id: i64,
    payment: &Payment,
    items: &[PricedItem],
    now: DateTime<Utc>,
) -> (OrderResult, OrderStats) {
    let pricing = payment.pricing;
    let result = OrderResult {
        request_id: order.request_id.clone(),
        user_id: Some(order.user_id),
        status: Status::Succeeded,
        order_id: Some(order_id),
        total_amount: Some(pricing.total),
        discount_amount: Some(pricing.discount),
        paid_amount: Some(pricing.paid),
        balance: Some(payment.balance_after),
        coupon_applied: Some(pricing.coupon_applied),
        error: None,
    };
    let stats = OrderStats {
        order_id,
        user_id: order.user_id,
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
        coupon_id: order.coupon_id.filter(|_| pricing.coupon_applied),
    };
    (result, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::messages::OrderItem;
    use crate::domain::RequestId;
    use proptest::prelude::*;

    fn order(id: &str, user_id: i64, items: &[(i64, i64)], coupon_id: Option<i64>) -> OrderRequest {
        OrderRequest {
            request_id: RequestId::parse(id).unwrap(),
            user_id,
            items: items
                .iter()
                .map(|(product_id, quantity)| OrderItem {
                    product_id: *product_id,
                    quantity: *quantity,
                })
                .collect(),
            coupon_id,
            requested_at: None,
        }
    }

    fn book(balances: &[(i64, i64)], products: &[(i64, i64, i64)]) -> OrderBook {
        OrderBook::new(
            balances.iter().copied().collect(),
            products
                .iter()
                .map(|(id, price, stock)| (*id, (*price, *stock))),
            [(
                (1, 9),
                CouponHeld {
                    user_coupon_id: 90,
                    used: false,
                    expires_at: Utc::now() + chrono::Duration::days(1),
                    discount: Discount::Fixed { amount: 500 },
                },
            )]
            .into_iter()
            .collect(),
            Utc::now(),
        )
    }

    fn decide(book: &mut OrderBook, o: &OrderRequest) -> Verdict {
        match book.candidate(o) {
            Err(rejection) => Verdict::Rejected(rejection),
            Ok(c) => book.settle(o, c, Stock::Available).verdict,
        }
    }

    fn code(v: &Verdict) -> Option<ErrorCode> {
        match v {
            Verdict::Rejected(r) => Some(r.code),
            Verdict::Paid { .. } => None,
        }
    }

    #[test]
    fn a_users_orders_go_in_rounds_in_batch_order() {
        assert_eq!(
            rounds([1, 2, 1, 1, 3, 2]),
            vec![vec![0, 1, 4], vec![2, 5], vec![3]]
        );
    }

    #[test]
    fn unknown_users_and_products_are_rejected_before_any_stock() {
        let b = book(&[(1, 10_000)], &[(5, 1_000, 3)]);
        let e = b.candidate(&order("a", 2, &[(5, 1)], None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UserNotFound);
        let e = b
            .candidate(&order("b", 1, &[(5, 1), (6, 1)], None))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ProductNotFound);
    }

    #[test]
    fn a_later_order_sees_the_balance_and_coupon_an_earlier_one_left() {
        let mut b = book(&[(1, 3_000)], &[(5, 1_000, 10)]);
        let first = decide(&mut b, &order("a", 1, &[(5, 2)], Some(9)));
        let Verdict::Paid { payment, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            (payment.pricing.paid, payment.balance_after),
            (1_500, 1_500)
        );
        assert_eq!(payment.used_coupon, Some(90));
        let second = decide(&mut b, &order("b", 1, &[(5, 1)], Some(9)));
        assert_eq!(code(&second), Some(ErrorCode::CouponAlreadyUsed));
        let third = decide(&mut b, &order("c", 1, &[(5, 2)], None));
        assert_eq!(code(&third), Some(ErrorCode::InsufficientBalance));
        assert_eq!(b.balance(1), Some(1_500));
    }

    #[test]
    fn out_of_stock_comes_first_and_drift_against_postgres_is_named() {
        let mut b = book(&[(1, 100), (2, 100_000)], &[(5, 1_000, 1)]);
        // Cannot pay, and Redis says out of stock: out of stock wins.
        let poor = order("a", 1, &[(5, 1)], None);
        let c = b.candidate(&poor).unwrap();
        assert!(!c.reserves());
        let s = b.settle(&poor, c, Stock::OutOfStock { product_id: 5 });
        assert_eq!(code(&s.verdict), Some(ErrorCode::OutOfStock));
        // Redis reserved 2 where PostgreSQL has 1.
        let rich = order("b", 2, &[(5, 2)], None);
        let c = b.candidate(&rich).unwrap();
        let s = b.settle(&rich, c, Stock::Available);
        assert_eq!(code(&s.verdict), Some(ErrorCode::OutOfStock));
        assert_eq!(s.short, Some(5));
        assert_eq!(b.balance(2), Some(100_000), "nothing paid");
    }

    #[test]
    fn a_paid_order_reports_what_it_paid() {
        let o = order("a", 1, &[(5, 2)], Some(9));
        let mut b = book(&[(1, 3_000)], &[(5, 1_000, 10)]);
        let Verdict::Paid { payment, items } = decide(&mut b, &o) else {
            panic!()
        };
        let (result, stats) = paid_order(&o, 77, &payment, &items, b.now);
        assert_eq!(result.status, Status::Succeeded);
        assert_eq!((result.order_id, result.balance), (Some(77), Some(1_500)));
        assert_eq!(
            (stats.order_id, stats.coupon_id, stats.paid_amount),
            (77, Some(9), 1_500)
        );
    }

    proptest! {
        /// Whatever the orders: no balance goes negative, every balance is
        /// its start less what its paid orders paid, no product sells more
        /// than PostgreSQL had, and the one coupon discounts one order.
        #[test]
        fn a_batch_keeps_the_ledgers_promises(
            start in proptest::collection::vec(0i64..20_000, 1..4),
            stock in proptest::collection::vec(0i64..5, 1..4),
            orders in proptest::collection::vec(
                (0usize..4, proptest::collection::vec((0usize..4, 1i64..4), 1..3), any::<bool>()),
                0..30,
            ),
        ) {
            let users: Vec<(i64, i64)> = start.iter().enumerate().map(|(i, b)| (i as i64 + 1, *b)).collect();
            let products: Vec<(i64, i64, i64)> = stock.iter().enumerate().map(|(i, s)| (i as i64 + 1, 1_000 * (i as i64 + 1), *s)).collect();
            let mut b = book(&users, &products);
            let requests: Vec<OrderRequest> = orders.iter().enumerate().map(|(n, (u, lines, coupon))| {
                let mut seen = HashSet::new();
                let items: Vec<(i64, i64)> = lines.iter()
                    .map(|(p, q)| (*p as i64 % stock.len() as i64 + 1, *q))
                    .filter(|(p, _)| seen.insert(*p))
                    .collect();
                order(&format!("o-{n}"), *u as i64 % 4 + 1, &items, coupon.then_some(9))
            }).collect();
            let mut paid: HashMap<i64, i64> = HashMap::new();
            let mut sold: HashMap<i64, i64> = HashMap::new();
            let mut coupon_uses = 0;
            for round in rounds(requests.iter().map(|r| r.user_id)) {
                for i in round {
                    if let Verdict::Paid { payment, items } = decide(&mut b, &requests[i]) {
                        *paid.entry(requests[i].user_id).or_default() += payment.pricing.paid;
                        for item in items { *sold.entry(item.product_id).or_default() += item.quantity; }
                        coupon_uses += usize::from(payment.used_coupon.is_some());
                    }
                }
            }
            for (user, balance) in &users {
                let now = b.balance(*user).unwrap();
                prop_assert!(now >= 0);
                prop_assert_eq!(now, balance - paid.get(user).copied().unwrap_or(0));
            }
            for (id, _, had) in &products {
                prop_assert!(sold.get(id).copied().unwrap_or(0) <= *had);
            }
            prop_assert!(coupon_uses <= 1);
        }
    }
}
