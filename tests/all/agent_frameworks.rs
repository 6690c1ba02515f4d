//! What agent frameworks (LangChain, the OpenAI Agents SDK, LlamaIndex)
//! send through the official `openai` Python client, unchanged: tool
//! conversations (plain and streamed, with parallel calls), images, JSON
//! mode, reasoning, embeddings, and a clear 400 for what cannot be mapped.

use serde_json::json;
use switchyard::clock::ManualClock;
use switchyard::sim::Fault;

use crate::support::*;

const CLAUDE: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const TITAN: &str = "amazon.titan-embed-text-v2:0";
const COHERE: &str = "cohere.embed-english-v3";

async fn gateway() -> (switchyard::sim::SimHandle, TestGateway) {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![
            sim_model(CLAUDE, None),
            sim_model(TITAN, None),
            sim_model(COHERE, None),
        ],
        clock.clone(),
    )
    .await;
    let config = format!(
        "{}{}{}{}
[[model_groups]]
name = \"claude\"
deployments = [\"a\"]

[[model_groups]]
name = \"titan\"
deployments = [\"titan-a\", \"titan-b\"]

[[model_groups]]
name = \"cohere\"
deployments = [\"cohere-a\"]
",
        deployment("a", CLAUDE, 1, &sim),
        deployment("titan-a", TITAN, 1, &sim),
        deployment("titan-b", TITAN, 2, &sim),
        deployment("cohere-a", COHERE, 1, &sim),
    );
    let gw = start_gateway(&config, clock).await;
    (sim, gw)
}

const TOOLS_SCRIPT: &str = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
tools = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
     "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
]
question = {"role": "user", "content": "Use get_weather and get_time for Oslo"}
out = {}

# Plain: the call, the tools' results, the final answer.
messages = [question]
r = client.chat.completions.create(model="claude", messages=messages, tools=tools,
                                   tool_choice="auto", parallel_tool_calls=True)
m = r.choices[0].message
out["plain_calls"] = [{"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)}
                      for c in m.tool_calls]
out["plain_finish"] = r.choices[0].finish_reason
out["plain_content"] = m.content
messages.append(m)  # the answer's own object, as frameworks pass it back
for c in m.tool_calls:
    messages.append({"role": "tool", "tool_call_id": c.id, "content": c.function.name + " says fine"})
r = client.chat.completions.create(model="claude", messages=messages, tools=tools)
out["plain_final"] = r.choices[0].message.content
out["plain_final_finish"] = r.choices[0].finish_reason
out["plain_final_calls"] = r.choices[0].message.tool_calls

# Streamed: tool-call deltas assembled by index, as frameworks do.
def stream(messages):
    calls, text, finish = {}, "", None
    for chunk in client.chat.completions.create(model="claude", messages=messages, tools=tools, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            if tc.function is not None:
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, [calls[i] for i in sorted(calls)], finish

messages = [question]
text, calls, finish = stream(messages)
out["stream_calls"] = [{"id": c["id"], "name": c["name"], "arguments": json.loads(c["arguments"])} for c in calls]
out["stream_finish"] = finish
messages.append({"role": "assistant", "content": None, "tool_calls": [
    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
for c in calls:
    messages.append({"role": "tool", "tool_call_id": c["id"], "content": c["name"] + " streamed fine"})
text, calls, finish = stream(messages)
out["stream_final"] = text
out["stream_final_finish"] = finish
print(json.dumps(out))
"#;

#[tokio::test]
async fn a_two_turn_tool_conversation_with_parallel_calls_plain_and_streamed() {
    let (sim, gw) = gateway().await;
    let out = run_python(TOOLS_SCRIPT, &[&gw.url()]).await;
    for mode in ["plain", "stream"] {
        let calls = &out[format!("{mode}_calls")];
        assert_eq!(calls.as_array().unwrap().len(), 2, "{mode}: {out}");
        assert_eq!(calls[0]["name"], "get_weather", "{mode}");
        assert_eq!(
            calls[0]["arguments"],
            json!({"city": "sample city"}),
            "{mode}"
        );
        assert_eq!(calls[1]["name"], "get_time", "{mode}");
        assert_eq!(
            calls[1]["arguments"],
            json!({"zone": "sample zone"}),
            "{mode}"
        );
        assert_ne!(calls[0]["id"], calls[1]["id"], "{mode}");
        assert_eq!(out[format!("{mode}_finish")], "tool_calls", "{mode}");
        assert_eq!(out[format!("{mode}_final_finish")], "stop", "{mode}");
    }
    assert_eq!(out["plain_content"], serde_json::Value::Null);
    assert_eq!(out["plain_final_calls"], serde_json::Value::Null);
    // The simulator's final answer repeats the tool results it was sent:
    // proof that they reached Bedrock as toolResult blocks.
    assert_eq!(
        out["plain_final"],
        format!("Simulated reply from {CLAUDE}: get_weather says fine get_time says fine")
    );
    assert_eq!(
        out["stream_final"],
        format!("Simulated reply from {CLAUDE}: get_weather streamed fine get_time streamed fine")
    );
    assert_eq!(sim.counts(CLAUDE).successes, 4);
}

const CONTENT_SCRIPT: &str = r#"
import base64, json, struct, sys, zlib, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
out = {}

def png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x40\x80\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")

image = "data:image/png;base64," + base64.b64encode(png(300, 250)).decode()
r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
]}])
out["image_answer"] = r.choices[0].message.content
out["image_prompt_tokens"] = r.usage.prompt_tokens
try:
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
except openai.BadRequestError as e:
    out["web_image"] = e.body

schema = {"type": "object", "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}},
          "required": ["city", "temperature"]}
r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Weather as JSON"}],
    response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}})
out["json_schema"] = json.loads(r.choices[0].message.content)
out["json_schema_finish"] = r.choices[0].finish_reason
r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Any JSON"}],
    response_format={"type": "json_object"})
out["json_object"] = json.loads(r.choices[0].message.content)
streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model="claude", messages=[{"role": "user", "content": "Weather as JSON"}], stream=True,
    response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}) if c.choices)
out["json_streamed"] = json.loads(streamed)

r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "why is the sky blue"}],
    reasoning_effort="low", max_tokens=2000)
out["reasoning"] = (r.choices[0].message.model_extra or {}).get("reasoning_content")
out["reasoned_answer"] = r.choices[0].message.content

for field, value in [("logprobs", True), ("presence_penalty", 0.7)]:
    try:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], **{field: value})
    except openai.BadRequestError as e:
        out["refused_" + field] = e.body
try:
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                   extra_body={"prediction": {"type": "content", "content": "y"}})
except openai.BadRequestError as e:
    out["refused_prediction"] = e.body
print(json.dumps(out))
"#;

#[tokio::test]
async fn images_json_mode_and_reasoning_through_the_openai_client() {
    let (sim, gw) = gateway().await;
    let out = run_python(CONTENT_SCRIPT, &[&gw.url()]).await;
    assert_eq!(
        out["image_answer"],
        format!("Simulated reply from {CLAUDE}: What is in this image?")
    );
    // Five words, and a 300 x 250 image at width x height / 750 tokens.
    assert_eq!(out["image_prompt_tokens"], 5 + 100);
    assert_eq!(out["web_image"]["code"], "unsupported_parameter");
    assert_eq!(
        out["web_image"]["param"],
        "messages[0].content[0].image_url.url"
    );
    assert!(out["web_image"]["message"]
        .as_str()
        .unwrap()
        .contains("only data URLs"));
    assert_eq!(
        out["json_schema"],
        json!({"city": "sample city", "temperature": 1.5})
    );
    assert_eq!(out["json_schema_finish"], "stop");
    assert_eq!(out["json_object"], json!({}));
    assert_eq!(out["json_streamed"], out["json_schema"]);
    assert_eq!(out["reasoning"], "Considering: why is the sky blue");
    assert_eq!(
        out["reasoned_answer"],
        format!("Simulated reply from {CLAUDE}: why is the sky blue")
    );
    for field in ["logprobs", "presence_penalty", "prediction"] {
        let refused = &out[format!("refused_{field}")];
        assert_eq!(refused["param"], field, "{out}");
        assert_eq!(refused["code"], "unsupported_parameter");
        assert!(refused["message"].as_str().unwrap().contains(field));
    }
    // Refused requests never reached Bedrock: 1 image, 3 JSON, 1 reasoning.
    assert_eq!(sim.counts(CLAUDE).calls, 5);
}

const EMBEDDINGS_SCRIPT: &str = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
out = {}
raw = client.embeddings.with_raw_response.create(model="titan", input=["first text", "second one here", "first text"])
r = raw.parse()
out["titan_deployment"] = raw.headers.get("x-switchyard-deployment")
out["titan_lengths"] = [len(d.embedding) for d in r.data]
out["titan_indexes"] = [d.index for d in r.data]
out["titan_same"] = r.data[0].embedding == r.data[2].embedding
out["titan_differ"] = r.data[0].embedding != r.data[1].embedding
out["titan_norm"] = sum(x * x for x in r.data[1].embedding)
out["titan_usage"] = r.usage.model_dump()
r = client.embeddings.create(model="titan", input="short", dimensions=256, encoding_format="float")
out["titan_256"] = len(r.data[0].embedding)
r = client.embeddings.create(model="cohere", input=["a", "b c", "d e f"])
out["cohere_lengths"] = [len(d.embedding) for d in r.data]
out["cohere_usage"] = r.usage.prompt_tokens
try:
    client.embeddings.create(model="claude", input="x")
except openai.BadRequestError as e:
    out["chat_group"] = e.body
print(json.dumps(out))
"#;

#[tokio::test]
async fn embeddings_through_titan_and_cohere_with_fallback() {
    let (sim, gw) = gateway().await;
    // The first Titan call is throttled: the request falls back to the
    // group's other deployment, as a chat request would.
    sim.inject(TITAN, Fault::Throttle, 1);
    let out = run_python(EMBEDDINGS_SCRIPT, &[&gw.url()]).await;
    assert_eq!(out["titan_deployment"], "titan-b", "{out}");
    assert_eq!(out["titan_lengths"], json!([1024, 1024, 1024]));
    assert_eq!(out["titan_indexes"], json!([0, 1, 2]));
    assert_eq!(out["titan_same"], true);
    assert_eq!(out["titan_differ"], true);
    assert!((out["titan_norm"].as_f64().unwrap() - 1.0).abs() < 1e-3);
    // Titan counts 2 + 3 + 2 words.
    assert_eq!(
        out["titan_usage"],
        json!({"prompt_tokens": 7, "total_tokens": 7})
    );
    assert_eq!(out["titan_256"], 256);
    assert_eq!(out["cohere_lengths"], json!([1024, 1024, 1024]));
    assert_eq!(out["cohere_usage"], 6);
    assert_eq!(out["chat_group"]["code"], "not_an_embedding_model");
    assert_eq!(out["chat_group"]["param"], "model");
    assert_eq!(sim.counts(COHERE).calls, 1, "96 texts a call");
    assert!(sim.counts(TITAN).throttles >= 1);
}
