//! Fuzzing the parsers a client reaches: Bedrock bodies, OpenAI bodies and
//! the gateway's headers through the real routes, and the config file. A
//! bounded number of generated inputs each (`SWITCHYARD_FUZZ_CASES`, 200 by
//! default): every one must end in an answer (no panic, no 500), and a
//! config must parse or say why not.
//!
//! The inputs are JSON built from the fields the parsers look for, mixed
//! with arbitrary ones, so most cases get past the first check and into
//! the translation code, not only into "invalid JSON".

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::Value;
use switchyard::clock::SystemClock;
use switchyard::config::Config;
use switchyard::gateway::{Gateway, Upstreams};
use tower::ServiceExt;

use crate::support::*;

fn cases() -> u32 {
    std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// Field names the parsers know, and a few they do not.
const KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "text",
    "image",
    "format",
    "source",
    "bytes",
    "toolUse",
    "toolResult",
    "toolUseId",
    "name",
    "input",
    "status",
    "json",
    "system",
    "inferenceConfig",
    "maxTokens",
    "temperature",
    "topP",
    "stopSequences",
    "toolConfig",
    "tools",
    "toolSpec",
    "inputSchema",
    "toolChoice",
    "auto",
    "any",
    "tool",
    "reasoningContent",
    "reasoningText",
    "additionalModelRequestFields",
    "thinking",
    "budget_tokens",
    "model",
    "stream",
    "stream_options",
    "include_usage",
    "tool_choice",
    "tool_calls",
    "function",
    "arguments",
    "type",
    "image_url",
    "url",
    "response_format",
    "json_schema",
    "schema",
    "reasoning_effort",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "user",
    "seed",
    "logprobs",
    "parallel_tool_calls",
    "tool_call_id",
    "encoding_format",
    "dimensions",
    "inputText",
    "texts",
    "input_type",
    "anthropic_version",
    "prompt",
    "zzz",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        proptest::sample::select(
            &[
                "user",
                "assistant",
                "system",
                "tool",
                "developer",
                "text",
                "image_url",
                "function",
                "json_object",
                "json_schema",
                "low",
                "high",
                "auto",
                "none",
                "required",
                "data:image/png;base64,iVBORw0KGgo=",
                "http://x/y.png",
                "g",
            ][..]
        )
        .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            hash_map(key(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `value` usually, or anything else now and then.
fn mostly(value: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![5 => value, 1 => json()].boxed()
}

fn role() -> impl Strategy<Value = Value> {
    proptest::sample::select(&["user", "assistant", "system", "tool", "developer"][..])
        .prop_map(Value::from)
}

/// A Converse content block of every kind the parsers read.
fn converse_block() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,30}".prop_map(|t| serde_json::json!({ "text": t })),
        (json(), json()).prop_map(|(name, input)| serde_json::json!({
            "toolUse": { "toolUseId": "t1", "name": name, "input": input }
        })),
        json().prop_map(|content| serde_json::json!({
            "toolResult": { "toolUseId": "t1", "content": [{ "json": content }] }
        })),
        "[a-z]{0,5}".prop_map(|format| serde_json::json!({
            "image": { "format": format, "source": { "bytes": "iVBORw0KGgo=" } }
        })),
        json(),
    ]
}

/// Fields a request may carry beside its messages, with any values.
fn extras() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    hash_map(key(), json(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn converse_request() -> impl Strategy<Value = Value> {
    (vec((role(), vec(converse_block(), 0..4)), 0..4), extras()).prop_map(
        |(messages, mut extra)| {
            let messages: Vec<Value> = messages
                .into_iter()
                .map(|(role, content)| serde_json::json!({ "role": role, "content": content }))
                .collect();
            extra.insert("messages".into(), Value::Array(messages));
            Value::Object(extra)
        },
    )
}

/// An OpenAI content part, tool call or message.
fn chat_message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        ".{0,30}".prop_map(Value::from),
        Just(Value::Null),
        vec(
            prop_oneof![
                ".{0,20}".prop_map(|t| serde_json::json!({ "type": "text", "text": t })),
                leaf().prop_map(
                    |url| serde_json::json!({ "type": "image_url", "image_url": { "url": url } })
                ),
                json(),
            ],
            0..3
        )
        .prop_map(Value::Array),
    ];
    let tool_calls = vec(
        (json(), ".{0,20}").prop_map(|(name, args)| {
            serde_json::json!({
                "id": "call_1", "type": "function", "function": { "name": name, "arguments": args }
            })
        }),
        0..3,
    );
    (
        role(),
        mostly(content),
        proptest::option::of(tool_calls),
        any::<bool>(),
    )
        .prop_map(|(role, content, calls, answers_a_call)| {
            let mut m = serde_json::json!({ "role": role, "content": content });
            if let Some(calls) = calls {
                m["tool_calls"] = Value::Array(calls);
            }
            if answers_a_call {
                m["tool_call_id"] = "call_1".into();
            }
            m
        })
}

fn chat_request() -> impl Strategy<Value = Value> {
    let tool = json().prop_map(|parameters| {
        serde_json::json!({
            "type": "function", "function": { "name": "lookup", "parameters": parameters }
        })
    });
    let optional = (
        proptest::option::of(vec(tool, 0..3)),
        proptest::option::of(mostly(leaf())),
        proptest::option::of(mostly(
            proptest::sample::select(&["json_object", "json_schema", "text"][..]).prop_map(
                |t| serde_json::json!({ "type": t, "json_schema": { "name": "x", "schema": {} } }),
            ),
        )),
        proptest::option::of(mostly(leaf())),
        proptest::option::of(mostly(any::<bool>().prop_map(Value::from))),
    );
    (vec(chat_message(), 0..4), optional, extras()).prop_map(
        |(messages, (tools, choice, format, effort, stream), mut extra)| {
            extra.insert("model".into(), "g".into());
            extra.insert("messages".into(), Value::Array(messages));
            let fields = [
                ("tools", tools.map(Value::Array)),
                ("tool_choice", choice),
                ("response_format", format),
                ("reasoning_effort", effort),
                ("stream", stream),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    extra.insert(name.into(), value);
                }
            }
            Value::Object(extra)
        },
    )
}

fn embeddings_request() -> impl Strategy<Value = Value> {
    (mostly(leaf()), extras()).prop_map(|(input, mut extra)| {
        extra.insert("model".into(), "g".into());
        extra.insert("input".into(), input);
        Value::Object(extra)
    })
}

/// A body for `path`: a near-valid request of its kind most of the time,
/// else any JSON, else any bytes.
fn body_for(path: &'static str) -> BoxedStrategy<Vec<u8>> {
    let shaped = match path {
        "/v1/chat/completions" => chat_request().boxed(),
        "/v1/embeddings" => embeddings_request().boxed(),
        _ => converse_request().boxed(),
    };
    prop_oneof![
        6 => shaped.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => vec(any::<u8>(), 0..256),
    ]
    .boxed()
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,40}", "-?[0-9]{1,25}", Just("Bearer ".to_owned())]
}

const PATHS: &[&str] = &[
    "/model/g/converse",
    "/model/g/converse-stream",
    "/model/g/invoke",
    "/model/g/invoke-with-response-stream",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/model/nope/converse",
];

const HEADERS: &[&str] = &[
    "x-switchyard-user",
    "x-switchyard-priority",
    "x-switchyard-max-wait-ms",
    "x-request-id",
    "authorization",
    "x-api-key",
    "content-type",
];

#[test]
fn client_requests_of_any_shape_get_an_answer_never_a_panic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_sim, app) = runtime.block_on(async {
        let sim = start_sim(
            vec![sim_model("model-a", None)],
            SystemClock::shared(),
        )
        .await;
        let text = format!(
            "[admission]\nmax_wait_ms = 0\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
            deployment("a", "model-a", 1, &sim)
        );
        let config = Config::parse(&text, "fuzz").unwrap();
        let gateway = Arc::new(
            Gateway::build(&config, SystemClock::shared(), &Upstreams::Aws).unwrap(),
        );
        (sim, gateway.app())
    });
    let request = proptest::sample::select(PATHS).prop_flat_map(|path| {
        (
            Just(path),
            body_for(path),
            prop_oneof![
                3 => Just(Vec::new()),
                1 => vec((proptest::sample::select(HEADERS), header_value()), 0..3),
            ],
        )
    });
    // Cases the gateway's parsers let through to the simulator: the
    // harness must reach translation code, not only the first refusal.
    let reached_bedrock = std::cell::Cell::new(0u32);
    runner()
        .run(&request, |(path, body, headers)| {
            let mut builder = Request::post(path);
            for (name, value) in &headers {
                builder = builder.header(*name, value.as_str());
            }
            let Ok(request) = builder.body(Body::from(body.clone())) else {
                return Ok(()); // not a header value http accepts: no request to make
            };
            let (status, answer) = runtime.block_on(async {
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status();
                // Read the whole answer: streams are answers too.
                let answer = axum::body::to_bytes(response.into_body(), 16 << 20)
                    .await
                    .unwrap_or_default();
                (status, answer)
            });
            let upstream_saw_it = status.is_success()
                || answer
                    .windows(b"rejected_by_bedrock".len())
                    .any(|w| w == b"rejected_by_bedrock");
            if upstream_saw_it {
                reached_bedrock.set(reached_bedrock.get() + 1);
            }
            prop_assert!(
                status.as_u16() != 500,
                "{path} answered 500 to {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        })
        .unwrap();
    assert!(
        reached_bedrock.get() >= cases() / 20,
        "only {} of {} cases got past the gateway's own checks",
        reached_bedrock.get(),
        cases()
    );
}

/// Config text: a valid file with lines dropped, doubled or changed, or
/// arbitrary text. Parsing answers `Ok` or an error; it never panics.
#[test]
fn config_files_of_any_shape_parse_or_say_why_not() {
    let valid = "listen = \"127.0.0.1:8080\"\n[http]\nheader_read_timeout_ms = 100\n[admission]\nmax_concurrent = 4\n[[deployments]]\nid = \"a\"\nmodel_id = \"m\"\nrpm = 10\ncredentials = { source = \"static\", access_key_id = \"k\", secret_access_key = \"s\" }\nassume_role = { role_arn = \"arn:aws:iam::1:role/r\" }\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n[model_groups.policies.selection]\nname = \"priority\"\n";
    let lines: Vec<String> = valid.lines().map(str::to_owned).collect();
    let text = prop_oneof![
        3 => vec((0..lines.len(), 0..3u8, "[ -~]{0,12}"), 0..6).prop_map(move |edits| {
            let mut out = lines.clone();
            for (i, kind, noise) in edits {
                let i = i % out.len().max(1);
                match kind {
                    0 if !out.is_empty() => {
                        out.remove(i);
                    }
                    1 if !out.is_empty() => {
                        let line = out[i].clone();
                        out.insert(i, line);
                    }
                    _ if !out.is_empty() => out[i].push_str(&noise),
                    _ => {}
                }
            }
            out.join("\n")
        }),
        1 => ".{0,200}",
    ];
    runner()
        .run(&text, |text| {
            let _ = Config::parse(&text, "fuzz");
            Ok(())
        })
        .unwrap();
}
