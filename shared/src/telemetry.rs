//! `tracing` set-up shared by every binary, with OpenTelemetry export when configured.
//!
//! Logs go to stderr as text or JSON. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g.
//! `http://otel-collector:4318`), spans are also exported over OTLP/HTTP (protobuf) in batches
//! from a background thread, with `service.name` = the binary's name; the other standard
//! `OTEL_EXPORTER_OTLP_*` variables apply. Unset, no exporter exists and spans cost what plain
//! `tracing` spans cost.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes it before exit.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter (call before the process exits).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            // Blocking: the batch processor's thread does the export.
            let _ = std::thread::spawn(move || p.shutdown()).join();
        }
    }
}

/// The OTLP exporter for `service`, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Built on its own
/// thread: the blocking HTTP client must not be created inside the async runtime.
fn otlp_provider(service: &'static str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
    if endpoint.trim().is_empty() {
        return None;
    }
    let built = std::thread::spawn(move || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map(|exporter| {
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build()
            })
    })
    .join();
    match built {
        Ok(Ok(p)) => Some(p),
        Ok(Err(err)) => {
            eprintln!("telemetry: OTLP exporter not started: {err}");
            None
        }
        Err(_) => {
            eprintln!("telemetry: OTLP exporter set-up failed");
            None
        }
    }
}

/// Installs the global `tracing` subscriber writing to stderr, plus the OTLP span exporter of
/// `service` when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
///
/// The filter comes from `RUST_LOG` (default `info`). Calling it twice is harmless: the second
/// call leaves the first subscriber in place.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal, and never with NO_COLOR (https://no-color.org).
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let provider = otlp_provider(service);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let text = (format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(color)
    });
    let json =
        (format == LogFormat::Json).then(|| fmt::layer().json().with_writer(std::io::stderr));
    // Already installed (tests): keep the existing one.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(text)
        .with(json)
        .try_init();
    Telemetry { provider }
}
