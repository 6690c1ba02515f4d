//! A Converse answer as a `chat.completion`: text, reasoning, tool calls
//! (or, in JSON mode, the JSON tool's input as the content), the finish
//! reason and the usage with its cached tokens.

use serde_json::{json, Value};

use super::to_converse::JSON_TOOL;

/// OpenAI's `finish_reason` for a Converse `stopReason`; `tool_use` is
/// `tool_calls` only when the answer carries calls for the client.
pub fn finish_reason(stop_reason: &str, has_tool_calls: bool) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        "tool_use" if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// OpenAI's `usage` for a Converse `usage`. Bedrock counts cached input
/// apart from `inputTokens`; OpenAI's `prompt_tokens` includes it. OpenAI
/// has no word for tokens written to the cache: when the prompt used the
/// cache, Anthropic's `cache_creation_input_tokens` and
/// `cache_read_input_tokens` say both, as LiteLLM reports them.
pub fn usage(converse_usage: &Value) -> Value {
    let n = |k: &str| converse_usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cacheReadInputTokens");
    let written = n("cacheWriteInputTokens");
    let prompt = n("inputTokens") + cached + written;
    let completion = n("outputTokens");
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    });
    let used_cache = ["cacheReadInputTokens", "cacheWriteInputTokens"]
        .iter()
        .any(|k| converse_usage.get(k).is_some());
    if used_cache {
        usage["cache_creation_input_tokens"] = json!(written);
        usage["cache_read_input_tokens"] = json!(cached);
    }
    usage
}

/// The `chat.completion` object for a Converse answer.
pub fn completion(id: &str, created: u64, model: &str, json_mode: bool, converse: &Value) -> Value {
    let blocks = converse
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(r) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(r);
        } else if let Some(call) = block.get("toolUse") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            let input = call.get("input").cloned().unwrap_or_else(|| json!({}));
            if json_mode && name == JSON_TOOL {
                text.push_str(&input.to_string());
                continue;
            }
            tool_calls.push(json!({
                "id": call.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": { "name": name, "arguments": input.to_string() },
            }));
        }
    }
    let stop = converse
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let finish = finish_reason(stop, !tool_calls.is_empty());
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage(converse.get("usage").unwrap_or(&Value::Null)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_maps_to_a_completion() {
        let converse = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " you"}]}},
            "stopReason": "max_tokens",
            "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5, "cacheReadInputTokens": 4}
        });
        let c = completion("chatcmpl-1", 7, "claude", false, &converse);
        assert_eq!(c["choices"][0]["message"]["content"], "Hello you");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4},
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4})
        );
        assert_eq!(c["object"], "chat.completion");
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn tool_use_and_reasoning_map_back() {
        let converse = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "Let me look", "signature": "s"}}},
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Oslo"}}},
                {"toolUse": {"toolUseId": "t2", "name": "get_time", "input": {}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}
        });
        let c = completion("i", 1, "m", false, &converse);
        let message = &c["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["reasoning_content"], "Let me look");
        assert_eq!(
            message["tool_calls"][0],
            json!({"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}})
        );
        assert_eq!(message["tool_calls"][1]["id"], "t2");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn in_json_mode_the_json_tool_is_the_content() {
        let converse = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "t", "name": JSON_TOOL, "input": {"a": 1}}}
            ]}},
            "stopReason": "tool_use"
        });
        let c = completion("i", 1, "m", true, &converse);
        assert_eq!(c["choices"][0]["message"]["content"], "{\"a\":1}");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
    }
}
