//! Anthropic's Messages API through the gateway, driven by the official
//! `anthropic` Python SDK, unchanged, against the simulator.

use serde_json::json;
use switchyard::clock::SystemClock;
use switchyard::sim::Fault;

use crate::support::*;

const CLAUDE: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";

/// A gateway with group `claude` over the simulator's Claude, and group
/// `scarce`, whose deployment takes one request a minute.
async fn gateway() -> (switchyard::sim::SimHandle, TestGateway) {
    let sim = start_sim(
        vec![sim_model(CLAUDE, None), sim_model(HAIKU, None)],
        SystemClock::shared(),
    )
    .await;
    let config = format!(
        "{}{}rpm = 1\n[[model_groups]]\nname = \"claude\"\ndeployments = [\"a\"]\n[[model_groups]]\nname = \"scarce\"\ndeployments = [\"s\"]\n",
        deployment("a", CLAUDE, 1, &sim),
        deployment("s", HAIKU, 1, &sim),
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    (sim, gw)
}

const SDK_SCRIPT: &str = r#"
import json, sys, anthropic
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="unused", max_retries=0)
ask = [{"role": "user", "content": "hello there gateway"}]
out = {}
m = client.messages.create(model="claude", max_tokens=64, system="be brief", messages=ask)
out["plain"] = {"type": m.type, "role": m.role, "text": m.content[0].text, "stop_reason": m.stop_reason, "usage": m.usage.model_dump()}
with client.messages.stream(model="claude", max_tokens=64, messages=ask) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
out["streamed"] = {"text": streamed, "final_text": final.content[0].text, "stop_reason": final.stop_reason}
out["counted"] = client.messages.count_tokens(model="claude", system="be brief", messages=ask).input_tokens
b = client.beta.messages.create(model="claude", max_tokens=16, messages=ask, betas=["token-efficient-tools-2025-02-19"])
out["beta"] = b.content[0].text
def failure(call):
    try:
        call()
        return None
    except anthropic.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "type": e.body["error"]["type"], "retry_after": e.response.headers.get("retry-after")}
out["unknown_model"] = failure(lambda: client.messages.create(model="nope", max_tokens=8, messages=ask))
out["no_messages"] = failure(lambda: client.messages.create(model="claude", max_tokens=8, messages=[]))
client.messages.create(model="scarce", max_tokens=8, messages=ask)
out["rate_limited"] = failure(lambda: client.messages.create(model="scarce", max_tokens=8, messages=ask, extra_headers={"x-switchyard-max-wait-ms": "0"}))
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_works_through_the_gateway() {
    let (_sim, gw) = gateway().await;
    let out = run_python(SDK_SCRIPT, &[&format!("http://{}", gw.addr)]).await;
    let plain = &out["plain"];
    assert_eq!(plain["type"], "message", "{out}");
    assert_eq!(plain["role"], "assistant");
    assert!(!plain["text"].as_str().unwrap().is_empty(), "{out}");
    assert_eq!(plain["stop_reason"], "end_turn");
    assert!(
        plain["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{out}"
    );
    let streamed = &out["streamed"];
    assert_eq!(streamed["text"], streamed["final_text"], "{out}");
    assert_eq!(
        streamed["text"], plain["text"],
        "the same answer, streamed: {out}"
    );
    assert_eq!(streamed["stop_reason"], "end_turn");
    assert!(!out["beta"].as_str().unwrap().is_empty(), "{out}");
    assert_eq!(
        out["counted"], plain["usage"]["input_tokens"],
        "count_tokens counts what the message's usage says: {out}"
    );
    assert_eq!(
        out["unknown_model"],
        json!({ "class": "NotFoundError", "status": 404, "type": "not_found_error", "retry_after": null })
    );
    assert_eq!(out["no_messages"]["class"], "BadRequestError", "{out}");
    assert_eq!(out["no_messages"]["type"], "invalid_request_error", "{out}");
    let limited = &out["rate_limited"];
    assert_eq!(limited["class"], "RateLimitError", "{out}");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["type"], "rate_limit_error");
    assert!(limited["retry_after"].as_str().is_some(), "{out}");
}

const THROTTLED_STREAM_SCRIPT: &str = r#"
import json, sys, anthropic
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="unused", max_retries=0)
events = []
error = None
try:
    with client.messages.stream(model="claude", max_tokens=64, messages=[{"role": "user", "content": "a long answer please"}]) as stream:
        for event in stream:
            events.append(event.type)
except anthropic.APIStatusError as e:
    error = {"type": e.body["error"]["type"], "message": e.body["error"]["message"]}
print(json.dumps({"events": events, "error": error}))
"#;

/// A stream whose upstream throttles after its first words ends with an
/// Anthropic `error` event, never a clean `message_stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_throttled_mid_way_ends_with_an_error_event() {
    let (sim, gw) = gateway().await;
    sim.inject(CLAUDE, Fault::StreamThrottle, 1);
    let out = run_python(THROTTLED_STREAM_SCRIPT, &[&format!("http://{}", gw.addr)]).await;
    let events: Vec<&str> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(events.contains(&"text"), "its first words arrived: {out}");
    assert!(!events.contains(&"message_stop"), "{out}");
    assert_eq!(out["error"]["type"], "rate_limit_error", "{out}");
}

/// The events of a raw stream, as the wire carries them: `event:` lines
/// whose names match their data's `type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_stream_is_anthropics_server_sent_events() {
    let (_sim, gw) = gateway().await;
    let body = json!({ "model": "claude", "max_tokens": 32, "stream": true, "messages": [{ "role": "user", "content": "hi" }] });
    let answer = raw_post(
        gw.addr,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    let text = answer.body_text();
    let mut names = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = event
            .strip_prefix("event: ")
            .and_then(|e| e.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an SSE event: {event:?}"));
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name, "{event}");
        assert!(data.get("amazon-bedrock-invocationMetrics").is_none());
        names.push(name.to_owned());
    }
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(
        names.iter().any(|n| n == "content_block_delta"),
        "{names:?}"
    );
}

const SONNET_PROFILE: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const HAIKU_PROFILE_ARN: &str =
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0";

const BEDROCK_SDK_SCRIPT: &str = r#"
import json, sys, anthropic
client = anthropic.AnthropicBedrock(base_url=sys.argv[1], aws_access_key="test", aws_secret_key="test", aws_region="us-east-1", max_retries=0)
ask = [{"role": "user", "content": "hello there gateway"}]
out = {}
for model in sys.argv[2:]:
    m = client.messages.create(model=model, max_tokens=64, messages=ask)
    with client.messages.stream(model=model, max_tokens=64, messages=ask) as stream:
        streamed = "".join(stream.text_stream)
    out[model] = {"text": m.content[0].text, "streamed": streamed, "stop_reason": m.stop_reason}
print(json.dumps(out))
"#;

/// A group answers to its aliases: the model ids Claude Code and
/// `AnthropicBedrock` send unchanged, an inference-profile ARN among them
/// (URL-encoded in the path), on Bedrock's own routes; `/v1/models` lists
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_answers_to_its_aliases_in_bedrock_mode() {
    let sim = start_sim(vec![sim_model(CLAUDE, None)], SystemClock::shared()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"claude\"\naliases = [\"{SONNET_PROFILE}\", \"{HAIKU_PROFILE_ARN}\"]\ndeployments = [\"a\"]\n",
        deployment("a", CLAUDE, 1, &sim),
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let out = run_python(
        BEDROCK_SDK_SCRIPT,
        &[
            &format!("http://{}", gw.addr),
            SONNET_PROFILE,
            HAIKU_PROFILE_ARN,
            "claude",
        ],
    )
    .await;
    let by_name = &out["claude"];
    assert!(!by_name["text"].as_str().unwrap().is_empty(), "{out}");
    for model in [SONNET_PROFILE, HAIKU_PROFILE_ARN] {
        assert_eq!(out[model]["text"], by_name["text"], "{model}: {out}");
        assert_eq!(out[model]["streamed"], by_name["text"], "{model}: {out}");
        assert_eq!(out[model]["stop_reason"], "end_turn");
    }
    let models = raw_get(gw.addr, "/v1/models").await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["claude", HAIKU_PROFILE_ARN, SONNET_PROFILE],
        "{models}"
    );
    assert_eq!(models["data"][1]["alias_of"], "claude");
}

const CACHING_SCRIPT: &str = r#"
import json, sys, anthropic, openai
base = sys.argv[1]
long_system = "You are a careful assistant. " * 40
claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
out = {"messages": [], "chat": []}
for question in ["first question", "second question"]:
    m = claude.messages.create(
        model="claude", max_tokens=32,
        system=[{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": question}],
    )
    out["messages"].append(m.usage.model_dump())
chat = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
for question in ["third question", "fourth question"]:
    r = chat.chat.completions.create(
        model="claude", max_tokens=32,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": long_system + "(chat)", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": question},
        ],
    )
    out["chat"].append(r.usage.model_dump())
print(json.dumps(out))
"#;

/// Prompt caching on both routes: two requests sharing a prefix marked
/// `cache_control` write the cache, then read it, and say so in usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cached_prefix_is_written_then_read_on_both_routes() {
    let (_sim, gw) = gateway().await;
    let out = run_python(CACHING_SCRIPT, &[&format!("http://{}", gw.addr)]).await;
    let messages = out["messages"].as_array().unwrap();
    let written = messages[0]["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(written > 100, "{out}");
    assert_eq!(messages[0]["cache_read_input_tokens"], 0, "{out}");
    assert_eq!(messages[1]["cache_read_input_tokens"], written, "{out}");
    assert_eq!(messages[1]["cache_creation_input_tokens"], 0, "{out}");
    let chat = out["chat"].as_array().unwrap();
    let written = chat[0]["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(written > 100, "{out}");
    assert_eq!(
        chat[0]["prompt_tokens_details"]["cached_tokens"], 0,
        "{out}"
    );
    assert_eq!(
        chat[1]["prompt_tokens_details"]["cached_tokens"], written,
        "{out}"
    );
    assert_eq!(chat[1]["cache_read_input_tokens"], written, "{out}");

    // /metrics counts each kind of token the four answers said they used.
    let u = |answer: &serde_json::Value, key: &str| answer[key].as_u64().unwrap();
    let (mut input, mut output, mut read, mut write) = (0, 0, 0, 0);
    for m in messages {
        input += u(m, "input_tokens");
        output += u(m, "output_tokens");
        read += u(m, "cache_read_input_tokens");
        write += u(m, "cache_creation_input_tokens");
    }
    for c in chat {
        let (cached, created) = (
            u(c, "cache_read_input_tokens"),
            u(c, "cache_creation_input_tokens"),
        );
        input += u(c, "prompt_tokens") - cached - created;
        output += u(c, "completion_tokens");
        read += cached;
        write += created;
    }
    let metrics = raw_get(gw.addr, "/metrics").await.body_text();
    let counted = |kind: &str| {
        let series = format!(
            "switchyard_tokens_total{{group=\"claude\",deployment=\"a\",kind=\"{kind}\"}} "
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {series}in /metrics:\n{metrics}"))
    };
    assert_eq!(counted("input"), input);
    assert_eq!(counted("output"), output);
    assert_eq!(counted("cache_read"), read);
    assert_eq!(counted("cache_write"), write);
}

/// The Claude Code release the test drives: its default Bedrock model ids
/// are the aliases below (a later release may change them).
const CLAUDE_CODE: &str = "@anthropic-ai/claude-code@2.1.197";
const CLAUDE_CODE_SONNET: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const CLAUDE_CODE_HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

/// Claude Code's `claude`, installed from npm under `target/` on first
/// use; `None` (with the reason printed) where npm cannot install it.
fn claude_code() -> Option<std::path::PathBuf> {
    static CLAUDE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    CLAUDE
        .get_or_init(|| {
            let dir = repo().join("target/claude-code");
            let claude = dir.join("node_modules/.bin/claude");
            let version = CLAUDE_CODE.rsplit('@').next().unwrap();
            let installed = std::process::Command::new(&claude)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with(version));
            if installed {
                return Some(claude);
            }
            std::fs::create_dir_all(&dir).unwrap();
            let out = std::process::Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    CLAUDE_CODE,
                ])
                .current_dir(&dir)
                .output();
            match out {
                Ok(out) if out.status.success() => Some(claude),
                Ok(out) => {
                    eprintln!(
                        "SKIPPED: npm could not install {CLAUDE_CODE}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    None
                }
                Err(e) => {
                    eprintln!("SKIPPED: npm is not available to install {CLAUDE_CODE}: {e}");
                    None
                }
            }
        })
        .clone()
}

/// Runs `claude -p PROMPT --output-format json` with `env`, in a home of
/// its own, and returns its result.
async fn claude_p(claude: &std::path::Path, env: &[(&str, &str)]) -> serde_json::Value {
    let home = ScratchDir::new("claude-home");
    let run = tokio::process::Command::new(claude)
        .args(["-p", "Say hello", "--output-format", "json"])
        .current_dir(&*home)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &*home)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("claude finished in time")
        .expect("claude ran");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "claude printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Claude Code itself, headless, completes a one-turn prompt through the
/// gateway in both of its modes: Anthropic API mode (`ANTHROPIC_BASE_URL`,
/// model pinned to the group) and Bedrock mode (`ANTHROPIC_BEDROCK_BASE_URL`,
/// its default model ids unchanged, which the group has as aliases), each
/// with the gateway's API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_completes_a_prompt_in_both_modes() {
    let Some(claude) = tokio::task::spawn_blocking(claude_code).await.unwrap() else {
        return;
    };
    let sim = start_sim(vec![sim_model(CLAUDE, None)], SystemClock::shared()).await;
    // With API keys: Claude Code presents its key as `x-api-key` in API
    // mode and as a Bedrock API key (a bearer token) in Bedrock mode.
    const KEY: &str = "sk-claude-code-0123456789";
    let config = format!(
        "[[api_keys]]\nkey = \"{KEY}\"\nuser = \"dev\"\n{}[[model_groups]]\nname = \"claude\"\naliases = [\"{CLAUDE_CODE_SONNET}\", \"{CLAUDE_CODE_HAIKU}\"]\ndeployments = [\"a\"]\n",
        deployment("a", CLAUDE, 1, &sim),
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let url = format!("http://{}", gw.addr);

    let api_mode = claude_p(
        &claude,
        &[
            ("ANTHROPIC_BASE_URL", &url),
            ("ANTHROPIC_API_KEY", KEY),
            ("ANTHROPIC_MODEL", "claude"),
            ("ANTHROPIC_DEFAULT_HAIKU_MODEL", "claude"),
        ],
    )
    .await;
    let bedrock_mode = claude_p(
        &claude,
        &[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("ANTHROPIC_BEDROCK_BASE_URL", &url),
            ("AWS_BEARER_TOKEN_BEDROCK", KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    )
    .await;
    for (mode, result) in [("API", &api_mode), ("Bedrock", &bedrock_mode)] {
        assert_eq!(result["is_error"], false, "{mode} mode: {result}");
        assert!(
            result["result"]
                .as_str()
                .is_some_and(|r| r.starts_with("Simulated reply") && r.contains("Say hello")),
            "{mode} mode: {result}"
        );
    }
    assert!(sim.counts(CLAUDE).calls >= 2);
}

const CONTENT_SCRIPT: &str = r#"
import base64, json, struct, sys, zlib, anthropic
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="unused", max_retries=0)
out = {}
tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
ask = [{"role": "user", "content": "use get_weather for Oslo"}]
first = client.messages.create(model="claude", max_tokens=256, tools=tools, messages=ask)
call = next(b for b in first.content if b.type == "tool_use")
answer = [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]
second = client.messages.create(model="claude", max_tokens=256, tools=tools, messages=ask + [
    {"role": "assistant", "content": first.content}, {"role": "user", "content": answer}])
out["tool"] = {"stop": first.stop_reason, "name": call.name, "input": call.input, "final": second.content[0].text, "final_stop": second.stop_reason}
with client.messages.stream(model="claude", max_tokens=256, tools=tools, messages=ask) as stream:
    streamed = stream.get_final_message()
out["streamed_tool"] = [{"type": b.type, "name": getattr(b, "name", None), "input": getattr(b, "input", None)} for b in streamed.content]
plain = client.messages.create(model="claude", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "just say hello"}])
out["no_tool"] = [b.type for b in plain.content]
thinking = {"type": "enabled", "budget_tokens": 1024}
t = client.messages.create(model="claude", max_tokens=2048, thinking=thinking, messages=[{"role": "user", "content": "think first"}])
out["thinking"] = {"types": [b.type for b in t.content], "signature": t.content[0].signature, "thought": t.content[0].thinking}
with client.messages.stream(model="claude", max_tokens=2048, thinking=thinking, messages=[{"role": "user", "content": "think first"}]) as stream:
    s = stream.get_final_message()
out["streamed_thinking"] = {"types": [b.type for b in s.content], "signature": s.content[0].signature, "thought": s.content[0].thinking}

def png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x40\x80\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png(300, 250)).decode()}}
text = {"type": "text", "text": "What is in this image?"}
with_image = client.messages.create(model="claude", max_tokens=64, messages=[{"role": "user", "content": [image, text]}])
without = client.messages.create(model="claude", max_tokens=64, messages=[{"role": "user", "content": [text]}])
out["image_tokens"] = [with_image.usage.input_tokens, without.usage.input_tokens]
print(json.dumps(out))
"#;

/// A tool-use round trip (plain and streamed), extended thinking with its
/// signature, and an image, through the Anthropic SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_thinking_and_images_pass_through() {
    let (_sim, gw) = gateway().await;
    let out = run_python(CONTENT_SCRIPT, &[&format!("http://{}", gw.addr)]).await;
    let tool = &out["tool"];
    assert_eq!(tool["stop"], "tool_use", "{out}");
    assert_eq!(tool["name"], "get_weather");
    assert_eq!(tool["input"]["city"], "sample city", "{out}");
    assert!(
        tool["final"].as_str().unwrap().contains("sunny, 21 C"),
        "the answer uses the tool's result: {out}"
    );
    assert_eq!(tool["final_stop"], "end_turn");
    assert_eq!(
        out["streamed_tool"],
        json!([{ "type": "tool_use", "name": "get_weather", "input": { "city": "sample city" } }])
    );
    assert_eq!(
        out["no_tool"],
        json!(["text"]),
        "auto: words, no tool: {out}"
    );
    for key in ["thinking", "streamed_thinking"] {
        let t = &out[key];
        assert_eq!(t["types"], json!(["thinking", "text"]), "{key}: {out}");
        assert_eq!(t["signature"], "switchyard-simulator-signature", "{key}");
        assert!(!t["thought"].as_str().unwrap().is_empty(), "{key}");
    }
    assert_eq!(
        out["thinking"]["thought"],
        out["streamed_thinking"]["thought"]
    );
    let tokens = out["image_tokens"].as_array().unwrap();
    assert!(
        tokens[0].as_u64() > tokens[1].as_u64(),
        "the image counts as input: {out}"
    );
}

/// A streamed message settles the deployment's TPM from the usage Bedrock
/// reports at its end (`amazon-bedrock-invocationMetrics`), not from its
/// reservation of `max_tokens`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_message_settles_its_tokens_from_its_usage() {
    let sim = start_sim(vec![sim_model(CLAUDE, None)], SystemClock::shared()).await;
    let config = format!(
        "{}tpm = 100000\n[[model_groups]]\nname = \"claude\"\ndeployments = [\"a\"]\n",
        deployment("a", CLAUDE, 1, &sim),
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let body = json!({ "model": "claude", "max_tokens": 8000, "stream": true, "messages": [{ "role": "user", "content": "hello" }] });
    let answer = raw_post(gw.addr, "/v1/messages", &[], body.to_string().as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert!(answer.body_text().contains("event: message_stop"));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stats = raw_get(gw.addr, "/model_stats").await.json();
        let available = stats["stats"]["models"][0]["tpm_available"]
            .as_u64()
            .unwrap();
        // The simulator's answer to "hello" is a few dozen tokens.
        if available > 99_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{available} tokens left of 100000 after a short stream: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
