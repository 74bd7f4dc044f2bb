//! The request pipeline all three request flows share.
//!
//! For each micro-batch: decode every message (unreadable or oversized ones go
//! to the DLQ, and get an `invalid_request` result when their `request_id` can
//! be read); answer requests already processed with their stored result, byte
//! for byte; hand the fresh ones, in arrival order, to the flow's `decide`,
//! which makes the effects and the results durable in one transaction; return
//! everything to publish. A request that makes `decide` fail for good is
//! isolated by deciding the batch one request at a time, and only that one
//! goes to the DLQ: the partition keeps flowing.

use foldhash::{HashMap, HashMapExt};
use std::collections::hash_map::Entry;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info_span, warn, Span};

use super::WorkerError;
pub use crate::domain::messages::{RequestMessage, ResultMessage};
use crate::domain::validate::{decode, salvage};
use crate::domain::{ErrorCode, Rejection, RequestId};
use crate::kafka::dlq::dead_letter;
use crate::kafka::handler::{BatchHandler, HandlerError};
use crate::kafka::turns::Turn;
use crate::kafka::Incoming;
use crate::kafka::{Flow, OutMessage, Topics};
use crate::store::processed::{self, NewResult};
use crate::telemetry::{error_chain, metrics, trace_context};

/// How far before its Kafka timestamp a request's own `requested_at` is
/// believed: a producer that claims to be earlier than that gains no more.
const MAX_STAMP_LEAD_MS: i64 = 1_000;

/// The moment a request counts as accepted, for deciding a batch first come
/// first served: its `requested_at` (the gateway's stamp), kept within
/// [`MAX_STAMP_LEAD_MS`] before the broker-side timestamp and never after
/// it; whichever exists when only one does; unstamped requests go last.
fn accepted_ms(requested_at: Option<chrono::DateTime<chrono::Utc>>, kafka_ms: Option<i64>) -> i64 {
    match (requested_at.map(|t| t.timestamp_millis()), kafka_ms) {
        (Some(stamp), Some(ts)) => stamp.clamp(ts.saturating_sub(MAX_STAMP_LEAD_MS), ts),
        (Some(stamp), None) => stamp,
        (None, Some(ts)) => ts,
        (None, None) => i64::MAX,
    }
}

/// A request's `requested_at`, read without decoding the rest. A payload
/// that neither names it nor has an escape (`\`, with which a key can be
/// spelled otherwise) cannot hold it, and is not parsed to find out.
fn requested_at(payload: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        #[serde(
            default,
            deserialize_with = "crate::domain::timestamp::deserialize_opt"
        )]
        requested_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let may_hold_it = memchr::memchr(b'\\', payload).is_some()
        || memchr::memmem::find(payload, b"requested_at").is_some();
    if !may_hold_it {
        return None;
    }
    serde_json::from_slice::<Stamp>(payload)
        .ok()
        .and_then(|s| s.requested_at)
}

/// Builds the stored form of a result.
pub fn stored<R: Serialize>(
    request_id: &RequestId,
    user_id: i64,
    error: Option<ErrorCode>,
    result: &R,
) -> Result<NewResult, WorkerError> {
    Ok(NewResult {
        request_id: request_id.as_str().to_owned(),
        user_id: Some(user_id),
        error_code: error.map(ErrorCode::as_str),
        result: serde_json::to_string(result)?,
    })
}

/// The business logic of one flow.
#[async_trait]
pub trait Decide: Send + Sync {
    type Request: RequestMessage;
    type Result: ResultMessage;

    /// What [`Decide::prepare`] finds out about a batch.
    type Context: Send + Sync;

    fn flow(&self) -> Flow;

    /// Looks up what deciding needs that does not depend on which requests
    /// are replays (which users exist, the coupons named), for every request
    /// of a batch: it runs while the batch's stored results are looked up,
    /// so the two round trips overlap. Rows it reads are never deleted, so
    /// the answer stays true for `decide`.
    async fn prepare(&self, requests: &[&Self::Request]) -> Result<Self::Context, WorkerError>;

    /// Decides requests never processed before, in arrival order, and stores
    /// their effects and results durably. Returns one result per request.
    /// `traces[i]` is the trace context (`traceparent`) that events caused by
    /// `requests[i]` carry on; `context` was prepared for a batch holding
    /// every one of `requests`. A flow with [`Decide::in_flight`] above 1
    /// calls [`Turn::to_record`] once its decisions are taken, before it
    /// writes anything to PostgreSQL.
    async fn decide(
        &self,
        requests: &[&Self::Request],
        traces: &[Option<&str>],
        context: &Self::Context,
        turn: Turn<'_>,
    ) -> Result<Vec<NewResult>, WorkerError>;

    /// How many batches may be in flight at once ([`crate::kafka::turns`]).
    fn in_flight(&self) -> usize {
        1
    }

    /// Called with a request that failed for good and went to the DLQ, to
    /// give back whatever counter state it had taken.
    async fn abandon(&self, _request: &Self::Request) -> Result<(), WorkerError> {
        Ok(())
    }

    /// Called with requests answered from their stored result (a redelivery),
    /// to finish any counter state a crash left behind.
    async fn replayed(&self, _request_ids: &[&str]) -> Result<(), WorkerError> {
        Ok(())
    }
}

/// Runs a flow's [`Decide`] over consumed batches.
pub struct RequestPipeline<D: Decide> {
    logic: D,
    db: PgPool,
    /// The flow's result topic, named once.
    results_topic: Arc<str>,
    max_message_bytes: usize,
}

impl<D: Decide> RequestPipeline<D> {
    pub fn new(logic: D, db: PgPool, topics: Topics, max_message_bytes: usize) -> Self {
        Self {
            results_topic: topics.results(logic.flow()).into(),
            logic,
            db,
            max_message_bytes,
        }
    }

    /// The result of `message`, keyed by user, carrying the trace context.
    fn result_message(
        &self,
        user_id: Option<i64>,
        message: &Incoming,
        json: String,
        traceparent: Option<&str>,
    ) -> OutMessage {
        let key = match user_id {
            Some(id) => id.to_string().into_bytes(),
            None => message.key.clone().unwrap_or_default(),
        };
        let mut out = OutMessage::new(self.results_topic.clone(), key, json)
            .answering(message.partition, message.offset);
        if let Some(traceparent) = traceparent {
            out = out.header(trace_context::HEADER, traceparent);
        }
        out
    }

    /// Dead-letters a message that cannot be decided, and answers it
    /// `invalid_request` when it has a request id (see
    /// [`RequestPipeline::answer_refused`] for the ones decode refused).
    fn invalid(
        &self,
        message: &Incoming,
        request_id: Option<RequestId>,
        user_id: Option<i64>,
        reason: &str,
        out: &mut Vec<OutMessage>,
    ) -> Result<(), WorkerError> {
        self.dead_letter_refused(message, request_id.as_ref(), reason, out);
        if let Some(request_id) = request_id {
            let json = self.refusal(request_id, user_id, reason)?;
            out.push(self.result_message(
                user_id,
                message,
                json,
                message.header_str(trace_context::HEADER),
            ));
        }
        Ok(())
    }

    fn dead_letter_refused(
        &self,
        message: &Incoming,
        request_id: Option<&RequestId>,
        reason: &str,
        out: &mut Vec<OutMessage>,
    ) {
        let kind = self.logic.flow().kind();
        metrics::processed(kind, Some(ErrorCode::InvalidRequest));
        metrics::dead_lettered(kind);
        warn!(topic = %message.topic, partition = message.partition, offset = message.offset, request_id = request_id.map(RequestId::as_str), %reason, "invalid request sent to the DLQ");
        out.push(dead_letter(message, reason));
    }

    /// An `invalid_request` result's JSON.
    fn refusal(
        &self,
        request_id: RequestId,
        user_id: Option<i64>,
        reason: &str,
    ) -> Result<String, WorkerError> {
        let result = D::Result::rejected(
            request_id,
            user_id,
            Rejection::new(ErrorCode::InvalidRequest, reason),
        );
        Ok(serde_json::to_string(&result)?)
    }

    async fn decide_isolating(
        &self,
        batch: &[Incoming],
        fresh: &[(usize, D::Request)],
        (traces, context): (&[Option<&str>], &D::Context),
        turn: Turn<'_>,
        out: &mut Vec<OutMessage>,
    ) -> Result<Vec<Option<NewResult>>, WorkerError> {
        let requests: Vec<&D::Request> = fresh.iter().map(|(_, r)| r).collect();
        match self.logic.decide(&requests, traces, context, turn).await {
            Ok(results) => return Ok(results.into_iter().map(Some).collect()),
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                warn!(error = %error_chain(&e), size = fresh.len(), "batch failed for good; deciding its requests one by one")
            }
        }
        let mut results = Vec::with_capacity(fresh.len());
        for ((index, request), trace) in fresh.iter().zip(traces) {
            match self
                .logic
                .decide(&[request], &[*trace], context, turn)
                .await
            {
                Ok(mut one) => results.push(one.pop()),
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    let reason = format!("cannot be processed: {}", error_chain(&e));
                    warn!(request_id = %request.request_id(), %reason, "poison request sent to the DLQ");
                    metrics::dead_lettered(self.logic.flow().kind());
                    out.push(dead_letter(&batch[*index], &reason));
                    match self.logic.abandon(request).await {
                        Ok(()) => {}
                        Err(e) if e.is_retryable() => return Err(e),
                        // Nothing more can be given back; reconciliation repairs the counter.
                        Err(e) => {
                            warn!(request_id = %request.request_id(), error = %error_chain(&e), "could not give back the counters of a dead-lettered request")
                        }
                    }
                    results.push(None);
                }
            }
        }
        Ok(results)
    }
}

#[async_trait]
impl<D: Decide> BatchHandler for RequestPipeline<D> {
    async fn handle(
        &self,
        batch: &[Incoming],
        turn: Turn<'_>,
    ) -> Result<Vec<OutMessage>, HandlerError> {
        Ok(self.handle_batch(batch, turn).await?)
    }

    fn in_flight(&self) -> usize {
        self.logic.in_flight()
    }

    /// Reads only `requested_at` (the rest is decoded with the batch); an
    /// unreadable message counts from its Kafka timestamp.
    fn accepted_ms(&self, message: &Incoming) -> i64 {
        let stamp = message
            .payload
            .as_deref()
            .filter(|p| p.len() <= self.max_message_bytes)
            .and_then(requested_at);
        accepted_ms(stamp, message.timestamp_ms)
    }
}

/// Why a message is refused whose request id another flow's request used.
fn used_by_another_flow(request_id: &str, kind: &str) -> String {
    format!("request_id {request_id} was already used by a {kind} request")
}

/// The requests of a batch that decoded, each with its index in the batch.
type Decoded<R> = Vec<(usize, R)>;

/// A message decode refused whose request id could be read.
struct Refused {
    /// Its index in the batch.
    index: usize,
    request_id: RequestId,
    user_id: Option<i64>,
    reason: String,
}

/// The requests of a batch to decide, once replays are answered.
struct Fresh<R> {
    /// (index in the batch, request), in acceptance order, each id once.
    requests: Vec<(usize, R)>,
    /// (index, index into `requests` of the first with the same id): a
    /// request published twice into one batch is decided once.
    repeats: Vec<(usize, usize)>,
    /// Per request, its span and the trace context it carries on.
    spans: Vec<(Span, Option<String>)>,
}

impl<D: Decide> RequestPipeline<D> {
    async fn handle_batch(
        &self,
        batch: &[Incoming],
        turn: Turn<'_>,
    ) -> Result<Vec<OutMessage>, WorkerError> {
        turn.to_decide().await;
        let mut out = Vec::with_capacity(batch.len());
        let (mut decoded, refused) = self.decode_all(batch, &mut out)?;
        // First come, first served inside the batch: the intake merged the
        // partitions in acceptance order, but a partition itself can hold
        // requests slightly out of it; decide in the order they were accepted
        // (each message's time as the intake read it, `Self::accepted_ms`).
        decoded.sort_by_key(|(index, _)| batch[*index].accepted_ms);
        let (stored, context) = {
            let requests: Vec<&D::Request> = decoded.iter().map(|(_, r)| r).collect();
            let ids: Vec<&str> = requests
                .iter()
                .map(|r| r.request_id().as_str())
                .chain(refused.iter().map(|r| r.request_id.as_str()))
                .collect();
            // A request id the batch before is still recording is looked up
            // once its result is stored; the batch after waits for this
            // one's likewise. A flow deciding one batch at a time never has
            // a batch before it still recording: it hashes nothing.
            if self.logic.in_flight() > 1 {
                let keys = turn.keys(ids.iter().copied());
                turn.wait_if_held(&keys).await;
                turn.hold(keys);
            }
            tokio::try_join!(
                async { Ok(processed::lookup(&self.db, &ids).await?) },
                self.logic.prepare(&requests)
            )?
        };
        let mut fresh = self
            .answer_replays(batch, decoded, &stored, &mut out)
            .await?;
        if !refused.is_empty() {
            let refusals = self.answer_refused(batch, refused, &stored, &mut fresh, &mut out)?;
            // Stored before anything of the batch is published: a later
            // message of the id, valid or not, is answered the same.
            processed::insert_all(&self.db, self.logic.flow().kind(), &refusals).await?;
        }
        let traces: Vec<Option<&str>> = fresh.spans.iter().map(|(_, t)| t.as_deref()).collect();
        let results = self
            .decide_isolating(batch, &fresh.requests, (&traces, &context), turn, &mut out)
            .await?;
        turn.recorded().await;
        self.answer_decided(batch, &fresh, results, &mut out);
        Ok(out)
    }

    /// Decodes every message; the unreadable and oversized ones go to the
    /// DLQ. Those whose request id can be read are returned beside the
    /// decoded ones, to be answered like any request of that id
    /// ([`RequestPipeline::answer_refused`]).
    fn decode_all(
        &self,
        batch: &[Incoming],
        out: &mut Vec<OutMessage>,
    ) -> Result<(Decoded<D::Request>, Vec<Refused>), WorkerError> {
        let mut decoded = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            let Some(payload) = message.payload.as_deref() else {
                self.invalid(message, None, None, "message has no payload", out)?;
                continue;
            };
            let invalid = if payload.len() > self.max_message_bytes {
                let reason = format!(
                    "message of {} bytes exceeds the limit of {} bytes",
                    payload.len(),
                    self.max_message_bytes
                );
                // Still answered when its request id can be read.
                salvage(payload, reason)
            } else {
                match decode::<D::Request>(payload) {
                    Ok(request) => {
                        decoded.push((index, request));
                        continue;
                    }
                    Err(invalid) => invalid,
                }
            };
            self.dead_letter_refused(message, invalid.request_id.as_ref(), &invalid.reason, out);
            if let Some(request_id) = invalid.request_id {
                refused.push(Refused {
                    index,
                    request_id,
                    user_id: invalid.user_id,
                    reason: invalid.reason,
                });
            }
        }
        Ok((decoded, refused))
    }

    /// Answers the refused messages (each already dead-lettered) as any
    /// message of their request id is answered, so that an id has one
    /// result whatever comes under it: its stored result when it has one; the
    /// result of the request of that id this batch decides; else
    /// `invalid_request`, stored (returned, to be stored before anything
    /// is published) for every later message of that id.
    fn answer_refused(
        &self,
        batch: &[Incoming],
        refused: Vec<Refused>,
        stored: &HashMap<String, processed::StoredResult>,
        fresh: &mut Fresh<D::Request>,
        out: &mut Vec<OutMessage>,
    ) -> Result<Vec<NewResult>, WorkerError> {
        let kind = self.logic.flow().kind();
        let decided: HashMap<&str, usize> = fresh
            .requests
            .iter()
            .enumerate()
            .map(|(at, (_, request))| (request.request_id().as_str(), at))
            .collect();
        let mut refusals: Vec<NewResult> = Vec::new();
        for Refused {
            index,
            request_id,
            user_id,
            reason,
        } in refused
        {
            let message = &batch[index];
            let trace = message.header_str(trace_context::HEADER);
            let id = request_id.as_str();
            let (user_id, json) = if let Some(previous) = stored.get(id) {
                if previous.kind == kind {
                    metrics::replayed(kind);
                    (previous.user_id, previous.result.clone())
                } else {
                    let reason = used_by_another_flow(id, &previous.kind);
                    (user_id, self.refusal(request_id, user_id, &reason)?)
                }
            } else if let Some(&at) = decided.get(id) {
                fresh.repeats.push((index, at));
                continue;
            } else if let Some(first) = refusals.iter().find(|r| r.request_id == id) {
                (first.user_id, first.result.clone())
            } else {
                let json = self.refusal(request_id.clone(), user_id, &reason)?;
                refusals.push(NewResult {
                    request_id: request_id.as_str().to_owned(),
                    user_id,
                    error_code: Some(ErrorCode::InvalidRequest.as_str()),
                    result: json.clone(),
                });
                (user_id, json)
            };
            out.push(self.result_message(user_id, message, json, trace));
        }
        Ok(refusals)
    }

    /// Answers requests already decided (`stored`, by request id) with their
    /// stored result, byte for byte (a request id reused by another flow is
    /// invalid); returns the rest.
    async fn answer_replays(
        &self,
        batch: &[Incoming],
        decoded: Vec<(usize, D::Request)>,
        stored: &HashMap<String, processed::StoredResult>,
        out: &mut Vec<OutMessage>,
    ) -> Result<Fresh<D::Request>, WorkerError> {
        let kind = self.logic.flow().kind();
        let mut replayed = Vec::new();
        let seen = seen_before(&decoded, stored);
        let mut fresh = Fresh {
            requests: Vec::with_capacity(decoded.len()),
            repeats: Vec::new(),
            spans: Vec::with_capacity(decoded.len()),
        };
        for ((index, request), seen) in decoded.into_iter().zip(seen) {
            let message = &batch[index];
            let previous = match seen {
                Seen::Stored(previous) => previous,
                // A request published twice into the same batch: decided once.
                Seen::RepeatOf(first) => {
                    fresh.repeats.push((index, first));
                    continue;
                }
                Seen::New => {
                    fresh.spans.push(request_span(&request, message));
                    fresh.requests.push((index, request));
                    continue;
                }
            };
            let (span, traceparent) = request_span(&request, message);
            let _entered = span.enter();
            if previous.kind == kind {
                debug!("redelivered request answered with its stored result");
                metrics::replayed(kind);
                replayed.push(previous.request_id.as_str());
                out.push(self.result_message(
                    previous.user_id,
                    message,
                    previous.result.clone(),
                    traceparent.as_deref(),
                ));
            } else {
                let reason = used_by_another_flow(request.request_id().as_str(), &previous.kind);
                self.invalid(
                    message,
                    Some(request.request_id().clone()),
                    Some(request.user_id()),
                    &reason,
                    out,
                )?;
            }
        }
        if !replayed.is_empty() {
            self.logic.replayed(&replayed).await?;
        }
        Ok(fresh)
    }

    /// The results of the requests just decided (and of their repeats).
    fn answer_decided(
        &self,
        batch: &[Incoming],
        fresh: &Fresh<D::Request>,
        results: Vec<Option<NewResult>>,
        out: &mut Vec<OutMessage>,
    ) {
        let kind = self.logic.flow().kind();
        // A repeat carries a copy of its first's result; each first then
        // hands its own over without one.
        let repeats: Vec<(usize, usize, Option<i64>, String)> = fresh
            .repeats
            .iter()
            .filter_map(|&(index, first)| {
                let result = results.get(first)?.as_ref()?;
                Some((index, first, result.user_id, result.result.clone()))
            })
            .collect();
        // Counted per outcome once per batch, not once per request.
        let mut outcomes: Vec<(Option<&'static str>, u64)> = Vec::new();
        for (((index, _), result), (span, traceparent)) in
            fresh.requests.iter().zip(results).zip(&fresh.spans)
        {
            let Some(result) = result else { continue };
            let code = result.error_code;
            let _entered = span.enter();
            span.record("outcome", code.unwrap_or("succeeded"));
            debug!("request decided");
            match outcomes.iter_mut().find(|(seen, _)| *seen == code) {
                Some((_, count)) => *count += 1,
                None => outcomes.push((code, 1)),
            }
            out.push(self.result_message(
                result.user_id,
                &batch[*index],
                result.result,
                traceparent.as_deref(),
            ));
        }
        for (code, count) in outcomes {
            metrics::processed_code(kind, code, count);
        }
        for (index, first, user_id, json) in repeats {
            metrics::replayed(kind);
            out.push(self.result_message(
                user_id,
                &batch[index],
                json,
                fresh.spans[first].1.as_deref(),
            ));
        }
    }
}

/// Where a request of a batch was seen before.
#[derive(Debug, PartialEq)]
enum Seen<'a> {
    /// Decided earlier: its stored result.
    Stored(&'a processed::StoredResult),
    /// Not stored, but earlier in the batch: the index among the fresh
    /// requests (those not stored, each id once) of the first with its id.
    RepeatOf(usize),
    /// Neither: a fresh request.
    New,
}

/// For each of `decoded`, where it was seen before (one look-up in
/// `stored` per request).
fn seen_before<'a, R: RequestMessage>(
    decoded: &[(usize, R)],
    stored: &'a HashMap<String, processed::StoredResult>,
) -> Vec<Seen<'a>> {
    let mut first_seen: HashMap<&str, usize> = HashMap::with_capacity(decoded.len());
    decoded
        .iter()
        .map(|(_, request)| {
            let id = request.request_id().as_str();
            if let Some(previous) = stored.get(id) {
                return Seen::Stored(previous);
            }
            let fresh = first_seen.len();
            match first_seen.entry(id) {
                Entry::Occupied(first) => Seen::RepeatOf(*first.get()),
                Entry::Vacant(slot) => {
                    slot.insert(fresh);
                    Seen::New
                }
            }
        })
        .collect()
}

/// The span of one request, a child of the span that published it, and the
/// trace context its result and events carry on: this span when spans are
/// exported, else the one the request came with.
fn request_span<R: RequestMessage>(request: &R, message: &Incoming) -> (Span, Option<String>) {
    let incoming = message.header_str(trace_context::HEADER);
    let span = info_span!(
        "request",
        request_id = %request.request_id(),
        topic = %message.topic,
        partition = message.partition,
        offset = message.offset,
        trace_id = incoming.and_then(trace_context::trace_id),
        outcome = tracing::field::Empty,
    );
    trace_context::adopt(&span, incoming);
    let traceparent = trace_context::outgoing(&span).or_else(|| incoming.map(str::to_owned));
    (span, traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_request_id_again_in_a_batch_points_at_the_first_fresh_one() {
        use crate::domain::messages::ChargeRequest;
        let request = |id: &str| {
            let json = format!(r#"{{"request_id": "{id}", "user_id": 1, "amount": 1000}}"#);
            decode::<ChargeRequest>(json.as_bytes()).expect("a valid request")
        };
        let decoded: Vec<(usize, ChargeRequest)> = ["a", "b", "a", "old", "c", "b", "old", "a"]
            .into_iter()
            .enumerate()
            .map(|(i, id)| (i, request(id)))
            .collect();
        let old = processed::StoredResult {
            request_id: "old".into(),
            kind: "charge".into(),
            user_id: Some(1),
            result: "{}".into(),
        };
        let stored: HashMap<String, processed::StoredResult> =
            [("old".to_owned(), old.clone())].into_iter().collect();
        // Fresh, each id once: a (0), b (1), c (2).
        use Seen::{New, RepeatOf, Stored};
        assert_eq!(
            seen_before(&decoded, &stored),
            [
                New,
                New,
                RepeatOf(0),
                Stored(&old),
                New,
                RepeatOf(1),
                Stored(&old),
                RepeatOf(0)
            ]
        );
    }

    #[test]
    fn a_requests_stamp_is_read_however_its_key_is_spelled() {
        let at = chrono::Utc.timestamp_millis_opt(1_795_000_000_000).single();
        let stamp = |payload: &str| requested_at(payload.as_bytes());
        assert_eq!(
            stamp(r#"{"request_id":"a","user_id":1,"requested_at":"2026-11-18T11:06:40Z"}"#),
            at
        );
        // The same key to a JSON reader, spelled with an escape.
        assert_eq!(
            stamp(r#"{"request_id":"a","user_id":1,"requested\u005fat":"2026-11-18T11:06:40Z"}"#),
            at
        );
        assert_eq!(
            stamp(r#"{"request_id":"a","user_id":1,"coupon_id":7}"#),
            None
        );
        assert_eq!(stamp(r#"{"request_id":"a\"","requested_at":null}"#), None);
        assert_eq!(stamp("not json, requested_at"), None);
    }

    #[test]
    fn a_stamp_counts_within_a_second_before_the_broker_timestamp() {
        let at = |ms: i64| chrono::Utc.timestamp_millis_opt(ms).single();
        assert_eq!(accepted_ms(at(9_500), Some(10_000)), 9_500);
        assert_eq!(
            accepted_ms(at(1), Some(10_000)),
            9_000,
            "no earlier than 1 s before"
        );
        assert_eq!(
            accepted_ms(at(12_000), Some(10_000)),
            10_000,
            "never after the broker"
        );
        assert_eq!(accepted_ms(at(7), None), 7);
        assert_eq!(accepted_ms(None, Some(10_000)), 10_000);
        assert_eq!(accepted_ms(None, None), i64::MAX, "unstamped goes last");
    }
}
