//! `Idempotency-Key` on POSTs: the key becomes the request's `request_id`.
//! The gateway remembers a fingerprint of the first request that used a key
//! (in Redis, for `gateway.idempotency_ttl_secs`); the same key with a
//! different body or route is refused with 422.

use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::counters::Counters;

/// What a key is bound to: route and body.
pub fn fingerprint(route: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(body);
    format!("{:x}", hash.finalize())
}

/// Claims `key` for `fingerprint`. Ok when the key is new or was used for the
/// same request before (publishing again is harmless: workers deduplicate).
pub async fn claim(
    counters: &Counters,
    ttl_secs: u64,
    key: &str,
    fingerprint: &str,
) -> Result<(), ApiError> {
    let mut conn = counters.connection();
    let redis_key = counters.key(&format!("idem:{key}"));
    let set: bool = redis::cmd("SET")
        .arg(&redis_key)
        .arg(fingerprint)
        .arg("NX")
        .arg("EX")
        .arg(ttl_secs)
        .query_async::<Option<String>>(&mut conn)
        .await?
        .is_some();
    if set {
        return Ok(());
    }
    let existing: Option<String> = conn.get(&redis_key).await?;
    match existing {
        Some(existing) if existing != fingerprint => {
            Err(ApiError::IdempotencyConflict(key.to_owned()))
        }
        _ => Ok(()),
    }
}

/// Forgets a claim whose request could not be published.
pub async fn release(counters: &Counters, key: &str) {
    let mut conn = counters.connection();
    let _: Result<i64, _> = conn.del(counters.key(&format!("idem:{key}"))).await;
}
