//! Span export to an OpenTelemetry collector (OTLP over HTTP, protobuf).

use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::{redact_url, LogSettings, Url};

#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to {endpoint}: {source}")]
pub struct OtlpError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// `http://host:4318` → `http://host:4318/v1/traces`, as the OTLP
/// specification derives a signal's address from the base endpoint.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// A tracer provider that batches spans to the collector at `endpoint`,
/// sampling new traces at the configured ratio and following the caller's
/// sampling decision for continued ones.
pub fn provider(endpoint: &Url, settings: &LogSettings) -> Result<SdkTracerProvider, OtlpError> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint.as_str()))
        .build()
        .map_err(|source| OtlpError {
            endpoint: redact_url(endpoint.as_str()),
            source,
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.otlp_sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }
}
