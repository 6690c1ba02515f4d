//! ConverseStream events as `chat.completion.chunk`s. Stateful: a tool
//! call's later argument fragments name it by the index its start was
//! given, and OpenAI numbers tool calls from 0 where Converse numbers every
//! content block.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::answer::{finish_reason, usage};
use super::to_converse::JSON_TOOL;

/// What a content block that started as a tool call is.
#[derive(Debug, Clone, Copy)]
enum ToolBlock {
    /// A call for the client: OpenAI's tool call index.
    Call(usize),
    /// JSON mode's answer: its fragments are content.
    JsonAnswer,
}

/// Turns one stream's events into chunks.
#[derive(Debug)]
pub struct ChunkTranslator {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    json_mode: bool,
    tool_blocks: HashMap<u64, ToolBlock>,
    tool_calls: usize,
}

impl ChunkTranslator {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        include_usage: bool,
        json_mode: bool,
    ) -> Self {
        Self {
            id,
            created,
            model,
            include_usage,
            json_mode,
            tool_blocks: HashMap::new(),
            tool_calls: 0,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    }

    /// The chunks an event becomes (a Converse event type and its payload).
    pub fn chunks(&mut self, event_type: &str, payload: &Value) -> Vec<Value> {
        let block = payload.get("contentBlockIndex").and_then(Value::as_u64);
        match event_type {
            "messageStart" => vec![self.chunk(json!({ "role": "assistant", "content": "" }), None)],
            "contentBlockStart" => {
                let Some(start) = payload.pointer("/start/toolUse") else {
                    return Vec::new();
                };
                let name = start
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.json_mode && name == JSON_TOOL {
                    self.tool_blocks
                        .insert(block.unwrap_or(0), ToolBlock::JsonAnswer);
                    return Vec::new();
                }
                let index = self.tool_calls;
                self.tool_calls += 1;
                self.tool_blocks
                    .insert(block.unwrap_or(0), ToolBlock::Call(index));
                vec![self.chunk(
                    json!({"tool_calls": [{
                        "index": index,
                        "id": start.get("toolUseId").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": { "name": name, "arguments": "" },
                    }]}),
                    None,
                )]
            }
            "contentBlockDelta" => {
                let Some(delta) = payload.get("delta") else {
                    return Vec::new();
                };
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    return vec![self.chunk(json!({ "content": text }), None)];
                }
                if let Some(text) = delta
                    .pointer("/reasoningContent/text")
                    .and_then(Value::as_str)
                {
                    return vec![self.chunk(json!({ "reasoning_content": text }), None)];
                }
                let Some(fragment) = delta.pointer("/toolUse/input").and_then(Value::as_str) else {
                    return Vec::new();
                };
                match self.tool_blocks.get(&block.unwrap_or(0)) {
                    Some(ToolBlock::JsonAnswer) => {
                        vec![self.chunk(json!({ "content": fragment }), None)]
                    }
                    Some(ToolBlock::Call(index)) => vec![self.chunk(
                        json!({"tool_calls": [{ "index": index, "function": { "arguments": fragment } }]}),
                        None,
                    )],
                    None => Vec::new(),
                }
            }
            "messageStop" => {
                let stop = payload
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                vec![self.chunk(json!({}), Some(finish_reason(stop, self.tool_calls > 0)))]
            }
            "metadata" if self.include_usage => vec![json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(payload.get("usage").unwrap_or(&Value::Null)),
            })],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_events_map_to_chunks() {
        let mut t = ChunkTranslator::new("i".into(), 1, "m".into(), false, false);
        let delta = t.chunks(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        );
        assert_eq!(delta[0]["choices"][0]["delta"]["content"], "Hi");
        let stop = t.chunks("messageStop", &json!({"stopReason": "end_turn"}));
        assert_eq!(stop[0]["choices"][0]["finish_reason"], "stop");
        let meta = json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}});
        assert!(t.chunks("metadata", &meta).is_empty());
        let mut with_usage = ChunkTranslator::new("i".into(), 1, "m".into(), true, false);
        assert_eq!(
            with_usage.chunks("metadata", &meta)[0]["usage"]["total_tokens"],
            3
        );
        assert!(t.chunks("contentBlockStop", &json!({})).is_empty());
    }

    #[test]
    fn tool_calls_stream_as_indexed_deltas() {
        let mut t = ChunkTranslator::new("i".into(), 1, "m".into(), false, false);
        t.chunks(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
        );
        let start = t.chunks("contentBlockStart", &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "a"}}}));
        assert_eq!(
            start[0]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "t1", "type": "function", "function": {"name": "a", "arguments": ""}})
        );
        t.chunks("contentBlockStart", &json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t2", "name": "b"}}}));
        let fragment = t.chunks(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"x\""}}}),
        );
        assert_eq!(
            fragment[0]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 1, "function": {"arguments": "{\"x\""}})
        );
        let stop = t.chunks("messageStop", &json!({"stopReason": "tool_use"}));
        assert_eq!(stop[0]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn json_mode_streams_the_json_tool_as_content_and_reasoning_as_its_own() {
        let mut t = ChunkTranslator::new("i".into(), 1, "m".into(), false, true);
        let thought = t.chunks(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}}),
        );
        assert_eq!(
            thought[0]["choices"][0]["delta"]["reasoning_content"],
            "hmm"
        );
        assert!(t
            .chunks("contentBlockStart", &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "j", "name": JSON_TOOL}}}))
            .is_empty());
        let content = t.chunks(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":1}"}}}),
        );
        assert_eq!(content[0]["choices"][0]["delta"]["content"], "{\"a\":1}");
        let stop = t.chunks("messageStop", &json!({"stopReason": "tool_use"}));
        assert_eq!(stop[0]["choices"][0]["finish_reason"], "stop");
    }
}
