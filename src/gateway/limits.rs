//! Per-user and per-client-address token buckets on the write endpoints
//! (`gateway.limits.<flow>`): a request over a bucket is answered 429 with
//! `Retry-After` and never published. Load protection at the edge, not a
//! business rule: one coupon per user stays the worker's rule.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{FlowLimit, GatewayLimits};
use crate::kafka::Flow;

struct FlowLimiter {
    user: Option<DefaultKeyedRateLimiter<i64>>,
    client: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// Every flow's buckets.
pub struct Limiters {
    charge: FlowLimiter,
    coupon: FlowLimiter,
    order: FlowLimiter,
    clock: DefaultClock,
}

/// `rate` requests a second refill the bucket, which holds `burst` (at least
/// one); no limiter when `rate` is 0.
fn keyed<K: Hash + Eq + Clone>(rate: f64, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)?.allow_burst(burst);
    Some(RateLimiter::keyed(quota))
}

impl FlowLimiter {
    fn new(limit: &FlowLimit) -> Self {
        Self {
            user: keyed(limit.user_per_sec, limit.user_burst),
            client: keyed(limit.client_per_sec, limit.client_burst),
        }
    }
}

impl Limiters {
    pub fn new(limits: &GatewayLimits) -> Self {
        Self {
            charge: FlowLimiter::new(&limits.charge),
            coupon: FlowLimiter::new(&limits.coupon),
            order: FlowLimiter::new(&limits.order),
            clock: DefaultClock::default(),
        }
    }

    fn of(&self, flow: Flow) -> &FlowLimiter {
        match flow {
            Flow::Charge => &self.charge,
            Flow::Coupon => &self.coupon,
            Flow::Order => &self.order,
        }
    }

    /// Takes a token from the client address's bucket; `Err` says when one
    /// will be there.
    pub fn check_client(&self, flow: Flow, client: IpAddr) -> Result<(), Duration> {
        match &self.of(flow).client {
            Some(limiter) => limiter
                .check_key(&client)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Takes a token from the user's bucket; `Err` says when one will be there.
    pub fn check_user(&self, flow: Flow, user_id: i64) -> Result<(), Duration> {
        match &self.of(flow).user {
            Some(limiter) => limiter
                .check_key(&user_id)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Forgets the buckets that are full again, so memory follows the users
    /// and clients of the last moments, not of all time.
    pub fn forget_idle(&self) {
        for flow in Flow::ALL {
            let limiter = self.of(flow);
            if let Some(l) = &limiter.user {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &limiter.client {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }
}
