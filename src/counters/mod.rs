//! Redis atomic counters: coupon stock and product inventory, decided by the
//! Lua scripts in `lua/` (each call is atomic inside Redis).
//!
//! Redis is the fast gate, never the truth: PostgreSQL is. Everything here can
//! be rebuilt from PostgreSQL ([`Counters::load_coupon`],
//! [`Counters::load_products`]). Every key one script touches shares a hash
//! tag (`{coupon:<id>}` or `{inventory}`), so with `redis.cluster = true`
//! coupons spread over the shards of a Redis Cluster by configuration alone.
//! One coupon's stock can be split over several sub-counters
//! ([`CouponShard`], `{coupon:<id>#<k>}`), each its own hash tag and so its
//! own slot: one mega-drop then spreads over the shards too.

mod connection;

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

pub use connection::RedisConn;

use crate::config::RedisSettings;
use crate::domain::coupon::{home_shard, IssueDecision};

/// A counter script with the prelude every script shares in front of it
/// (`lua/prelude.lua`: the error style, the number and hold formats).
fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// The shared part of every counter script.
pub const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Every counter script as it is sent to Redis, by file name (for checks).
pub fn script_sources() -> Vec<(&'static str, String)> {
    [
        ("issue_coupons.lua", include_str!("lua/issue_coupons.lua")),
        ("release_grant.lua", include_str!("lua/release_grant.lua")),
        ("load_coupon.lua", include_str!("lua/load_coupon.lua")),
        ("reserve_stock.lua", include_str!("lua/reserve_stock.lua")),
        ("release_stock.lua", include_str!("lua/release_stock.lua")),
        ("take_stock.lua", include_str!("lua/take_stock.lua")),
        ("give_stock.lua", include_str!("lua/give_stock.lua")),
        (
            "report_frontier.lua",
            include_str!("lua/report_frontier.lua"),
        ),
        ("load_products.lua", include_str!("lua/load_products.lua")),
    ]
    .into_iter()
    .map(|(name, body)| (name, format!("{PRELUDE}{body}")))
    .collect()
}

static ISSUE_COUPONS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/issue_coupons.lua")));
static RELEASE_GRANT: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/release_grant.lua")));
static LOAD_COUPON: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/load_coupon.lua")));
static RESERVE_STOCK: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/reserve_stock.lua")));
static RELEASE_STOCK: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/release_stock.lua")));
static TAKE_STOCK: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/take_stock.lua")));
static GIVE_STOCK: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/give_stock.lua")));
static REPORT_FRONTIER: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/report_frontier.lua")));
static LOAD_PRODUCTS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/load_products.lua")));

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// Redis could not be reached at all (the URL with its password hidden).
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("unexpected answer from a counter script: {0}")]
    Protocol(String),
}

impl CounterError {
    /// Whether a read failed on what the key holds: a value that is not a
    /// number, or a key of another kind (`WRONGTYPE`).
    pub fn is_not_a_number(&self) -> bool {
        use redis::ErrorKind;
        match self {
            CounterError::Redis(e) => {
                e.code() == Some("WRONGTYPE")
                    || matches!(e.kind(), ErrorKind::UnexpectedReturnType | ErrorKind::Parse)
            }
            CounterError::Protocol(_) | CounterError::Connect { .. } => false,
        }
    }

    /// Whether trying again can succeed: Redis unreachable, loading, failing
    /// over or busy. A script that fails on the data it finds (a corrupted
    /// key) or an answer of the wrong shape will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        match self {
            CounterError::Protocol(_) => false,
            CounterError::Connect { .. } => true,
            // A script found a counter that is not what it should be.
            CounterError::Redis(e) if e.code() == Some("STAMPEDE_CORRUPT") => false,
            CounterError::Redis(e) => match e.kind() {
                // An answer of the wrong shape (a script's reply that does
                // not parse as expected) comes back the same way again.
                ErrorKind::UnexpectedReturnType | ErrorKind::Parse => false,
                ErrorKind::Server(ServerErrorKind::ResponseError) => {
                    !e.detail().is_some_and(|d| d.contains("script"))
                }
                _ => true,
            },
        }
    }
}

pub type Result<T> = std::result::Result<T, CounterError>;

/// The counter state of one coupon is missing from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLoaded;

/// One counter of a coupon's stock: the whole coupon (`shards == 1`, keys
/// `{coupon:<id>}`), or sub-counter `index` of a coupon split over `shards`
/// (keys `{coupon:<id>#<index>}`). A user's requests always go to the same
/// sub-counter ([`home_shard`]), which holds the user's holder entry and
/// grants; only stock moves between sub-counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CouponShard {
    pub coupon_id: i64,
    pub index: u32,
    pub shards: u32,
}

impl CouponShard {
    /// The sub-counter of `coupon_id` (split over `shards`) `user_id` belongs to.
    pub fn of_user(coupon_id: i64, shards: u32, user_id: i64) -> Self {
        let shards = shards.max(1);
        Self {
            coupon_id,
            index: home_shard(user_id, shards),
            shards,
        }
    }

    /// Every sub-counter of a coupon split over `shards`, in index order.
    pub fn all(coupon_id: i64, shards: u32) -> impl Iterator<Item = Self> {
        let shards = shards.max(1);
        (0..shards).map(move |index| Self {
            coupon_id,
            index,
            shards,
        })
    }

    /// Sub-counter `index` of the same coupon.
    pub fn sibling(self, index: u32) -> Self {
        Self { index, ..self }
    }

    fn tag(&self) -> String {
        if self.shards <= 1 {
            format!("{{coupon:{}}}", self.coupon_id)
        } else {
            format!("{{coupon:{}#{}}}", self.coupon_id, self.index)
        }
    }
}

/// A coupon kept whole, in one counter.
impl From<i64> for CouponShard {
    fn from(coupon_id: i64) -> Self {
        Self {
            coupon_id,
            index: 0,
            shards: 1,
        }
    }
}

/// One order of a reservation round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRequest {
    pub request_id: String,
    /// `true`: take the stock; `false`: only check it (and release any old hold).
    pub reserve: bool,
    pub items: Vec<(i64, i64)>,
}

/// What the inventory said about one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockAnswer {
    Reserved,
    ReservedEarlier,
    CheckPassed,
    OutOfStock { product_id: i64 },
    NotLoaded { product_id: i64 },
}

#[derive(Clone)]
pub struct Counters {
    conn: RedisConn,
    prefix: String,
    /// The Redis server (its `run_id`) whose counters this process last knew
    /// to match PostgreSQL; shared by every clone.
    known_server: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Held while this process reloads every counter, so its batches and its
    /// watch of the server do not reload the same replaced Redis twice.
    reload_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Counters {
    pub async fn connect(settings: &RedisSettings) -> Result<Self> {
        Ok(Self {
            conn: RedisConn::connect(settings)
                .await
                .map_err(|source| CounterError::Connect {
                    url: crate::config::redact_url(settings.url.as_str()),
                    source,
                })?,
            prefix: settings.key_prefix.clone(),
            known_server: Default::default(),
            reload_gate: Default::default(),
        })
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    fn coupon_keys(&self, shard: impl Into<CouponShard>) -> [String; 3] {
        let tag = format!("{}:{}", self.prefix, shard.into().tag());
        [
            format!("{tag}:stock"),
            format!("{tag}:holders"),
            format!("{tag}:grants"),
        ]
    }

    fn inventory_keys(&self) -> [String; 2] {
        let tag = format!("{}:{{inventory}}", self.prefix);
        [format!("{tag}:stock"), format!("{tag}:holds")]
    }

    /// The identity of the Redis server process answering now: its `run_id`,
    /// new at every start (after a restart, a restore from a snapshot, a
    /// failover). `None` on a Redis Cluster, whose nodes each have their own.
    pub async fn server_id(&self) -> Result<Option<String>> {
        if self.conn.is_cluster() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned()))
    }

    /// The server this process last knew to hold PostgreSQL's figures.
    pub fn known_server(&self) -> Option<String> {
        self.known_server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Taken by whoever reloads every counter for a replaced server.
    pub async fn reload_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload_gate.lock().await
    }

    pub fn remember_server(&self, id: String) {
        *self
            .known_server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id);
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Decides issue requests for one coupon (or one sub-counter of it) in
    /// one atomic call.
    pub async fn issue_coupons(
        &self,
        shard: impl Into<CouponShard>,
        requests: &[(&str, i64)],
    ) -> Result<std::result::Result<Vec<IssueDecision>, NotLoaded>> {
        let keys = self.coupon_keys(shard);
        let mut invocation = ISSUE_COUPONS.key(&keys[0]);
        invocation.key(&keys[1]).key(&keys[2]);
        for (request_id, user_id) in requests {
            invocation.arg(*request_id).arg(*user_id);
        }
        let mut conn = self.conn.clone();
        let codes: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        if codes.first() == Some(&-2) {
            return Ok(Err(NotLoaded));
        }
        if codes.len() != requests.len() {
            return Err(CounterError::Protocol(format!(
                "issue_coupons answered {} codes for {} requests",
                codes.len(),
                requests.len()
            )));
        }
        codes
            .into_iter()
            .map(|code| match code {
                1 | 2 => Ok(IssueDecision::Reserved),
                0 => Ok(IssueDecision::AlreadyIssued),
                -1 => Ok(IssueDecision::SoldOut),
                other => Err(CounterError::Protocol(format!("issue code {other}"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Ok)
    }

    /// Gives back the grant of a request that will never be issued.
    pub async fn release_grant_of(
        &self,
        shard: impl Into<CouponShard>,
        request_id: &str,
    ) -> Result<bool> {
        let keys = self.coupon_keys(shard);
        let mut invocation = RELEASE_GRANT.key(&keys[0]);
        invocation.key(&keys[1]).key(&keys[2]).arg(request_id);
        let mut conn = self.conn.clone();
        let released: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(released == 1)
    }

    /// Forgets the grants of requests whose issue is durable in PostgreSQL.
    pub async fn finish_grants(
        &self,
        shard: impl Into<CouponShard>,
        request_ids: &[&str],
    ) -> Result<()> {
        if request_ids.is_empty() {
            return Ok(());
        }
        let keys = self.coupon_keys(shard);
        let mut conn = self.conn.clone();
        let _: i64 = conn.hdel(&keys[2], request_ids).await?;
        Ok(())
    }

    /// Loads a coupon from PostgreSQL's figures: `left` units, `holders`;
    /// the grants of `decided` requests are dropped as spent. With `force ==
    /// false` a coupon Redis already holds is left alone. The caller holds
    /// the coupon's row lock (see `load_coupon.lua`).
    pub async fn load_coupon(
        &self,
        shard: impl Into<CouponShard>,
        left: i64,
        decided: &[String],
        holders: &[i64],
        force: bool,
    ) -> Result<LoadOutcome> {
        let keys = self.coupon_keys(shard);
        let mut invocation = LOAD_COUPON.key(&keys[0]);
        invocation
            .key(&keys[1])
            .key(&keys[2])
            .arg(if force { "force" } else { "if_missing" })
            .arg(left)
            .arg(decided.len())
            .arg(decided);
        for user in holders {
            invocation.arg(*user);
        }
        let mut conn = self.conn.clone();
        let (previous, pending): (i64, i64) = invocation.invoke_async(&mut conn).await?;
        Ok(match previous {
            -2 => LoadOutcome::AlreadyLoaded,
            -1 => LoadOutcome::Loaded {
                previous: None,
                pending,
            },
            p => LoadOutcome::Loaded {
                previous: Some(p),
                pending,
            },
        })
    }

    /// Takes up to `want` units out of a sub-counter's stock (to hand them to
    /// another); returns how many it took (0 when none is left or it is not
    /// loaded).
    pub async fn take_stock(&self, shard: CouponShard, want: i64) -> Result<i64> {
        let keys = self.coupon_keys(shard);
        let mut conn = self.conn.clone();
        Ok(TAKE_STOCK
            .key(&keys[0])
            .arg(want)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Adds `units` to a sub-counter's stock; `false` (nothing added) when it
    /// is not loaded.
    pub async fn give_stock(&self, shard: CouponShard, units: i64) -> Result<bool> {
        let keys = self.coupon_keys(shard);
        let mut conn = self.conn.clone();
        let added: i64 = GIVE_STOCK
            .key(&keys[0])
            .arg(units)
            .invoke_async(&mut conn)
            .await?;
        Ok(added == 1)
    }

    /// How many grants (units taken by requests not yet cleaned up) a
    /// coupon's counter holds.
    pub async fn grant_count(&self, shard: impl Into<CouponShard>) -> Result<i64> {
        let keys = self.coupon_keys(shard);
        let mut conn = self.conn.clone();
        Ok(conn.hlen(&keys[2]).await?)
    }

    /// The request ids holding a grant of this coupon.
    pub async fn grant_ids(&self, shard: impl Into<CouponShard>) -> Result<Vec<String>> {
        let keys = self.coupon_keys(shard);
        let mut conn = self.conn.clone();
        Ok(conn.hkeys(&keys[2]).await?)
    }

    /// The request ids holding product stock.
    pub async fn hold_ids(&self) -> Result<Vec<String>> {
        let keys = self.inventory_keys();
        let mut conn = self.conn.clone();
        Ok(conn.hkeys(&keys[1]).await?)
    }

    /// Units of a coupon (or one sub-counter) Redis still hands out, if loaded.
    pub async fn coupon_stock(&self, shard: impl Into<CouponShard>) -> Result<Option<i64>> {
        let keys = self.coupon_keys(shard);
        let mut conn = self.conn.clone();
        Ok(conn.get(&keys[0]).await?)
    }

    /// Units of a coupon split over `shards` Redis still hands out, summed
    /// over the sub-counters that are loaded; `None` when none is.
    pub async fn coupon_stock_total(&self, coupon_id: i64, shards: u32) -> Result<Option<i64>> {
        let mut total = None;
        for shard in CouponShard::all(coupon_id, shards) {
            if let Some(left) = self.coupon_stock(shard).await? {
                total = Some(total.unwrap_or(0) + left);
            }
        }
        Ok(total)
    }

    /// One atomic round of all-or-nothing reservations, in order.
    pub async fn reserve_stock(&self, orders: &[StockRequest]) -> Result<Vec<StockAnswer>> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.inventory_keys();
        let mut invocation = RESERVE_STOCK.key(&keys[0]);
        invocation.key(&keys[1]);
        for order in orders {
            invocation
                .arg(&order.request_id)
                .arg(if order.reserve { "reserve" } else { "check" })
                .arg(order.items.len());
            for (product_id, quantity) in &order.items {
                invocation.arg(*product_id).arg(*quantity);
            }
        }
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        if raw.len() != orders.len() * 2 {
            return Err(CounterError::Protocol(format!(
                "reserve_stock answered {} numbers for {} orders",
                raw.len(),
                orders.len()
            )));
        }
        raw.chunks(2)
            .map(|pair| match (pair[0], pair[1]) {
                (1, _) => Ok(StockAnswer::Reserved),
                (2, _) => Ok(StockAnswer::ReservedEarlier),
                (0, _) => Ok(StockAnswer::CheckPassed),
                (-1, product_id) => Ok(StockAnswer::OutOfStock { product_id }),
                (-2, product_id) => Ok(StockAnswer::NotLoaded { product_id }),
                (code, _) => Err(CounterError::Protocol(format!("reserve code {code}"))),
            })
            .collect()
    }

    /// Gives back the holds of orders that will not be paid.
    pub async fn release_stock(&self, request_ids: &[&str]) -> Result<i64> {
        if request_ids.is_empty() {
            return Ok(0);
        }
        let keys = self.inventory_keys();
        let mut invocation = RELEASE_STOCK.key(&keys[0]);
        invocation.key(&keys[1]);
        for id in request_ids {
            invocation.arg(*id);
        }
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    /// Forgets the holds of orders that are durable in PostgreSQL.
    pub async fn finish_holds(&self, request_ids: &[&str]) -> Result<()> {
        if request_ids.is_empty() {
            return Ok(());
        }
        let keys = self.inventory_keys();
        let mut conn = self.conn.clone();
        let _: i64 = conn.hdel(&keys[1], request_ids).await?;
        Ok(())
    }

    /// Loads product stock from PostgreSQL's figures; returns (written, drift).
    /// The holds of `decided` requests are dropped as spent; the caller holds
    /// the products' row locks (see `load_products.lua`).
    pub async fn load_products(
        &self,
        products: &[(i64, i64)],
        decided: &[String],
        force: bool,
    ) -> Result<(i64, i64)> {
        if products.is_empty() {
            return Ok((0, 0));
        }
        let keys = self.inventory_keys();
        let mut invocation = LOAD_PRODUCTS.key(&keys[0]);
        invocation
            .key(&keys[1])
            .arg(if force { "force" } else { "if_missing" })
            .arg(decided.len())
            .arg(decided);
        for (id, stock) in products {
            invocation.arg(*id).arg(*stock);
        }
        let mut conn = self.conn.clone();
        let answer: (i64, i64) = invocation.invoke_async(&mut conn).await?;
        Ok(answer)
    }

    /// Reports, for the consumer group `group`, that process `member` may
    /// still decide requests accepted from `frontier` (ms since the epoch)
    /// on; returns the earliest such time among the group's other processes
    /// that reported within `fresh_ms`, if any (`report_frontier.lua`).
    pub async fn report_frontier(
        &self,
        group: &str,
        member: &str,
        frontier: i64,
        fresh_ms: u64,
    ) -> Result<Option<i64>> {
        let key = format!("{}:{{fcfs:{group}}}:frontiers", self.prefix);
        let mut conn = self.conn.clone();
        Ok(REPORT_FRONTIER
            .key(key)
            .arg(member)
            .arg(frontier)
            .arg(fresh_ms)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Units of a product Redis still sells, if loaded.
    pub async fn product_stock(&self, product_id: i64) -> Result<Option<i64>> {
        let keys = self.inventory_keys();
        let mut conn = self.conn.clone();
        Ok(conn.hget(&keys[0], product_id).await?)
    }
}

/// What loading a coupon did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    AlreadyLoaded,
    /// `previous`: the stock Redis held before; `pending`: grants of
    /// requests not yet decided, which stay taken.
    Loaded {
        previous: Option<i64>,
        pending: i64,
    },
}
