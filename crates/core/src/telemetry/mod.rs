//! Traces over OpenTelemetry (OTLP/HTTP), off unless configured.
//!
//! The spans are `tracing`'s: the service opens one per model call
//! (`chat {group}`, with the GenAI semantic conventions' attributes), the
//! fair queue's wait and each attempt are its children, and each policy
//! decision is an event on it. [`layer`] turns them into OpenTelemetry spans
//! and hands the finished ones to a bounded queue that one task exports
//! ([`export`]): the request path never waits for the collector. A
//! client's W3C `traceparent` is the call's parent ([`TraceContext`]), and
//! each attempt passes its own on to Bedrock ([`inject`]).

mod config;
mod export;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub use config::{OtlpConfig, Resolved};
pub use export::SpanCounts;

/// The target of the spans that are exported: a traced call's own, its
/// queue wait's and its attempts'. A call that is not traced (traces off,
/// not sampled, or the collector unreachable) gets plain spans under the
/// modules' targets, which only logs see: it costs what it did before.
pub const TRACED: &str = "switchyard_core::traced";

/// The target of policy decision events: at `debug`, so logs show them
/// only when asked (`RUST_LOG=switchyard_core::policy_decision=debug`),
/// while a traced call always carries them.
pub const DECISIONS: &str = "switchyard_core::policy_decision";

/// Traces are configured in this process.
static CONFIGURED: AtomicBool = AtomicBool::new(false);
/// Spans are being made: traces are configured and the collector took the
/// last export (or none has been tried yet). While it is unreachable no
/// span is made, so a dead collector costs the requests nothing; the
/// exporter probes it and turns this back on when it answers.
static RECORDING: AtomicBool = AtomicBool::new(false);
/// The share of calls traced, as `f64` bits.
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether traces are configured in this process.
pub fn configured() -> bool {
    CONFIGURED.load(Ordering::Relaxed)
}

/// Whether spans are being made for export now.
pub fn enabled() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// A model call starts, continuing `trace` when the client sent one:
/// whether to trace it. A client's sampling decision is followed; else
/// the configured ratio decides (head sampling, before any span is made,
/// so an untraced call costs nothing). Counts the calls left untraced
/// because the collector is unreachable.
pub fn tracing_call(trace: Option<&TraceContext>) -> bool {
    if !RECORDING.load(Ordering::Relaxed) {
        if CONFIGURED.load(Ordering::Relaxed) {
            export::COUNTS.untraced.fetch_add(1, Ordering::Relaxed);
        }
        return false;
    }
    if let Some(sampled) = trace.and_then(TraceContext::sampled) {
        return sampled;
    }
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || fastrand::f64() < ratio
}

/// Whether `span` is a traced call's (exported) span.
pub fn is_traced(span: &tracing::Span) -> bool {
    span.metadata().is_some_and(|m| m.target() == TRACED)
}

fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// What became of finished spans since the start.
pub fn counts() -> &'static SpanCounts {
    &export::COUNTS
}

/// Keeps the tracer provider alive while the process runs.
pub struct Traces {
    _provider: SdkTracerProvider,
    flush: export::FlushRequests,
}

impl Traces {
    /// Sends the spans still queued (at shutdown), waiting at most `within`.
    pub async fn flush(&self, within: std::time::Duration) {
        let (done, sent) = tokio::sync::oneshot::channel();
        let asked = async {
            if self.flush.send(done).await.is_ok() {
                let _ = sent.await;
            }
        };
        let _ = tokio::time::timeout(within, asked).await;
    }
}

/// The layer that exports this process's spans as `settings` say, and its
/// provider. Needs a tokio runtime (the export task runs on it).
pub fn layer<S>(settings: &Resolved) -> Result<(impl Layer<S>, Traces), String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .filter(|(k, _)| k.as_str() != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    let (processor, flush) = export::start(settings, &resource)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // Sampled already: only traced calls make exported spans.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("switchyard");
    // Only traced calls' spans and decisions: not the gateway's log lines,
    // nor the SDK's, hyper's or Redis's spans.
    let targets = Targets::new()
        .with_target(TRACED, tracing::Level::INFO)
        .with_target(DECISIONS, tracing::Level::DEBUG);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(targets);
    RATIO.store(settings.sampling_ratio.to_bits(), Ordering::Relaxed);
    CONFIGURED.store(true, Ordering::Relaxed);
    set_recording(true);
    Ok((
        layer,
        Traces {
            _provider: provider,
            flush,
        },
    ))
}

/// A client's W3C trace context (`traceparent`, `tracestate`), as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context in `headers`, when traces are on and there is one.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let traceparent = text("traceparent").filter(|t| well_formed(t))?;
        Some(Self {
            traceparent: traceparent.to_owned(),
            tracestate: text("tracestate").map(str::to_owned),
        })
    }

    /// The client's sampling decision (the `traceparent` flags' last
    /// bit), when its `traceparent` is well formed.
    pub fn sampled(&self) -> Option<bool> {
        let context = TraceContextPropagator::new().extract(self);
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| span.is_sampled())
    }

    /// Makes `span` a child of this context's span. A malformed
    /// `traceparent` is ignored (a new trace starts), as the W3C spec says.
    pub fn adopt(&self, span: &tracing::Span) {
        let context = TraceContextPropagator::new().extract(self);
        if context.span().span_context().is_valid() {
            // Fails only when the span is disabled: nothing to adopt then.
            let _ = span.set_parent(context);
        }
    }
}

/// A version-00 `traceparent` as W3C Trace Context spells it:
/// `00-{32 hex}-{16 hex}-{2 hex}`, lowercase. Anything else is ignored, as
/// the spec asks, and the call starts a trace of its own.
fn well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.traceparent),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Puts the current span's `traceparent` (and `tracestate`) on an
/// upstream request, so Bedrock's side of the call joins the trace.
pub fn inject(headers: &mut http::HeaderMap) {
    for (name, value) in current_headers() {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
}

/// The current span's W3C trace headers (none when traces are off).
pub fn current_headers() -> Vec<(&'static str, String)> {
    let current = tracing::Span::current();
    if !is_traced(&current) {
        return Vec::new();
    }
    let context = current.context();
    let mut headers = TraceHeaders(Vec::new());
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    headers.0
}

struct TraceHeaders(Vec<(&'static str, String)>);

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn only_a_well_formed_traceparent_is_taken() {
        assert!(well_formed(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "00-1-2-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
