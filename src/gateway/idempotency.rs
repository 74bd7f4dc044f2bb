//! `Idempotency-Key` on POSTs: the key becomes the request's `request_id`.
//! The gateway remembers a fingerprint of the first request that used a key
//! (in Redis, for `gateway.idempotency_ttl_secs`); the same key with a
//! different body or route is refused with 422.
//!
//! Claims go to Redis together: whatever claims arrive while one pipeline is
//! out go in the next, so the keys of many buyers cost Redis one read and
//! one write rather than one each. Each claim is one command, `SET key
//! fingerprint NX GET EX ttl` (Redis 7 or later): it takes a new key and
//! tells the fingerprint a taken one holds.

use std::time::Duration;

use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::error::ApiError;
use crate::counters::Counters;
use crate::telemetry::error_chain;

/// The most claims one pipeline carries.
const MOST_PER_PIPELINE: usize = 512;

/// What a key is bound to: route and body, the body as JSON reads it, so a
/// retry whose client spaced or ordered its fields otherwise is the same
/// request. (A body that decoded but that a JSON value cannot hold, such as
/// `1e400` in a field the API ignores, is taken byte for byte.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// What a new claim stores.
    read: String,
    /// The body byte for byte, as gateways before the JSON reading stored
    /// it: a key they claimed still matches its own retries.
    bytes: String,
}

pub fn fingerprint(route: &str, body: &[u8]) -> Fingerprint {
    let hash = |body: &[u8]| {
        let mut hash = Sha256::new();
        hash.update(route.as_bytes());
        hash.update([0]);
        hash.update(body);
        format!("{:x}", hash.finalize())
    };
    let bytes = hash(body);
    let read = serde_json::from_slice::<serde_json::Value>(body)
        .and_then(|value| serde_json::to_vec(&value))
        .map_or_else(|_| bytes.clone(), |canonical| hash(&canonical));
    Fingerprint { read, bytes }
}

impl Fingerprint {
    /// Whether a key holding `held` was claimed by the same request.
    fn matches(&self, held: &str) -> bool {
        held == self.read || held == self.bytes
    }
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claimed {
    /// The key was free; it is this request's now.
    New,
    /// The key was taken by the same route and body before.
    Again,
    /// The key was taken by another route or body.
    Conflict,
}

struct Claim {
    key: String,
    fingerprint: Fingerprint,
    /// What the claim found, or why Redis could not say.
    answer: oneshot::Sender<Result<Claimed, String>>,
}

/// The gateway's claims of keys, on their way to Redis. Clones share one
/// sending task, which ends once every clone is gone and the claims still
/// queued are answered.
#[derive(Clone)]
pub struct Claims {
    queue: mpsc::Sender<Claim>,
    counters: Counters,
    /// How long a claim waits for its answer before the request is refused.
    patience: Duration,
}

impl Claims {
    /// Starts the task that sends claims to `counters`' Redis, each key kept
    /// `ttl_secs`; a claim not answered within `patience` is refused (503).
    /// Call inside a Tokio runtime.
    pub fn start(counters: Counters, ttl_secs: u64, patience: Duration) -> Self {
        let (queue, mut waiting) = mpsc::channel::<Claim>(4 * MOST_PER_PIPELINE);
        let redis = counters.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MOST_PER_PIPELINE);
            while waiting.recv_many(&mut batch, MOST_PER_PIPELINE).await > 0 {
                send(&redis, ttl_secs, &mut batch).await;
            }
        });
        Self {
            queue,
            counters,
            patience,
        }
    }

    /// Claims `key` for `fingerprint`. Ok when the key is new or was used
    /// for the same request before (publishing again is harmless: workers
    /// deduplicate). The claims' patience counts from the moment the claim
    /// is queued: a claim that waits behind a pipeline Redis is slow to
    /// answer is refused within it too, not only one whose own command is.
    pub async fn claim(&self, key: &str, fingerprint: Fingerprint) -> Result<(), ApiError> {
        let unavailable =
            |reason: &str| ApiError::Unavailable(format!("redis unavailable: {reason}"));
        let (answer, answered) = oneshot::channel();
        let claim = Claim {
            key: self.counters.key(&format!("idem:{key}")),
            fingerprint,
            answer,
        };
        let asked = async {
            self.queue.send(claim).await.ok()?;
            answered.await.ok()
        };
        match tokio::time::timeout(self.patience, asked).await {
            Ok(Some(Ok(Claimed::New | Claimed::Again))) => Ok(()),
            Ok(Some(Ok(Claimed::Conflict))) => Err(ApiError::IdempotencyConflict(key.to_owned())),
            Ok(Some(Err(reason))) => Err(unavailable(&reason)),
            Ok(None) => Err(unavailable("the gateway's key claims are no longer sent")),
            Err(_) => Err(unavailable(&format!(
                "the key was not claimed within {} ms",
                self.patience.as_millis()
            ))),
        }
    }

    /// Forgets a claim whose request could not be published.
    pub async fn release(&self, key: &str) {
        let mut conn = self.counters.connection();
        let _: Result<i64, _> = conn.del(self.counters.key(&format!("idem:{key}"))).await;
    }
}

/// One claim's command: take the key unless taken, and say what it held.
fn claim_command(claim: &Claim, ttl_secs: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(&claim.key)
        .arg(&claim.fingerprint.read)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(ttl_secs);
    cmd
}

/// What a claim found, from the fingerprint its key held before it.
fn claimed(claim: &Claim, held: Option<String>) -> Claimed {
    match held {
        None => Claimed::New,
        Some(held) if claim.fingerprint.matches(&held) => Claimed::Again,
        Some(_) => Claimed::Conflict,
    }
}

/// Sends `claims` to Redis and answers each, leaving `claims` empty: in one
/// pipeline on a single server (its commands run in order, so of two claims
/// of one key the first takes it); one command each on a Redis Cluster,
/// whose keys live on different nodes.
async fn send(counters: &Counters, ttl_secs: u64, claims: &mut Vec<Claim>) {
    // A claim whose request was refused while it waited is not sent.
    claims.retain(|claim| !claim.answer.is_closed());
    if claims.is_empty() {
        return;
    }
    let mut conn = counters.connection();
    let held: Vec<Result<Option<String>, String>> = if conn.is_cluster() {
        futures::future::join_all(claims.iter().map(|claim| {
            let mut conn = conn.clone();
            let cmd = claim_command(claim, ttl_secs);
            async move {
                cmd.query_async::<Option<String>>(&mut conn)
                    .await
                    .map_err(|e| error_chain(&e))
            }
        }))
        .await
    } else {
        let mut pipe = redis::pipe();
        for claim in claims.iter() {
            pipe.add_command(claim_command(claim, ttl_secs));
        }
        match pipe.query_async::<Vec<Option<String>>>(&mut conn).await {
            Ok(held) => held.into_iter().map(Ok).collect(),
            Err(e) => {
                let reason = error_chain(&e);
                claims.iter().map(|_| Err(reason.clone())).collect()
            }
        }
    };
    for (claim, held) in claims.drain(..).zip(held) {
        let found = held.map(|held| claimed(&claim, held));
        let _ = claim.answer.send(found);
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_key_binds_what_the_body_says_not_how_it_is_spelled() {
        let first = fingerprint("charges", br#"{"user_id": 2, "amount": 1000}"#).read;
        for same in [
            &br#"{"amount":1000,"user_id":2}"#[..],
            br#" { "user_id" : 2 ,
                   "amount" : 1000 } "#,
            br#"{"user_\u0069d": 2, "amount": 1000}"#,
        ] {
            assert_eq!(
                fingerprint("charges", same).read,
                first,
                "{}",
                String::from_utf8_lossy(same)
            );
        }
        for other in [
            &br#"{"user_id": 2, "amount": 2000}"#[..],
            br#"{"user_id": 3, "amount": 1000}"#,
            br#"{"user_id": 2, "amount": 1000, "note": "x"}"#,
        ] {
            assert_ne!(fingerprint("charges", other).read, first);
        }
        assert_ne!(
            fingerprint("orders", br#"{"user_id": 2, "amount": 1000}"#).read,
            first,
            "another route"
        );
    }

    #[test]
    fn a_key_claimed_byte_for_byte_still_matches_its_retries() {
        let body = br#"{"user_id": 2, "amount": 1000}"#;
        let mut hash = Sha256::new();
        hash.update(b"charges\0");
        hash.update(body);
        let held = format!("{:x}", hash.finalize());
        assert!(fingerprint("charges", body).matches(&held));
        assert!(!fingerprint("charges", br#"{"user_id": 2, "amount": 2000}"#).matches(&held));
    }
}
