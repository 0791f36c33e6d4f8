//! Logs, and traces when asked: `[telemetry] otlp_endpoint` in `hearth.toml` sends every span
//! (each HTTP request, each run, each upstream attempt) to an OpenTelemetry collector over
//! OTLP/HTTP with JSON bodies. Off by default.
//!
//! Spans go through `tracing` (the one instrumentation the code has) and `tracing-opentelemetry`
//! turns them into OpenTelemetry spans; the SDK's batch processor exports them from a thread of
//! its own, so a slow or absent collector never holds a request. Incoming W3C `traceparent`
//! headers are honoured by the server's request span, so Hearth's spans join the caller's trace.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `[telemetry]` in `hearth.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// Where spans go, the collector's whole OTLP/HTTP traces URL
    /// (`http://collector:4318/v1/traces`); unset, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans (default `hearth`).
    pub service_name: Option<String>,
}

/// Keeps the trace exporter until the program ends, then sends what it still holds.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (the server then makes a span for every request).
    pub fn traces(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Blocks until the batch processor's thread has sent the last spans (or given up).
            if let Err(error) = provider.shutdown() {
                eprintln!("could not send the last traces: {error}");
            }
        }
    }
}

/// Starts logging (`format`: `text` or `json`, filtered by `HEARTH_LOG`, then `RUST_LOG`,
/// default `info`), and trace export when `telemetry` names an endpoint.
pub fn init(format: &str, telemetry: &TelemetrySection) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("HEARTH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if format == "json" { logs.json().boxed() } else { logs.boxed() };
    let provider = match telemetry.otlp_endpoint.as_deref() {
        Some(endpoint) => Some(exporter(endpoint, telemetry)?),
        None => None,
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hearth"))
            .with_filter(filter_fn(traced))
    });
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).init();
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// What becomes part of a trace: Hearth's own spans, made at DEBUG so that they cost nothing
/// while no trace is exported (the logs' filter is `info`), any crate's INFO spans, and INFO
/// events (which become events of the span they happen in).
fn traced(metadata: &Metadata<'_>) -> bool {
    let level = *metadata.level();
    match metadata.is_span() {
        true => {
            level <= Level::INFO
                || (level <= Level::DEBUG && metadata.target().starts_with("hearth"))
        }
        false => level <= Level::INFO,
    }
}

fn exporter(endpoint: &str, telemetry: &TelemetrySection) -> anyhow::Result<SdkTracerProvider> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("[telemetry] otlp_endpoint `{endpoint}`: {e}"))?;
    let name = telemetry.service_name.clone().unwrap_or_else(|| "hearth".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(provider)
}
