//! Traces over OTLP/HTTP: the real `switchyard serve` exports to a
//! collector started here (its requests decoded with the OpenTelemetry
//! protocol's own types), in front of the simulator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use switchyard::clock::SystemClock;
use switchyard::sim::{Fault, SimHandle, SimModelConfig};

use crate::support::{converse_body, raw_get, raw_post, start_sim, GatewayProcess};

/// The client's trace: its id and the span the gateway's must hang under.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Each span received, with its resource's attributes.
type Received = Arc<Mutex<Vec<(Vec<KeyValue>, Span)>>>;

/// An OTLP/HTTP trace receiver on a free loopback port, keeping every span
/// with its resource's attributes.
struct Collector {
    url: String,
    received: Received,
    _server: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(addr: &str) -> Self {
        let received: Received = Arc::default();
        let kept = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("the export is an ExportTraceServiceRequest");
                    let mut kept = kept.lock().unwrap();
                    for resource_spans in request.resource_spans {
                        let resource = resource_spans.resource.unwrap_or_default().attributes;
                        for scope in resource_spans.scope_spans {
                            for span in scope.spans {
                                kept.push((resource.clone(), span));
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            received,
            _server: server,
        }
    }

    /// The spans of trace `trace_id` once `wanted` of them have come (10 s at most).
    async fn trace(&self, trace_id: &[u8], wanted: usize) -> Vec<(Vec<KeyValue>, Span)> {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<_> = self
                .received
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s.trace_id == trace_id)
                .cloned()
                .collect();
            if spans.len() >= wanted || std::time::Instant::now() > until {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Attributes by key, as text (numbers and booleans written out).
fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn model(id: &str) -> SimModelConfig {
    SimModelConfig {
        ttft_ms: 0,
        ..SimModelConfig::unlimited(id)
    }
}

/// Group `g`: deployment `a` (model-a) first, then `b` (model-b).
fn two_deployments(sim: &SimHandle) -> String {
    let deployment = |id: &str, model: &str, priority: u32| {
        format!(
            "[[deployments]]\nid = \"{id}\"\nmodel_id = \"{model}\"\npriority = {priority}\naccount = \"acct-{id}\"\nregion = \"eu-west-1\"\nendpoint_url = \"{}\"\ncredentials = {{ source = \"static\", access_key_id = \"AKIDTRACE\", secret_access_key = \"s\" }}\n",
            sim.url()
        )
    };
    format!(
        "{}{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", "model-a", 1),
        deployment("b", "model-b", 2),
    )
}

/// The simulator with `model-a` and `model-b`, answering at once.
async fn two_models() -> SimHandle {
    start_sim(
        vec![model("model-a"), model("model-b")],
        SystemClock::shared(),
    )
    .await
}

/// The real gateway in front of `sim`'s two deployments, with `otlp` as
/// its `[observability.otlp]` table.
async fn traced_gateway(name: &str, sim: &SimHandle, otlp: &str) -> GatewayProcess {
    let config = format!("[observability.otlp]\n{otlp}{}", two_deployments(sim));
    GatewayProcess::start(name, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fell_back_once_is_one_trace_under_the_clients_span() {
    let sim = two_models().await;
    let collector = Collector::start().await;
    let gateway = traced_gateway("traces", &sim, &format!(
            "endpoint = \"{}\"\nservice_name = \"switchyard-test\"\nresource_attributes = {{ \"deployment.environment\" = \"test\" }}\n",
            collector.url
        )).await;
    sim.inject("model-a", Fault::Throttle, 1);
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let response = raw_post(
        gateway.addr,
        "/model/g/converse",
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
            ("x-request-id", "trace-test-1"),
        ],
        &converse_body("follow me"),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_text());

    // The request, its queue wait and two attempts.
    let spans = collector.trace(&hex(TRACE_ID), 4).await;
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(spans.len(), 4, "spans of the trace: {names:?}");
    let find = |name: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| panic!("a span `{name}` among {names:?}"))
    };

    // The request's span: the client's span is its parent.
    let (resource, request) = find("chat g");
    let resource = attributes(resource);
    assert_eq!(resource["service.name"], "switchyard-test");
    assert_eq!(resource["deployment.environment"], "test");
    assert_eq!(
        request.parent_span_id,
        hex(CLIENT_SPAN),
        "the client's traceparent is the parent"
    );
    assert_eq!(request.kind, SpanKind::Server as i32);
    let attrs = attributes(&request.attributes);
    assert_eq!(attrs["gen_ai.operation.name"], "chat");
    assert_eq!(attrs["gen_ai.provider.name"], "aws.bedrock");
    assert_eq!(attrs["gen_ai.request.model"], "g");
    assert_eq!(attrs["gen_ai.response.model"], "model-b");
    assert_eq!(attrs["switchyard.deployment"], "b");
    assert_eq!(attrs["request_id"], "trace-test-1");
    let input: u64 = attrs["gen_ai.usage.input_tokens"].parse().unwrap();
    let output: u64 = attrs["gen_ai.usage.output_tokens"].parse().unwrap();
    assert!(input > 0 && output > 0, "{attrs:?}");

    // The policies' decisions are its events: the selection's order, the
    // cooldown policy's answer to the throttle, the fallback's order.
    let decisions: Vec<HashMap<String, String>> = request
        .events
        .iter()
        .filter(|e| e.name == "policy decision")
        .map(|e| attributes(&e.attributes))
        .collect();
    let of_kind = |kind: &str| {
        decisions
            .iter()
            .find(|d| d["policy.kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} decision among {decisions:?}"))
    };
    let selection = of_kind("selection");
    assert_eq!(selection["policy.decision"], "[a, b]");
    assert!(selection.contains_key("policy.name") && selection.contains_key("policy.version"));
    assert!(of_kind("cooldown")["policy.decision"].starts_with("throttled: cooldown "));
    assert_eq!(of_kind("fallback")["policy.decision"], "[b]");

    // The queue wait and both attempts are its children.
    let (_, queue) = find("queue wait");
    assert_eq!(queue.parent_span_id, request.span_id);
    let (_, first) = find("attempt a");
    let (_, second) = find("attempt b");
    for (attempt, outcome, account) in [
        (first, "throttled", "acct-a"),
        (second, "success", "acct-b"),
    ] {
        assert_eq!(attempt.parent_span_id, request.span_id);
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        let attrs = attributes(&attempt.attributes);
        assert_eq!(attrs["switchyard.outcome"], outcome);
        assert_eq!(attrs["switchyard.account"], account);
        assert_eq!(attrs["cloud.region"], "eu-west-1");
        assert_eq!(attrs["request_id"], "trace-test-1");
        assert!(attrs.contains_key("switchyard.latency_ms"));
    }
    let first_attrs = attributes(&first.attributes);
    assert_eq!(
        first_attrs
            .get("http.response.status_code")
            .map(String::as_str),
        Some("429"),
        "{first_attrs:?}"
    );
    assert_eq!(
        first.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(
        attributes(&second.attributes)["gen_ai.request.model"],
        "model-b"
    );
    assert!(second.start_time_unix_nano >= first.end_time_unix_nano);

    // Each attempt passed its own span on to Bedrock, in the same trace.
    let upstream = sim.traceparents();
    for attempt in [first, second] {
        let expected = format!("00-{TRACE_ID}-{}-01", to_hex(&attempt.span_id));
        assert!(
            upstream.contains(&expected),
            "{expected} among {upstream:?}"
        );
    }

    let metrics = raw_get(gateway.addr, "/metrics").await.body_text();
    let exported = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_trace_spans_exported_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the exported spans' counter");
    assert!(exported >= 4, "{exported}");
}

/// The value of the metric line that starts with `name ` in `/metrics`.
async fn metric(gateway: &GatewayProcess, name: &str) -> Option<f64> {
    let metrics = raw_get(gateway.addr, "/metrics").await.body_text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (10 s at most) until `name` satisfies `wanted`; its last value.
async fn metric_until(gateway: &GatewayProcess, name: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = metric(gateway, name).await.unwrap_or(f64::NAN);
        if wanted(value) || std::time::Instant::now() > until {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn converse_ok(gateway: &GatewayProcess, headers: &[(&str, &str)], n: usize) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    for i in 0..n {
        let response = raw_post(
            gateway.addr,
            "/model/g/converse",
            &all,
            &converse_body(&format!("request {i}")),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_fails_no_request_costs_no_spans_and_tracing_resumes_when_it_answers() {
    let sim = two_models().await;
    // An address nothing listens on, for now.
    let dead = crate::support::free_port();
    let gateway = traced_gateway(
        "traces-dead",
        &sim,
        &format!("endpoint = \"http://{dead}\"\nexport_timeout_ms = 500\n"),
    )
    .await;
    converse_ok(&gateway, &[], 5).await;
    let reachable = metric_until(&gateway, "switchyard_trace_collector_reachable", |v| {
        v == 0.0
    })
    .await;
    assert_eq!(reachable, 0.0, "the collector is seen unreachable");
    let failed = metric(&gateway, "switchyard_trace_spans_failed_total")
        .await
        .unwrap();
    assert!(
        failed >= 3.0,
        "the first requests' spans are counted as lost: {failed}"
    );

    // While it is unreachable, requests are served and no span is made:
    // what fails later is at most the first five calls' three spans each
    // (some may still have been queued for the next try).
    converse_ok(&gateway, &[], 10).await;
    let untraced = metric(&gateway, "switchyard_trace_requests_untraced_total")
        .await
        .unwrap();
    assert!(untraced >= 10.0, "{untraced}");
    let failed = metric(&gateway, "switchyard_trace_spans_failed_total")
        .await
        .unwrap();
    assert!(
        failed <= 15.0,
        "no spans were made for the later calls: {failed}"
    );

    // The collector comes up where it was configured: tracing resumes.
    let collector = Collector::start_on(&dead.to_string()).await;
    let reachable = metric_until(&gateway, "switchyard_trace_collector_reachable", |v| {
        v == 1.0
    })
    .await;
    assert_eq!(reachable, 1.0, "the gateway saw the collector answer again");
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    converse_ok(&gateway, &[("traceparent", &traceparent)], 1).await;
    let spans = collector.trace(&hex(TRACE_ID), 3).await;
    assert_eq!(
        spans.len(),
        3,
        "the request, its queue wait and its attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_sampling_decision_is_followed_and_the_ratio_decides_the_rest() {
    let sim = two_models().await;
    let collector = Collector::start().await;
    let gateway = traced_gateway(
        "traces-sampling",
        &sim,
        &format!("endpoint = \"{}\"\nsampling_ratio = 0.0\n", collector.url),
    )
    .await;
    // A gateway that traces every call still follows a client that did
    // not sample, and starts its own trace for a malformed traceparent.
    let all = traced_gateway(
        "traces-sampling-all",
        &sim,
        &format!("endpoint = \"{}\"\nsampling_ratio = 1.0\n", collector.url),
    )
    .await;
    let declined = "5bf92f3577b34da6a3ce929d0e0e4737";
    let unsampled_parent = format!("00-{declined}-00f067aa0ba902b7-00");
    converse_ok(&all, &[("traceparent", &unsampled_parent)], 1).await;
    let malformed = [
        ("traceparent", "00-1-2-01"),
        ("x-request-id", "malformed-parent"),
    ];
    converse_ok(&all, &malformed, 1).await;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let own = loop {
        let own: Vec<Span> = collector
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .filter(|s| {
                attributes(&s.attributes)
                    .get("request_id")
                    .map(String::as_str)
                    == Some("malformed-parent")
            })
            .collect();
        if own.len() >= 3 || std::time::Instant::now() > until {
            break own;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        own.len(),
        3,
        "the malformed parent's call is traced on its own"
    );
    let root = own
        .iter()
        .find(|s| s.name == "chat g")
        .expect("its call span");
    assert!(root.parent_span_id.is_empty(), "a root, not a child of `2`");
    let declined_spans = collector
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.trace_id == hex(declined))
        .count();
    assert_eq!(
        declined_spans, 0,
        "the client's unsampled trace stays untraced"
    );
    drop(all);
    collector.received.lock().unwrap().clear();

    // Ratio 0: a call without a trace of its own is not traced...
    converse_ok(&gateway, &[], 5).await;
    // ...nor one whose client did not sample it...
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    converse_ok(
        &gateway,
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
        1,
    )
    .await;
    // ...but one the client sampled is.
    converse_ok(
        &gateway,
        &[("traceparent", &format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))],
        1,
    )
    .await;
    let spans = collector.trace(&hex(TRACE_ID), 3).await;
    assert_eq!(
        spans.len(),
        3,
        "the sampled call's request, queue wait and attempt"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let all = collector.received.lock().unwrap().len();
    assert_eq!(all, 3, "no other call made a span");
}

/// A collector that takes the connection and never answers: exports wait
/// for it (up to a minute here), requests do not. Each request must be
/// answered within `raw_post`'s 20 s, well under the export's minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_holds_up_no_request() {
    let sim = two_models().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    let gateway = traced_gateway(
        "traces-silent",
        &sim,
        &format!(
            "endpoint = \"http://{silent}\"\nexport_timeout_ms = 60000\nmax_queued_spans = 16\n"
        ),
    )
    .await;
    // The first calls' spans go out in an export that waits; then more
    // spans than the queue holds come while it waits.
    converse_ok(&gateway, &[], 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    converse_ok(&gateway, &[], 30).await;
    let dropped = metric_until(&gateway, "switchyard_trace_spans_dropped_total", |v| {
        v > 0.0
    })
    .await;
    assert!(dropped > 0.0, "a full queue drops spans: {dropped}");
}

/// The last requests' spans are still queued for their batch when the
/// gateway is told to stop: they are sent before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_sends_the_spans_it_still_holds() {
    let sim = two_models().await;
    let collector = Collector::start().await;
    let mut gateway = traced_gateway(
        "traces-stop",
        &sim,
        &format!("endpoint = \"{}\"\n", collector.url),
    )
    .await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    converse_ok(&gateway, &[("traceparent", &traceparent)], 1).await;
    let pid = gateway.child.id().expect("the gateway runs") as i32;
    // SAFETY: sends SIGTERM to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exit = tokio::time::timeout(Duration::from_secs(30), gateway.child.wait())
        .await
        .expect("the gateway exits")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // Gone: what it sent is all there is.
    let spans = collector.trace(&hex(TRACE_ID), 3).await;
    assert_eq!(spans.len(), 3, "the call, its queue wait and its attempt");
}

#[tokio::test]
async fn a_bad_trace_setting_stops_the_start_with_its_name() {
    let scratch = crate::support::ScratchDir::new("traces-bad");
    let path = scratch.join("switchyard.toml");
    std::fs::write(
        &path,
        "[observability.otlp]\nendpoint = \"http://127.0.0.1:4318\"\nsampling_ratio = 2.0\n[[deployments]]\nid = \"a\"\nmodel_id = \"model-a\"\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
    )
    .unwrap();
    let out = crate::support::switchyard_with_env(
        &["serve", "--simulate", "--config", path.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("observability.otlp.sampling_ratio"),
        "{}",
        crate::support::command_output(&out)
    );
}
