//! Structured logs (tracing), optional span export (OpenTelemetry, OTLP) and
//! Prometheus metrics. Metric names and their labels are defined in
//! [`metrics`], nowhere else, so dashboards have one reference.

pub mod metrics;
mod otlp;
pub mod trace_context;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LogSettings;

pub use otlp::OtlpError;

/// Keeps span export running; [`Telemetry::shutdown`] flushes what is buffered.
#[must_use = "call shutdown() before exiting so buffered spans are exported"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans buffered so far.
    pub fn flush(&self) {
        if let Some(tracer) = &self.tracer {
            if let Err(e) = tracer.force_flush() {
                tracing::warn!(error = %e, "spans not flushed to the collector");
            }
        }
    }

    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            if let Err(e) = tracer.shutdown() {
                tracing::warn!(error = %e, "spans not flushed to the collector at exit");
            }
        }
    }
}

/// Installs the log subscriber, and span export when `log.otlp_endpoint` is
/// set. Once per process: later calls (e.g. in tests) install nothing.
/// An error and every cause under it, as one line: `outer: inner: root`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        // Many errors print their source in their own message too ("error
        // communicating with database: Connection refused"): said once.
        let said = e.to_string();
        if !line.ends_with(&said) {
            line.push_str(": ");
            line.push_str(&said);
        }
        cause = e.source();
    }
    line
}

pub fn init(settings: &LogSettings) -> Result<Telemetry, OtlpError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let logs = if settings.format == "json" {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    }
    .with_filter(filter);
    let tracer = settings
        .otlp_endpoint
        .as_ref()
        .map(|endpoint| otlp::provider(endpoint, settings))
        .transpose()?;
    // Spans go to the collector whatever the log filter says: the operator
    // may log warnings only and still trace every request.
    let spans = tracer.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("stampede"))
            .with_filter(Targets::new().with_target("stampede", LevelFilter::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    if !installed {
        if let Some(tracer) = tracer {
            let _ = tracer.shutdown();
        }
        return Ok(Telemetry { tracer: None });
    }
    if let Some(endpoint) = &settings.otlp_endpoint {
        tracing::info!(endpoint = ?endpoint, ratio = settings.otlp_sample_ratio, "exporting spans over OTLP");
    }
    Ok(Telemetry { tracer })
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_an_error_already_tells_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let sqlx = sqlx::Error::Io(io);
        let outer = anyhow::Error::new(sqlx).context("cannot reach PostgreSQL");
        assert_eq!(
            error_chain(outer.as_ref()),
            "cannot reach PostgreSQL: error communicating with database: Connection refused"
        );
    }
}
