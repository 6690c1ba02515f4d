//! Anthropic's Messages body, as Bedrock's Claude takes it through
//! InvokeModel: read as the Converse request it means (so one parser and
//! one answer serve both APIs), and the answer written back as Anthropic's
//! message or stream events.

use serde_json::{json, Value};

use crate::converse::{Reply, REASONING_SIGNATURE};

/// The Converse block of one Anthropic content block, and a cache point
/// after it when it is marked `cache_control`. Thinking blocks from earlier
/// turns are dropped (the simulator does not read them); an unknown block
/// is kept out, as Bedrock's Claude would refuse it.
fn converse_blocks(block: &Value) -> Vec<Value> {
    let converted = match block.get("type").and_then(Value::as_str) {
        Some("text") => block.get("text").map(|t| json!({ "text": t })),
        Some("image") => {
            let source = block.get("source").unwrap_or(&Value::Null);
            let format = source
                .get("media_type")
                .and_then(Value::as_str)
                .map(|m| m.trim_start_matches("image/"));
            source
                .get("data")
                .map(|data| json!({ "image": { "format": format, "source": { "bytes": data } } }))
        }
        Some("tool_use") => Some(json!({ "toolUse": {
            "toolUseId": block.get("id"),
            "name": block.get("name"),
            "input": block.get("input").cloned().unwrap_or(json!({})),
        }})),
        Some("tool_result") => {
            let text = match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            Some(json!({ "toolResult": {
                "toolUseId": block.get("tool_use_id"),
                "content": [{ "text": text }],
            }}))
        }
        _ => None,
    };
    let point = block
        .get("cache_control")
        .map(|_| json!({ "cachePoint": { "type": "default" } }));
    converted.into_iter().chain(point).collect()
}

/// A message's (or the system's) content as Converse blocks.
pub fn content(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({ "text": text })],
        Value::Array(blocks) => blocks.iter().flat_map(converse_blocks).collect(),
        _ => Vec::new(),
    }
}

/// `tools` and `tool_choice` as Converse's `toolConfig`. Tools without an
/// `input_schema` (Anthropic's server tools) are left out. With `auto` (or
/// no choice) the simulator calls a tool only when the prompt names it, as
/// a model would rather answer "hello" in words.
pub fn tool_config(request: &Value) -> Option<Value> {
    let tools: Vec<Value> = request
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|tool| {
            let schema = tool.get("input_schema")?;
            Some(json!({ "toolSpec": {
                "name": tool.get("name"),
                "description": tool.get("description"),
                "inputSchema": { "json": schema },
            }}))
        })
        .collect();
    if tools.is_empty() {
        return None;
    }
    let choice = request.get("tool_choice");
    let kind = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let mut config = json!({ "tools": tools, "namedOnly": true });
    match kind {
        Some("any") => {
            config["toolChoice"] = json!({ "any": {} });
            config["namedOnly"] = json!(false);
        }
        Some("tool") => {
            let name = choice.and_then(|c| c.get("name"));
            config["toolChoice"] = json!({ "tool": { "name": name } });
            config["namedOnly"] = json!(false);
        }
        _ => config["toolChoice"] = json!({ "auto": {} }),
    }
    Some(config)
}

/// The answer's content blocks, in Anthropic's form.
pub fn message_content(reply: &Reply) -> Vec<Value> {
    let mut blocks = Vec::new();
    if !reply.reasoning.is_empty() {
        blocks.push(json!({
            "type": "thinking",
            "thinking": reply.reasoning_text(),
            "signature": REASONING_SIGNATURE,
        }));
    }
    if !reply.pieces.is_empty() || reply.tool_uses.is_empty() {
        blocks.push(json!({ "type": "text", "text": reply.text() }));
    }
    for tool in &reply.tool_uses {
        blocks.push(
            json!({ "type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input }),
        );
    }
    blocks
}

/// The answer's content as Anthropic stream events, between
/// `message_start` and `message_delta`: each block's start, deltas (text,
/// thinking and its signature, a tool's input in two fragments) and stop.
/// Each event says whether it is the first text delta (after which a
/// simulated fault breaks the stream).
pub fn content_events(reply: &Reply) -> Vec<(Value, bool)> {
    let mut events = Vec::new();
    let mut index = 0;
    let mut block = |start: Value, deltas: Vec<Value>, events: &mut Vec<(Value, bool)>| {
        events.push((
            json!({ "type": "content_block_start", "index": index, "content_block": start }),
            false,
        ));
        for delta in deltas {
            let first_text = delta["type"] == "text_delta" && !events.iter().any(|(_, f)| *f);
            events.push((
                json!({ "type": "content_block_delta", "index": index, "delta": delta }),
                first_text,
            ));
        }
        events.push((
            json!({ "type": "content_block_stop", "index": index }),
            false,
        ));
        index += 1;
    };
    if !reply.reasoning.is_empty() {
        let mut deltas: Vec<Value> = reply
            .reasoning
            .iter()
            .map(|piece| json!({ "type": "thinking_delta", "thinking": piece }))
            .collect();
        deltas.push(json!({ "type": "signature_delta", "signature": REASONING_SIGNATURE }));
        block(
            json!({ "type": "thinking", "thinking": "" }),
            deltas,
            &mut events,
        );
    }
    if !reply.pieces.is_empty() || reply.tool_uses.is_empty() {
        let deltas = reply
            .pieces
            .iter()
            .map(|piece| json!({ "type": "text_delta", "text": piece }))
            .collect();
        block(json!({ "type": "text", "text": "" }), deltas, &mut events);
    }
    for tool in &reply.tool_uses {
        let input = tool.input.to_string();
        let mut middle = input.len() / 2;
        while !input.is_char_boundary(middle) {
            middle -= 1;
        }
        let deltas = [&input[..middle], &input[middle..]]
            .iter()
            .map(|fragment| json!({ "type": "input_json_delta", "partial_json": fragment }))
            .collect();
        let start = json!({ "type": "tool_use", "id": tool.id, "name": tool.name, "input": {} });
        block(start, deltas, &mut events);
    }
    events
}
