//! W3C trace context (`traceparent`), carried from HTTP into Kafka headers
//! and on to the results and stats events.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const HEADER: &str = "traceparent";

/// Makes `span` a child of the caller's span when spans are exported (and
/// does nothing otherwise). Call it before the span is first entered.
pub fn adopt(span: &Span, incoming: Option<&str>) {
    let Some(traceparent) = incoming.filter(|t| trace_id(t).is_some()) else {
        return;
    };
    let carrier = HashMap::from([(HEADER.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Without span export there is no parent to set: nothing to report.
    let _ = span.set_parent(parent);
}

/// The `traceparent` naming `span` itself, when spans are exported: what to
/// send on so the next hop's spans hang under this one.
pub fn outgoing(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(HEADER)
}

/// The trace id of a well-formed `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if hex(version, 2)
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && *trace != "00000000000000000000000000000000" =>
        {
            Some(trace)
        }
        _ => None,
    }
}

/// The caller's context when valid, else a new trace.
pub fn continue_or_start(incoming: Option<&str>) -> String {
    let span = format!("{:016x}", rand::random::<u64>());
    match incoming.and_then(trace_id) {
        Some(trace) => format!("00-{trace}-{span}-01"),
        None => format!(
            "00-{}-{span}-01",
            format_args!("{:032x}", rand::random::<u128>())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_continued_or_started() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(given), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let continued = continue_or_start(Some(given));
        assert_eq!(
            trace_id(&continued),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(continued, given, "a new parent span");
        assert!(trace_id(&continue_or_start(Some("garbage"))).is_some());
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn an_exported_span_continues_the_callers_trace_and_names_itself() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;

        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let exporting = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(exporting, || {
            let span = tracing::info_span!("hop");
            adopt(&span, Some(given));
            let sent = outgoing(&span).expect("an exported span names itself");
            assert_eq!(trace_id(&sent), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            assert_ne!(sent.split('-').nth(2), Some("00f067aa0ba902b7"));
            assert!(sent.ends_with("-01"), "sampled: {sent}");
        });
        let unexported = tracing::info_span!("hop");
        adopt(&unexported, Some(given));
        assert_eq!(outgoing(&unexported), None);
    }
}
