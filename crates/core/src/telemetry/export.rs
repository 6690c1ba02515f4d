//! Finished spans to the collector: a bounded queue the request path only
//! ever `try_send`s into, and one task that batches it and posts each batch
//! as OTLP/HTTP protobuf. A slow or dead collector costs spans (dropped and
//! counted), never a request's time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::config::Resolved;

/// Most spans in one export.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// What became of finished spans, since the start (for `/metrics`).
#[derive(Debug, Default)]
pub struct SpanCounts {
    pub exported: AtomicU64,
    /// The queue was full: the collector is slower than the spans.
    pub dropped: AtomicU64,
    /// Sent, but the collector was unreachable or refused them.
    pub failed: AtomicU64,
    /// Model calls not traced because the collector was unreachable.
    pub untraced: AtomicU64,
}

pub(crate) static COUNTS: SpanCounts = SpanCounts {
    exported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    untraced: AtomicU64::new(0),
};

/// While the collector is unreachable, how often it is asked again (an
/// export of whatever is queued, or of nothing).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Moves what is queued into `batch`, up to a batch's worth.
fn take_queued(spans: &mut mpsc::Receiver<SpanData>, batch: &mut Vec<SpanData>) {
    while batch.len() < MAX_BATCH {
        match spans.try_recv() {
            Ok(span) => batch.push(span),
            Err(_) => break,
        }
    }
}

/// Asks the export task to send what it holds now: answered once sent.
pub(super) type FlushRequests = mpsc::Sender<oneshot::Sender<()>>;

/// Hands each finished, sampled span to the export task, or drops it.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            COUNTS.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

type ExportClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Starts the export task (on the current tokio runtime) and returns the
/// processor that feeds it, and where to ask it to flush.
pub(super) fn start(
    settings: &Resolved,
    resource: &Resource,
) -> Result<(QueueProcessor, FlushRequests), String> {
    let uri: http::Uri = settings
        .traces_url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", settings.traces_url))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &settings.headers {
        let name = http::HeaderName::try_from(name.as_str())
            .map_err(|e| format!("header `{name}`: {e}"))?;
        let value = http::HeaderValue::try_from(value.as_str())
            .map_err(|e| format!("header `{name}`'s value: {e}"))?;
        headers.insert(name, value);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(settings.export_timeout_ms)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| format!("no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let exporter = Exporter {
        client: Client::builder(TokioExecutor::new()).build(https),
        uri,
        headers,
        timeout: Duration::from_millis(settings.export_timeout_ms),
        resource: ResourceAttributesWithSchema::from(resource),
        failing: false,
    };
    let (queue, spans) = mpsc::channel(settings.max_queued_spans);
    let (flush, flushes) = mpsc::channel(1);
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "traces need a tokio runtime to export from".to_owned())?;
    runtime.spawn(exporter.run(spans, flushes));
    Ok((QueueProcessor { queue }, flush))
}

struct Exporter {
    client: ExportClient,
    uri: http::Uri,
    headers: http::HeaderMap,
    timeout: Duration,
    resource: ResourceAttributesWithSchema,
    /// The last export failed (so a dead collector is logged once, not
    /// every batch).
    failing: bool,
}

impl Exporter {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if self.failing {
                // The gateway is gone: nothing more will come.
                if spans.is_closed() && spans.is_empty() {
                    return;
                }
                // No spans are being made; ask the collector again now and
                // then, with what was queued before it went away. A flush
                // has nothing to wait for meanwhile.
                tokio::select! {
                    () = tokio::time::sleep(PROBE_EVERY) => {}
                    Some(done) = flushes.recv() => {
                        let _ = done.send(());
                        continue;
                    }
                }
                take_queued(&mut spans, &mut batch);
                self.export(std::mem::take(&mut batch)).await;
                continue;
            }
            let mut flush = None;
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => return,
                },
                Some(done) = flushes.recv() => flush = Some(done),
            }
            if flush.is_none() {
                let deadline = tokio::time::sleep(BATCH_DELAY);
                tokio::pin!(deadline);
                while batch.len() < MAX_BATCH {
                    tokio::select! {
                        span = spans.recv() => match span {
                            Some(span) => batch.push(span),
                            None => break,
                        },
                        Some(done) = flushes.recv() => {
                            flush = Some(done);
                            break;
                        }
                        () = &mut deadline => break,
                    }
                }
            }
            if !batch.is_empty() {
                self.export(std::mem::take(&mut batch)).await;
            }
            if let Some(done) = flush {
                // Everything queued now goes out before the answer.
                loop {
                    take_queued(&mut spans, &mut batch);
                    if batch.is_empty() || self.failing {
                        break;
                    }
                    self.export(std::mem::take(&mut batch)).await;
                }
                let _ = done.send(());
            }
        }
    }

    async fn export(&mut self, batch: Vec<SpanData>) {
        let count = batch.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        }
        .encode_to_vec();
        let mut request = http::Request::post(self.uri.clone())
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid export request");
        request.headers_mut().extend(self.headers.clone());
        let sent = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read the answer so the connection can be used again.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the collector answered {status}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err("the collector did not answer in time".to_owned()));
        match sent {
            Ok(()) => {
                COUNTS.exported.fetch_add(count, Ordering::Relaxed);
                if std::mem::take(&mut self.failing) {
                    super::set_recording(true);
                    tracing::info!(url = %self.uri, "the trace collector answers again; tracing resumes");
                }
            }
            Err(e) => {
                COUNTS.failed.fetch_add(count, Ordering::Relaxed);
                if !std::mem::replace(&mut self.failing, true) {
                    super::set_recording(false);
                    tracing::warn!(url = %self.uri, error = %e, spans = count,
                        "trace export failed; no spans are made until the collector answers (asked every 5 s; counted in /metrics)");
                }
            }
        }
    }
}
