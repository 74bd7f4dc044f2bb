//! The contract's topics, their keys and payloads. Names carry the configured
//! prefix so environments (and tests) never share a topic by accident.

/// The three request flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Charge,
    Coupon,
    Order,
}

impl Flow {
    pub const ALL: [Flow; 3] = [Flow::Charge, Flow::Coupon, Flow::Order];

    pub fn kind(self) -> &'static str {
        match self {
            Flow::Charge => "charge",
            Flow::Coupon => "coupon",
            Flow::Order => "order",
        }
    }

    pub fn request_topic(self) -> &'static str {
        match self {
            Flow::Charge => CHARGE_REQUESTS,
            Flow::Coupon => COUPON_REQUESTS,
            Flow::Order => ORDER_REQUESTS,
        }
    }

    pub fn result_topic(self) -> &'static str {
        match self {
            Flow::Charge => CHARGE_RESULTS,
            Flow::Coupon => COUPON_RESULTS,
            Flow::Order => ORDER_RESULTS,
        }
    }

    pub fn from_kind(kind: &str) -> Option<Flow> {
        Flow::ALL.into_iter().find(|f| f.kind() == kind)
    }
}

pub const CHARGE_REQUESTS: &str = "charge.requests.v1";
pub const COUPON_REQUESTS: &str = "coupon.requests.v1";
pub const ORDER_REQUESTS: &str = "order.requests.v1";
pub const CHARGE_RESULTS: &str = "charge.results.v1";
pub const COUPON_RESULTS: &str = "coupon.results.v1";
pub const ORDER_RESULTS: &str = "order.results.v1";
pub const ORDER_STATS: &str = "order.stats.v1";
pub const DLQ_SUFFIX: &str = ".dlq";

/// One row of the contract's topic table.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub name: &'static str,
    pub key: &'static str,
    /// Schema file under `topics/`, or `None` for raw copies (DLQ).
    pub payload: Option<&'static str>,
    pub reply: Option<&'static str>,
    pub written_by: &'static str,
    pub read_by: &'static str,
    pub description: &'static str,
}

/// Every topic of the contract (DLQs are derived: one per request topic).
pub const CATALOG: &[TopicSpec] = &[
    TopicSpec {
        name: CHARGE_REQUESTS,
        key: "user_id",
        payload: Some("ChargeRequest"),
        reply: Some(CHARGE_RESULTS),
        written_by: "gateway, any producer",
        read_by: "charge worker",
        description: "Charge a user's balance.",
    },
    TopicSpec {
        name: COUPON_REQUESTS,
        key: "user_id",
        payload: Some("CouponIssueRequest"),
        reply: Some(COUPON_RESULTS),
        written_by: "gateway, any producer",
        read_by: "coupon worker",
        description: "Ask for one first-come coupon.",
    },
    TopicSpec {
        name: ORDER_REQUESTS,
        key: "user_id",
        payload: Some("OrderRequest"),
        reply: Some(ORDER_RESULTS),
        written_by: "gateway, any producer",
        read_by: "order worker",
        description: "Order products and pay, optionally with a coupon.",
    },
    TopicSpec {
        name: CHARGE_RESULTS,
        key: "user_id",
        payload: Some("ChargeResult"),
        reply: None,
        written_by: "charge worker",
        read_by: "gateway, clients",
        description: "Exactly one result content per charge request.",
    },
    TopicSpec {
        name: COUPON_RESULTS,
        key: "user_id",
        payload: Some("CouponIssueResult"),
        reply: None,
        written_by: "coupon worker",
        read_by: "gateway, clients",
        description: "Exactly one result content per coupon request.",
    },
    TopicSpec {
        name: ORDER_RESULTS,
        key: "user_id",
        payload: Some("OrderResult"),
        reply: None,
        written_by: "order worker",
        read_by: "gateway, clients",
        description: "Exactly one result content per order request.",
    },
    TopicSpec {
        name: ORDER_STATS,
        key: "order_id",
        payload: Some("OrderStats"),
        reply: None,
        written_by: "order worker (outbox)",
        read_by: "data platform, stats consumer",
        description: "One event per paid order.",
    },
];

/// Topic names with this deployment's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The full name of a contract topic.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    pub fn requests(&self, flow: Flow) -> String {
        self.name(flow.request_topic())
    }

    pub fn results(&self, flow: Flow) -> String {
        self.name(flow.result_topic())
    }

    pub fn stats(&self) -> String {
        self.name(ORDER_STATS)
    }

    /// The dead-letter topic of a (full) request topic name.
    pub fn dlq_of(full_topic: &str) -> String {
        format!("{full_topic}{DLQ_SUFFIX}")
    }

    /// The flow a full request topic name belongs to.
    pub fn flow_of(&self, full_topic: &str) -> Option<Flow> {
        Flow::ALL
            .into_iter()
            .find(|f| self.requests(*f) == full_topic)
    }

    /// Every topic `topics create` makes, with its full name.
    pub fn all(&self) -> Vec<String> {
        let mut names: Vec<String> = CATALOG.iter().map(|t| self.name(t.name)).collect();
        names.extend(Flow::ALL.iter().map(|f| Self::dlq_of(&self.requests(*f))));
        // The stats consumer dead-letters events it cannot record, too.
        names.push(Self::dlq_of(&self.stats()));
        names
    }
}

/// The partition of a key, when stampede picks it itself (the outbox relay
/// does, so it can tell afterwards what it has already published).
pub fn partition_for(id: i64, partitions: i32) -> i32 {
    (id.rem_euclid(i64::from(partitions.max(1)))) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_dlqs_follow_request_topics() {
        let t = Topics::new("t1.");
        assert_eq!(t.requests(Flow::Coupon), "t1.coupon.requests.v1");
        assert_eq!(
            Topics::dlq_of(&t.requests(Flow::Order)),
            "t1.order.requests.v1.dlq"
        );
        assert_eq!(t.flow_of("t1.charge.requests.v1"), Some(Flow::Charge));
        assert_eq!(t.flow_of("charge.requests.v1"), None);
        assert_eq!(t.all().len(), 11);
        assert!(t.all().contains(&"t1.order.stats.v1.dlq".to_owned()));
    }
}
