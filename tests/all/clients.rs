//! The official client libraries people already use, unchanged, against
//! the gateway: OpenAI's Python `openai` and AWS's `boto3`, from PyPI.

use switchyard::clock::ManualClock;

use crate::support::*;

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

async fn gateway() -> (switchyard::sim::SimHandle, TestGateway) {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model(MODEL, None)], clock.clone()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"claude\"\ndeployments = [\"a\"]\n",
        deployment("a", MODEL, 1, &sim)
    );
    let gw = start_gateway(&config, clock).await;
    (sim, gw)
}

const OPENAI_SCRIPT: &str = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
out = {}
r = client.chat.completions.create(
    model="claude",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello gateway"}],
    max_tokens=64, temperature=0.2, stop=["END"],
)
out["content"] = r.choices[0].message.content
out["finish"] = r.choices[0].finish_reason
out["usage"] = r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
chunks = list(client.chat.completions.create(
    model="claude", messages=[{"role": "user", "content": "stream please"}],
    stream=True, stream_options={"include_usage": True},
))
out["stream_text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
out["stream_finish"] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
out["stream_usage"] = [c.usage.model_dump(include={"total_tokens"}) for c in chunks if c.usage]
out["models"] = [m.id for m in client.models.list()]
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    out["not_found"] = e.body
print(json.dumps(out))
"#;

#[tokio::test]
async fn the_openai_python_client_works_unchanged() {
    let (sim, gw) = gateway().await;
    let out = run_python(OPENAI_SCRIPT, &[&gw.url()]).await;
    assert_eq!(
        out["content"],
        format!("Simulated reply from {MODEL}: hello gateway")
    );
    assert_eq!(out["finish"], "stop");
    // The simulator counts a token per word: 4 in (system + user), 6 out.
    assert_eq!(out["usage"]["prompt_tokens"], 4);
    assert_eq!(out["usage"]["completion_tokens"], 6);
    assert_eq!(out["usage"]["total_tokens"], 10);
    assert_eq!(
        out["stream_text"],
        format!("Simulated reply from {MODEL}: stream please")
    );
    assert_eq!(out["stream_finish"], serde_json::json!(["stop"]));
    assert_eq!(out["stream_usage"][0]["total_tokens"], 8);
    assert_eq!(out["models"], serde_json::json!(["claude"]));
    assert_eq!(out["not_found"]["code"], "model_not_found");
    assert_eq!(sim.counts(MODEL).calls, 2);
}

const BOTO3_SCRIPT: &str = r#"
import json, sys, boto3
from botocore.config import Config
client = boto3.client(
    "bedrock-runtime", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id="x", aws_secret_access_key="x",
    config=Config(retries={"max_attempts": 1}),
)
out = {}
r = client.converse(modelId="claude", messages=[{"role": "user", "content": [{"text": "hello boto"}]}])
out["converse"] = r["output"]["message"]["content"][0]["text"]
out["usage"] = r["usage"]
s = client.converse_stream(modelId="claude", messages=[{"role": "user", "content": [{"text": "stream boto"}]}])
text, usage = "", None
for event in s["stream"]:
    if "contentBlockDelta" in event:
        text += event["contentBlockDelta"]["delta"]["text"]
    if "metadata" in event:
        usage = event["metadata"]["usage"]
out["stream"] = text
out["stream_usage"] = usage
anthropic = {
    "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "invoke me"}]}],
}
r = client.invoke_model(modelId="claude", body=json.dumps(anthropic))
answer = json.loads(r["body"].read())
out["invoke"] = answer["content"][0]["text"]
out["invoke_usage"] = answer["usage"]
out["invoke_deployment"] = r["ResponseMetadata"]["HTTPHeaders"].get("x-switchyard-deployment")
s = client.invoke_model_with_response_stream(modelId="claude", body=json.dumps(anthropic))
text = ""
for event in s["body"]:
    chunk = json.loads(event["chunk"]["bytes"])
    if chunk["type"] == "content_block_delta":
        text += chunk["delta"]["text"]
out["invoke_stream"] = text
print(json.dumps(out))
"#;

#[tokio::test]
async fn boto3_bedrock_runtime_works_unchanged_for_converse_and_invoke_model() {
    let (_sim, gw) = gateway().await;
    let out = run_python(BOTO3_SCRIPT, &[&gw.url()]).await;
    assert_eq!(
        out["converse"],
        format!("Simulated reply from {MODEL}: hello boto")
    );
    assert_eq!(
        out["usage"]["totalTokens"],
        out["usage"]["inputTokens"].as_u64().unwrap()
            + out["usage"]["outputTokens"].as_u64().unwrap()
    );
    assert_eq!(
        out["stream"],
        format!("Simulated reply from {MODEL}: stream boto")
    );
    assert!(out["stream_usage"]["outputTokens"].as_u64().unwrap() > 0);
    assert_eq!(
        out["invoke"],
        format!("Simulated reply from {MODEL}: invoke me")
    );
    assert_eq!(out["invoke_usage"]["output_tokens"], 6);
    assert_eq!(out["invoke_deployment"], "a");
    assert_eq!(
        out["invoke_stream"],
        format!("Simulated reply from {MODEL}: invoke me")
    );
}
