//! A place in line: while a request is pending, how many requests ahead of
//! it in its partition are not yet decided, and when its turn should come.
//!
//! The gateway knows where each request it published landed (partition and
//! offset, from the broker's acknowledgement). Workers put the place of the
//! request on every result (headers `source.partition`, `source.offset`),
//! and the gateway's result follower keeps, per flow and partition, the
//! highest offset decided so far and the rate offsets are being decided at.
//! Before any result is seen (a gateway just started), the worker group's
//! committed offset stands in. Requests ahead = offset − (decided through +
//! 1): a partition is decided in order, so that count only falls.
//!
//! Kafka clients do the same computation with the offset their producer's
//! delivery report gives and the `source.offset` headers on the result topic
//! (or the group `<group_id>.<flow>`'s committed offset).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::{Flow, Topics};

/// Places remembered at most; the oldest are forgotten first (their GET then
/// answers a plain `pending`).
const CAPACITY: usize = 500_000;
/// How often the committed offset of a partition may be asked for.
const COMMITTED_EVERY: Duration = Duration::from_secs(1);
/// Weight of the newest rate sample in the moving average.
const RATE_WEIGHT: f64 = 0.3;

/// Where a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub flow: Flow,
    pub partition: i32,
    pub offset: i64,
}

/// What a pending request is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub position: i64,
    pub eta_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Highest offset decided.
    through: i64,
    /// Offsets decided per second, smoothed; `None` until measured.
    rate: Option<f64>,
    sampled_at: Instant,
    sampled_through: i64,
}

#[derive(Default)]
struct State {
    /// Each id is held once, by the map and the queue together.
    places: HashMap<Arc<str>, Place>,
    order: VecDeque<Arc<str>>,
    marks: HashMap<(Flow, i32), Mark>,
    committed_asked: HashMap<(Flow, i32), Instant>,
}

/// The gateway's view of every partition's line; cheap to clone.
#[derive(Clone, Default)]
pub struct Line {
    state: Arc<Mutex<State>>,
}

impl Line {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers where a request this gateway published landed.
    pub fn placed(&self, request_id: &str, place: Place) {
        let id: Arc<str> = Arc::from(request_id);
        let mut s = self.lock();
        if s.places.insert(Arc::clone(&id), place).is_none() {
            s.order.push_back(id);
        }
        while s.order.len() > CAPACITY {
            if let Some(old) = s.order.pop_front() {
                s.places.remove(&old);
            }
        }
    }

    /// A result was seen: its request is decided, and so is everything
    /// before it in its partition.
    pub fn decided(&self, flow: Flow, partition: i32, offset: i64, request_id: Option<&str>) {
        let mut s = self.lock();
        if let Some(id) = request_id {
            s.places.remove(id);
        }
        advance(&mut s.marks, (flow, partition), offset, Instant::now());
    }

    pub fn place_of(&self, request_id: &str) -> Option<Place> {
        self.lock().places.get(request_id).copied()
    }

    /// The standing of a pending request at `place`, from what is known now.
    pub fn standing(&self, place: Place) -> Standing {
        let s = self.lock();
        let mark = s.marks.get(&(place.flow, place.partition));
        let through = mark.map_or(-1, |m| m.through);
        let position = (place.offset - through - 1).max(0);
        let eta_ms = mark
            .and_then(|m| m.rate)
            .filter(|r| *r > 0.0)
            .map(|r| (position as f64 / r * 1_000.0).round() as u64);
        Standing { position, eta_ms }
    }

    /// Whether the committed offset of this partition is worth asking for
    /// (none asked for within [`COMMITTED_EVERY`]); marks it asked.
    fn should_ask_committed(&self, flow: Flow, partition: i32) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        match s.committed_asked.get(&(flow, partition)) {
            Some(at) if now.duration_since(*at) < COMMITTED_EVERY => false,
            _ => {
                s.committed_asked.insert((flow, partition), now);
                true
            }
        }
    }

    /// Until a result of its partition has been seen, brings the partition's
    /// mark up to the worker group's committed offset (everything before it
    /// is decided), asking at most once a second.
    pub async fn refresh_from_committed(&self, settings: &Settings, place: Place) {
        if self
            .lock()
            .marks
            .contains_key(&(place.flow, place.partition))
            || !self.should_ask_committed(place.flow, place.partition)
        {
            return;
        }
        let settings = settings.clone();
        let committed = tokio::task::spawn_blocking(move || committed_offset(&settings, place))
            .await
            .ok()
            .flatten();
        if let Some(next) = committed {
            let mut s = self.lock();
            advance(
                &mut s.marks,
                (place.flow, place.partition),
                next - 1,
                Instant::now(),
            );
        }
    }
}

fn advance(marks: &mut HashMap<(Flow, i32), Mark>, key: (Flow, i32), offset: i64, now: Instant) {
    let mark = marks.entry(key).or_insert(Mark {
        through: offset,
        rate: None,
        sampled_at: now,
        sampled_through: offset,
    });
    if offset <= mark.through {
        return;
    }
    mark.through = offset;
    let elapsed = now.duration_since(mark.sampled_at).as_secs_f64();
    if elapsed >= 0.2 {
        let sample = (offset - mark.sampled_through) as f64 / elapsed;
        mark.rate = Some(match mark.rate {
            Some(r) => r * (1.0 - RATE_WEIGHT) + sample * RATE_WEIGHT,
            None => sample,
        });
        mark.sampled_at = now;
        mark.sampled_through = offset;
    }
}

/// The next offset the flow's worker group will decide in a partition, if
/// the group has committed one.
fn committed_offset(settings: &Settings, place: Place) -> Option<i64> {
    let mut config = crate::kafka::client_config(&settings.kafka);
    config
        .set(
            "group.id",
            format!("{}.{}", settings.kafka.group_id, place.flow.kind()),
        )
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().ok()?;
    let topic = Topics::new(settings.kafka.topic_prefix.clone()).requests(place.flow);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, place.partition);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(2))
        .ok()?;
    match committed.find_partition(&topic, place.partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(offset: i64) -> Place {
        Place {
            flow: Flow::Coupon,
            partition: 2,
            offset,
        }
    }

    #[test]
    fn a_position_counts_the_undecided_ahead_and_only_falls() {
        let line = Line::default();
        line.placed("k-9", place(9));
        assert_eq!(line.place_of("k-9"), Some(place(9)));
        assert_eq!(line.standing(place(9)).position, 9, "nothing decided yet");
        line.decided(Flow::Coupon, 2, 4, Some("k-4"));
        assert_eq!(line.standing(place(9)).position, 4);
        line.decided(Flow::Coupon, 2, 1, None);
        assert_eq!(
            line.standing(place(9)).position,
            4,
            "an older result moves nothing"
        );
        line.decided(Flow::Coupon, 1, 8, None);
        assert_eq!(
            line.standing(place(9)).position,
            4,
            "another partition moves nothing"
        );
        line.decided(Flow::Order, 2, 8, None);
        assert_eq!(
            line.standing(place(9)).position,
            4,
            "another flow moves nothing"
        );
        line.decided(Flow::Coupon, 2, 8, None);
        assert_eq!(line.standing(place(9)).position, 0);
        line.decided(Flow::Coupon, 2, 9, Some("k-9"));
        assert_eq!(
            line.place_of("k-9"),
            None,
            "a decided request leaves the line"
        );
    }

    #[test]
    fn the_eta_follows_the_rate_decisions_are_made_at() {
        let mut marks = HashMap::new();
        let t0 = Instant::now();
        let key = (Flow::Coupon, 0);
        advance(&mut marks, key, 0, t0);
        advance(&mut marks, key, 100, t0 + Duration::from_secs(1));
        let rate = marks[&key].rate.unwrap();
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        let line = Line::default();
        line.lock().marks = marks;
        let standing = line.standing(Place {
            flow: Flow::Coupon,
            partition: 0,
            offset: 301,
        });
        assert_eq!(standing.position, 200);
        assert_eq!(standing.eta_ms, Some(2_000));
    }
}
