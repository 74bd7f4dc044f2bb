//! Trace context across Kafka, and span export to an OpenTelemetry collector:
//! an order placed over HTTP with a `traceparent` keeps its trace through the
//! gateway, the request topic, the order worker (another process), the
//! result, the stats event and the stats consumer, and every hop's span
//! reaches the collector under its caller.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::{TestEnv, PATIENCE};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::config::Url;
use stampede::kafka::Flow;
use stampede::store::users;
use stampede::workers::WorkerKind;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
struct SeenSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP receiver: what a collector would be sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    arrived: Arc<Notify>,
}

impl Collector {
    async fn start(&self) -> SocketAddr {
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Waits until spans named `names` of `trace_id` have all arrived.
    async fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<SeenSpan> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let arrived = self.arrived.notified();
            let spans: Vec<SeenSpan> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            common::flush_spans();
            assert!(
                tokio::time::timeout_at(deadline.into(), arrived)
                    .await
                    .is_ok(),
                "spans {names:?} of trace {trace_id} never arrived; got {spans:?}"
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receive(State(collector): State<Collector>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut seen = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                seen.push(SeenSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    collector.spans.lock().unwrap().extend(seen);
    collector.arrived.notify_waiters();
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn span_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_keeps_its_trace_from_http_to_the_stats_consumer_and_exports_every_hop() {
    let collector = Collector::default();
    let addr = collector.start().await;
    let env = TestEnv::with(|s| {
        s.log.otlp_endpoint = Some(Url(format!("http://{addr}")));
        s.log.service_name = "stampede-under-test".into();
    })
    .await;
    users::seed(&env.db, 1, 1, 100_000).await.unwrap();
    env.create_product(7, 2_500, 10).await;
    // The gateway and the stats consumer here; the order worker in its own
    // process, exporting on its own.
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Stats],
        })
        .await;
    let worker = env.worker_process("order");

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/orders", app.http()))
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"user_id": 1, "items": [{"product_id": 7, "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();

    let request = env.reader(&env.topics.requests(Flow::Order)).take(1).await;
    let sent = &request[0].headers["traceparent"];
    assert!(sent.contains(trace), "request header {sent}");
    let result = env.results(Flow::Order).take(1).await;
    let body: Value = serde_json::from_slice(&result[0].payload).unwrap();
    assert_eq!(body["request_id"], accepted["request_id"]);
    assert_eq!(body["status"], "succeeded", "{body}");
    let answered = &result[0].headers["traceparent"];
    assert!(answered.contains(trace), "result header {answered}");
    let stats = env.reader(&env.topics.stats()).take(1).await;
    let event: Value = serde_json::from_slice(&stats[0].payload).unwrap();
    assert_eq!(event["order_id"], body["order_id"]);
    let carried = &stats[0].headers["traceparent"];
    assert!(carried.contains(trace), "stats header {carried}");

    assert!(worker.terminate().success(), "the worker exits cleanly");
    let spans = collector
        .wait_for(trace, &["accept", "request", "stats_event"])
        .await;
    let named: HashMap<&str, &SeenSpan> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let (accept, request, stats_event) = (named["accept"], named["request"], named["stats_event"]);
    assert_eq!(
        accept.parent_span_id, caller_span,
        "gateway under the caller"
    );
    assert_eq!(
        accept.span_id,
        span_of(sent),
        "the request names the gateway span"
    );
    assert_eq!(
        request.parent_span_id, accept.span_id,
        "the worker's span under the gateway's"
    );
    assert_eq!(
        request.span_id,
        span_of(answered),
        "the result names the worker span"
    );
    assert_eq!(span_of(carried), request.span_id, "the stats event too");
    assert_eq!(
        stats_event.parent_span_id, request.span_id,
        "the stats consumer's span under the worker's"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.service.contains("stampede-under-test")),
        "{spans:?}"
    );
    app.stop().await;
    env.cleanup().await;
}
