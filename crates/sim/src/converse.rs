//! What the simulator reads from a Converse request and what it answers:
//! a reply derived only from the prompt, so tests can predict it. Text,
//! images, tool results and reasoning count toward the input tokens; a
//! request that offers tools gets tool calls (see [`super::tools`]).

use serde_json::Value;

use super::tools::{sample_of, ToolUseContext};

/// The parts of a Converse request the simulator uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text of the last user message that has text.
    pub last_user_text: String,
    /// The last text block of that message (what a tool like Claude Code
    /// puts after its reminders: the prompt itself).
    pub last_user_block: String,
    /// The text of the tool results the last user message carries, when it
    /// carries any: the simulator's final answer repeats them.
    pub tool_results: Option<String>,
    /// Tokens of all input (system, messages, images, tool results).
    pub input_tokens: u64,
    /// `inferenceConfig.maxTokens`, when set.
    pub max_tokens: Option<u64>,
    /// The tools offered, the choice, and what was called before.
    pub tools: ToolUseContext,
    /// Extended thinking asked for (`additionalModelRequestFields.thinking`).
    pub thinking: bool,
    /// The prefix up to its last `cachePoint`, when it marks one.
    pub cache_prefix: Option<CachePrefix>,
    /// Of the input, the tokens read from the prompt cache and written to
    /// it (not in `input_tokens`); set by the simulator's cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

/// A prompt's prefix up to a `cachePoint`: what identifies it, and its
/// tokens (those of its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePrefix {
    pub key: u64,
    pub tokens: u64,
}

/// Finds the prefix up to the last `cachePoint` block of `system` and
/// `messages`, in order.
fn cache_prefix(system: Option<&Value>, messages: &[Value]) -> Option<CachePrefix> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut tokens = 0;
    let mut found = None;
    let mut walk = |role: &str, blocks: &Value| {
        for block in blocks.as_array().into_iter().flatten() {
            if block.get("cachePoint").is_some() {
                found = Some(CachePrefix {
                    key: hasher.clone().finish(),
                    tokens,
                });
                continue;
            }
            role.hash(&mut hasher);
            block.to_string().hash(&mut hasher);
            tokens += block
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, count_tokens);
        }
    };
    if let Some(system) = system {
        walk("system", system);
    }
    for message in messages {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        walk(role, message.get("content").unwrap_or(&Value::Null));
    }
    found
}

/// Words stand in for tokens: stable, easy to predict in tests.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn texts(content: &Value) -> impl Iterator<Item = &str> {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block.get("text").and_then(Value::as_str))
}

/// An image's tokens, as Anthropic counts them: width x height / 750, read
/// from a PNG's or GIF's header; 1 600 (their most) for other formats.
fn image_tokens(image: &Value) -> Result<u64, String> {
    let format = image.get("format").and_then(Value::as_str).unwrap_or("");
    if !matches!(format, "png" | "jpeg" | "gif" | "webp") {
        return Err(format!("Unsupported image format: {format:?}."));
    }
    let data = image
        .pointer("/source/bytes")
        .and_then(Value::as_str)
        .ok_or("An image needs source.bytes.")?;
    let bytes = aws_smithy_types::base64::decode(data)
        .map_err(|_| "The image's bytes are not valid base64.".to_owned())?;
    let dimensions = match format {
        "png" if bytes.len() >= 24 && bytes.starts_with(b"\x89PNG") => Some((
            u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        )),
        "gif" if bytes.len() >= 10 && bytes.starts_with(b"GIF8") => Some((
            u32::from(u16::from_le_bytes([bytes[6], bytes[7]])),
            u32::from(u16::from_le_bytes([bytes[8], bytes[9]])),
        )),
        "png" | "gif" => return Err(format!("The image is not a valid {format}.")),
        _ => None,
    };
    Ok(match dimensions {
        Some((w, h)) => (u64::from(w) * u64::from(h)).div_ceil(750).max(1),
        None => 1_600,
    })
}

/// The text of a `toolResult` block's content.
fn tool_result_text(result: &Value) -> String {
    let content = result.get("content").unwrap_or(&Value::Null);
    content
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| match (c.get("text"), c.get("json")) {
            (Some(Value::String(t)), _) => t.clone(),
            (_, Some(json)) => json.to_string(),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a Converse body, or says (as a ValidationException would) what is wrong.
pub fn parse_prompt(body: &[u8]) -> Result<Prompt, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("Malformed input request: {e}"))?;
    let messages = json
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("The request must contain at least one message in `messages`.")?;
    let mut tools = ToolUseContext::parse(&json)?;
    let mut input_tokens = 0;
    if let Some(system) = json.get("system") {
        input_tokens += texts(system).map(count_tokens).sum::<u64>();
    }
    let mut last_user_text = None;
    let mut last_user_block = String::new();
    let mut tool_results = None;
    let mut uses_tools = false;
    for message in messages {
        let role = message.get("role").and_then(Value::as_str);
        let content = message.get("content").unwrap_or(&Value::Null);
        let text: Vec<&str> = texts(content).collect();
        input_tokens += text.iter().map(|t| count_tokens(t)).sum::<u64>();
        let mut results = Vec::new();
        for block in content.as_array().into_iter().flatten() {
            if let Some(image) = block.get("image") {
                input_tokens += image_tokens(image)?;
            }
            if let Some(result) = block.get("toolResult") {
                uses_tools = true;
                let text = tool_result_text(result);
                input_tokens += count_tokens(&text);
                results.push(text);
            }
            if let Some(tool_use) = block.get("toolUse") {
                uses_tools = true;
                input_tokens += tool_use
                    .get("input")
                    .map_or(0, |i| count_tokens(&i.to_string()));
                if let Some(name) = tool_use.get("name").and_then(Value::as_str) {
                    tools.called.push(name.to_owned());
                }
            }
        }
        match role {
            Some("user") => {
                if !text.is_empty() {
                    last_user_text = Some(text.join(" "));
                    last_user_block = text.last().map_or(String::new(), |t| (*t).to_owned());
                }
                tool_results = (!results.is_empty()).then(|| results.join(" "));
            }
            Some("assistant") => {}
            other => return Err(format!("Invalid message role: {other:?}")),
        }
    }
    if uses_tools && tools.tools.is_empty() {
        return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
    }
    let last_user_text = match (last_user_text, &tool_results) {
        (Some(t), _) => t,
        (None, Some(_)) => String::new(),
        (None, None) => return Err("A conversation must start with a user message.".into()),
    };
    let max_tokens = json
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64);
    let thinking = json
        .pointer("/additionalModelRequestFields/thinking/type")
        .and_then(Value::as_str)
        == Some("enabled");
    Ok(Prompt {
        last_user_text,
        last_user_block,
        tool_results,
        input_tokens: input_tokens.max(1),
        max_tokens,
        tools,
        thinking,
        cache_prefix: cache_prefix(json.get("system"), messages),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
    })
}

/// An InvokeModel body in Anthropic's Messages format (`messages` whose
/// content is text or text blocks, `system` text, `max_tokens`) as the
/// Converse body it means, so one parser serves both APIs. Other model
/// families' bodies are refused, as a ValidationException would.
pub fn converse_from_anthropic(body: &[u8]) -> Result<Vec<u8>, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("Malformed input request: {e}"))?;
    // As Bedrock checks the body: a version (`bedrock-2023-05-31`, or the
    // API version newer SDKs send), and no `model` or `stream` (the path
    // and the operation say those).
    if !json.get("anthropic_version").is_some_and(Value::is_string) {
        return Err(
            "Malformed input request: #: required key [anthropic_version] not found".into(),
        );
    }
    for extraneous in ["model", "stream"] {
        if json.get(extraneous).is_some() {
            return Err(format!(
                "Malformed input request: #: extraneous key [{extraneous}] is not permitted"
            ));
        }
    }
    let messages = json.get("messages").and_then(Value::as_array).ok_or(
        "The simulator's InvokeModel speaks Anthropic's Messages body: `messages` is required.",
    )?;
    let blocks = |content: &Value| Value::Array(crate::anthropic::content(content));
    // A `system` message in the conversation (Claude Code sends them, with
    // the beta that allows them) is read as more system text.
    let is_system = |m: &&Value| m.get("role").and_then(Value::as_str) == Some("system");
    let mut converse = serde_json::json!({
        "messages": messages
            .iter()
            .filter(|m| !is_system(m))
            .map(|m| serde_json::json!({
                "role": m.get("role").cloned().unwrap_or(Value::Null),
                "content": blocks(m.get("content").unwrap_or(&Value::Null)),
            }))
            .collect::<Vec<_>>(),
    });
    let mut system: Vec<Value> = json
        .get("system")
        .map(crate::anthropic::content)
        .unwrap_or_default();
    for m in messages.iter().filter(is_system) {
        system.extend(crate::anthropic::content(
            m.get("content").unwrap_or(&Value::Null),
        ));
    }
    if !system.is_empty() {
        converse["system"] = Value::Array(system);
    }
    if let Some(config) = crate::anthropic::tool_config(&json) {
        converse["toolConfig"] = config;
    }
    if let Some(thinking) = json.get("thinking") {
        converse["additionalModelRequestFields"] = serde_json::json!({ "thinking": thinking });
    }
    if let Some(max) = json.get("max_tokens").and_then(Value::as_u64) {
        converse["inferenceConfig"] = serde_json::json!({ "maxTokens": max });
    }
    Ok(converse.to_string().into_bytes())
}

/// A tool call in the simulated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    pub input: Value,
}

/// The simulated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reasoning's words, when thinking was asked for.
    pub reasoning: Vec<String>,
    /// The output words, each with its separating space.
    pub pieces: Vec<String>,
    /// The tools it calls (then `pieces` is empty).
    pub tool_uses: Vec<ToolUse>,
    /// `end_turn`, `tool_use`, or `max_tokens` when cut short.
    pub stop_reason: &'static str,
}

/// The signature the simulator gives its reasoning, as Bedrock signs it.
pub const REASONING_SIGNATURE: &str = "switchyard-simulator-signature";

impl Reply {
    /// The whole text.
    pub fn text(&self) -> String {
        self.pieces.concat()
    }

    /// The whole reasoning.
    pub fn reasoning_text(&self) -> String {
        self.reasoning.concat()
    }

    /// Output tokens: the words of the text, the reasoning and the tool
    /// calls' arguments.
    pub fn output_tokens(&self) -> u64 {
        let tools: u64 = self
            .tool_uses
            .iter()
            .map(|t| count_tokens(&t.input.to_string()).max(1))
            .sum();
        (self.pieces.len() + self.reasoning.len()) as u64 + tools
    }

    /// The Converse `output.message.content` blocks.
    pub fn content_blocks(&self) -> Vec<Value> {
        let mut blocks = Vec::new();
        if !self.reasoning.is_empty() {
            blocks.push(serde_json::json!({"reasoningContent": {"reasoningText": {
                "text": self.reasoning_text(), "signature": REASONING_SIGNATURE}}}));
        }
        if !self.pieces.is_empty() || self.tool_uses.is_empty() {
            blocks.push(serde_json::json!({ "text": self.text() }));
        }
        for t in &self.tool_uses {
            blocks.push(serde_json::json!({"toolUse": {"toolUseId": t.id, "name": t.name, "input": t.input}}));
        }
        blocks
    }
}

/// Words with their separating spaces, cut at `limit`.
fn words_of(text: &str, limit: usize) -> (Vec<String>, bool) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let cut = words.len() > limit;
    let pieces = words[..words.len().min(limit)]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    (pieces, cut)
}

/// The reply to a prompt: the calls to the tools it wants, if any; else
/// "Simulated reply from <model>: <tool results, or the last user text>",
/// cut at `maxTokens` words. With thinking, "Considering: <last user text>"
/// comes first as reasoning.
pub fn reply_to(model_id: &str, prompt: &Prompt) -> Reply {
    let reasoning = if prompt.thinking {
        words_of(
            &format!("Considering: {}", prompt.last_user_text),
            usize::MAX,
        )
        .0
    } else {
        Vec::new()
    };
    let calls = prompt
        .tools
        .calls_for(&prompt.last_user_text, &prompt.last_user_block);
    if !calls.is_empty() {
        // Ids unique within a conversation: the turn number and the tool.
        let turn = prompt.tools.called.len();
        let tool_uses = calls
            .into_iter()
            .enumerate()
            .map(|(i, t)| ToolUse {
                id: format!("tooluse_sim_{turn}_{i}_{}", t.name),
                name: t.name.clone(),
                input: sample_of(&t.schema, ""),
            })
            .collect();
        return Reply {
            reasoning,
            pieces: Vec::new(),
            tool_uses,
            stop_reason: "tool_use",
        };
    }
    let said = prompt
        .tool_results
        .as_deref()
        .unwrap_or(&prompt.last_user_text);
    let full = format!("Simulated reply from {model_id}: {said}");
    let limit = prompt.max_tokens.map(|m| m as usize).unwrap_or(usize::MAX);
    let (pieces, cut) = words_of(&full, limit);
    Reply {
        reasoning,
        pieces,
        tool_uses: Vec::new(),
        stop_reason: if cut { "max_tokens" } else { "end_turn" },
    }
}

/// One ConverseStream event between `messageStart` and `messageStop`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub event_type: &'static str,
    pub payload: Value,
    /// It carries output, so the stream paces it like a token.
    pub is_delta: bool,
}

/// The content blocks of `reply` as ConverseStream events: reasoning deltas
/// and their signature, text deltas, and each tool call as a start and its
/// arguments' JSON in two fragments, as Bedrock splits them.
pub fn stream_events(reply: &Reply) -> Vec<StreamEvent> {
    use serde_json::json;
    let mut events = Vec::new();
    let delta = |index: usize, delta: Value| StreamEvent {
        event_type: "contentBlockDelta",
        payload: json!({"contentBlockIndex": index, "delta": delta}),
        is_delta: true,
    };
    let stop = |index: usize| StreamEvent {
        event_type: "contentBlockStop",
        payload: json!({ "contentBlockIndex": index }),
        is_delta: false,
    };
    let mut index = 0;
    if !reply.reasoning.is_empty() {
        for piece in &reply.reasoning {
            events.push(delta(index, json!({"reasoningContent": {"text": piece}})));
        }
        events.push(delta(
            index,
            json!({"reasoningContent": {"signature": REASONING_SIGNATURE}}),
        ));
        events.push(stop(index));
        index += 1;
    }
    if !reply.pieces.is_empty() || reply.tool_uses.is_empty() {
        for piece in &reply.pieces {
            events.push(delta(index, json!({ "text": piece })));
        }
        events.push(stop(index));
        index += 1;
    }
    for tool in &reply.tool_uses {
        events.push(StreamEvent {
            event_type: "contentBlockStart",
            payload: json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": tool.id, "name": tool.name}}}),
            is_delta: false,
        });
        let input = tool.input.to_string();
        let mut middle = input.len() / 2;
        while !input.is_char_boundary(middle) {
            middle -= 1;
        }
        for fragment in [&input[..middle], &input[middle..]] {
            events.push(delta(index, json!({"toolUse": {"input": fragment}})));
        }
        events.push(stop(index));
        index += 1;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_derived_from_the_last_user_message() {
        let body = br#"{"system":[{"text":"be brief"}],"messages":[
            {"role":"user","content":[{"text":"first question"}]},
            {"role":"assistant","content":[{"text":"ok"}]},
            {"role":"user","content":[{"text":"hello there"}]}]}"#;
        let prompt = parse_prompt(body).unwrap();
        assert_eq!(prompt.last_user_text, "hello there");
        assert_eq!(prompt.input_tokens, 7);
        let reply = reply_to("m", &prompt);
        assert_eq!(reply.text(), "Simulated reply from m: hello there");
        assert_eq!(reply.stop_reason, "end_turn");
        assert_eq!(reply.output_tokens(), 6);
    }

    #[test]
    fn max_tokens_cuts_the_reply() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"a b c"}]}],"inferenceConfig":{"maxTokens":2}}"#;
        let reply = reply_to("m", &parse_prompt(body).unwrap());
        assert_eq!(reply.text(), "Simulated reply");
        assert_eq!(reply.stop_reason, "max_tokens");
    }

    #[test]
    fn an_anthropic_body_reads_as_the_converse_one() {
        let body =
            br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":3,"system":"be brief",
            "messages":[{"role":"user","content":"hello there"}]}"#;
        let prompt = parse_prompt(&converse_from_anthropic(body).unwrap()).unwrap();
        assert_eq!(prompt.last_user_text, "hello there");
        assert_eq!(prompt.input_tokens, 4);
        assert_eq!(prompt.max_tokens, Some(3));
        assert!(converse_from_anthropic(br#"{"inputText":"x"}"#).is_err());
    }

    #[test]
    fn empty_messages_are_a_validation_error() {
        assert!(parse_prompt(br#"{"messages":[]}"#).is_err());
        assert!(parse_prompt(b"not json").is_err());
    }

    fn weather_request(extra: Value) -> Vec<u8> {
        let mut body = serde_json::json!({
            "messages": [{"role": "user", "content": [{"text": "use get_weather and get_time please"}]}],
            "toolConfig": {"tools": [
                {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}},
                {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object", "properties": {"zone": {"type": "string"}}}}}},
                {"toolSpec": {"name": "get_news", "inputSchema": {"json": {"type": "object"}}}}
            ]}
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        body.to_string().into_bytes()
    }

    #[test]
    fn tools_named_by_the_user_are_called_then_their_results_answered() {
        let prompt = parse_prompt(&weather_request(serde_json::json!({}))).unwrap();
        let reply = reply_to("m", &prompt);
        assert_eq!(reply.stop_reason, "tool_use");
        let called: Vec<&str> = reply.tool_uses.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(called, ["get_weather", "get_time"]);
        assert_eq!(
            reply.tool_uses[0].input,
            serde_json::json!({"city": "sample city"})
        );
        let mut body: Value =
            serde_json::from_slice(&weather_request(serde_json::json!({}))).unwrap();
        let messages = body["messages"].as_array_mut().unwrap();
        messages.push(serde_json::json!({"role": "assistant", "content": reply.content_blocks()}));
        messages.push(serde_json::json!({"role": "user", "content": [
            {"toolResult": {"toolUseId": reply.tool_uses[0].id, "content": [{"text": "sunny"}]}},
            {"toolResult": {"toolUseId": reply.tool_uses[1].id, "content": [{"json": {"h": 9}}]}}
        ]}));
        let second = reply_to("m", &parse_prompt(body.to_string().as_bytes()).unwrap());
        assert_eq!(second.text(), r#"Simulated reply from m: sunny {"h":9}"#);
        assert_eq!(second.stop_reason, "end_turn");
    }

    #[test]
    fn tool_blocks_without_tools_are_refused() {
        let body = br#"{"messages":[{"role":"user","content":[{"toolResult":{"toolUseId":"x","content":[{"text":"r"}]}}]}]}"#;
        assert!(parse_prompt(body).unwrap_err().contains("toolConfig"));
    }

    #[test]
    fn a_tool_call_streams_as_a_start_and_its_arguments_in_fragments() {
        let prompt = parse_prompt(&weather_request(serde_json::json!({}))).unwrap();
        let events = stream_events(&reply_to("m", &prompt));
        let first = &events[0];
        assert_eq!(first.event_type, "contentBlockStart");
        assert_eq!(first.payload["start"]["toolUse"]["name"], "get_weather");
        let arguments: String = events
            .iter()
            .filter(|e| e.payload["contentBlockIndex"] == 0)
            .filter_map(|e| {
                e.payload
                    .pointer("/delta/toolUse/input")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(arguments, r#"{"city":"sample city"}"#);
    }

    #[test]
    fn images_count_toward_input_tokens_by_their_size() {
        // A 30 x 50 PNG header: 1 500 pixels, so 2 tokens, plus one word.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&30u32.to_be_bytes());
        png.extend_from_slice(&50u32.to_be_bytes());
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"text": "describe"},
            {"image": {"format": "png", "source": {"bytes": aws_smithy_types::base64::encode(&png)}}}
        ]}]});
        assert_eq!(
            parse_prompt(body.to_string().as_bytes())
                .unwrap()
                .input_tokens,
            3
        );
        let bad = serde_json::json!({"messages": [{"role": "user", "content": [
            {"image": {"format": "png", "source": {"bytes": "%%%"}}}]}]});
        assert!(parse_prompt(bad.to_string().as_bytes()).is_err());
    }

    #[test]
    fn thinking_adds_signed_reasoning() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"why"}]}],
            "additionalModelRequestFields":{"thinking":{"type":"enabled","budget_tokens":1024}}}"#;
        let reply = reply_to("m", &parse_prompt(body).unwrap());
        assert_eq!(reply.reasoning_text(), "Considering: why");
        let blocks = reply.content_blocks();
        assert_eq!(
            blocks[0]["reasoningContent"]["reasoningText"]["signature"],
            REASONING_SIGNATURE
        );
        assert_eq!(reply.output_tokens(), 2 + 5);
    }
}
