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

use std::sync::atomic::{AtomicBool, Ordering};

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

/// The target of policy decision events: at `debug`, so logs show them
/// only when asked (`RUST_LOG=switchyard_core::policy_decision=debug`),
/// while traces always carry them.
pub const DECISIONS: &str = "switchyard_core::policy_decision";

/// Traces are on in this process: spans are worth giving attributes and
/// parents to.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What became of finished spans since the start.
pub fn counts() -> &'static SpanCounts {
    &export::COUNTS
}

/// Keeps the tracer provider alive while the process runs.
pub struct Traces {
    _provider: SdkTracerProvider,
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
    let processor = export::start(settings, &resource)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // A client's sampled trace is followed; new ones by the ratio.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("switchyard");
    // Only the gateway's own spans: not the SDK's, hyper's or Redis's.
    let targets = Targets::new()
        .with_target("switchyard_core", tracing::Level::INFO)
        .with_target(DECISIONS, tracing::Level::DEBUG);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(targets);
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        layer,
        Traces {
            _provider: provider,
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
        Some(Self {
            traceparent: text("traceparent")?.to_owned(),
            tracestate: text("tracestate").map(str::to_owned),
        })
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
    if !enabled() {
        return Vec::new();
    }
    let context = tracing::Span::current().context();
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
