//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): one trace per job, carried from
//! the HTTP request (`traceparent` header, or a new trace) into the job record and the AMQP
//! headers, into each worker attempt's span, and out on every webhook request.
//!
//! Works with or without OpenTelemetry: the ids are Flotilla's own unless an OTLP exporter is
//! installed ([`crate::telemetry`]), in which case the spans it exports carry the same trace id
//! and the propagated span id is the exported span's.

use std::fmt;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (HTTP and AMQP) carrying the context.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static JOB_TRACE: TraceParent;
}

/// Runs `fut` with `trace` as the job's context, so that outgoing calls inside it (a model
/// server request) can continue the trace through [`for_outgoing_call`].
pub async fn with_job_trace<F: std::future::Future>(
    trace: Option<TraceParent>,
    fut: F,
) -> F::Output {
    match trace {
        Some(t) => JOB_TRACE.scope(t, fut).await,
        None => fut.await,
    }
}

/// The `traceparent` for an HTTP call made inside a job: the current span's exported context
/// when OpenTelemetry is on, else a child of the job's; `None` outside a job.
pub fn for_outgoing_call() -> Option<TraceParent> {
    JOB_TRACE
        .try_with(|t| t.outgoing(&tracing::Span::current()))
        .ok()
}

/// A parsed `traceparent`: version 00, trace id, parent span id, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// 8-byte id of the span that sent it (never all zero).
    pub span_id: [u8; 8],
    /// The `sampled` flag.
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` for any other form or all-zero ids (the
    /// spec's rule: start a new trace then).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (v, t, s, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if v.len() != 2 || v == "ff" || (v == "00" && parts.next().is_some()) {
            return None;
        }
        let lower_hex = |x: &str| {
            x.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(v) && lower_hex(t) && lower_hex(s) && lower_hex(f)) || f.len() != 2 {
            return None;
        }
        let trace_id: [u8; 16] = hex::decode(t).ok()?.try_into().ok()?;
        let span_id: [u8; 8] = hex::decode(s).ok()?.try_into().ok()?;
        let flags = u8::from_str_radix(f, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace (random ids, sampled).
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(),
            span_id: nonzero(),
            sampled: true,
        }
    }

    /// The same trace with a new span id (a child of this one).
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Makes this context the parent of `span` for OpenTelemetry (no effect without an
    /// exporter installed).
    pub fn attach(&self, span: &tracing::Span) {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// The context to send onwards from inside `span`: the exported span's own ids when
    /// OpenTelemetry is on, else a child of `self`.
    pub fn outgoing(&self, span: &tracing::Span) -> Self {
        let ctx = span.context();
        let sc = ctx.span().span_context().clone();
        if sc.is_valid() {
            Self {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                sampled: sc.is_sampled(),
            }
        } else {
            self.child()
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = rand::random();
        }
        if b != [0; N] {
            return b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_spec_example() {
        let v = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp = TraceParent::parse(v).expect("valid");
        assert_eq!(tp.to_string(), v);
        assert_eq!(tp.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        let child = tp.child();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.span_id, tp.span_id);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
