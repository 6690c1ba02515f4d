//! What the simulator reads from a Converse request and what it answers:
//! a reply derived only from the prompt, so tests can predict it.

use serde_json::Value;

/// The parts of a Converse request the simulator uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text of the last user message.
    pub last_user_text: String,
    /// Tokens of all input text (system and messages).
    pub input_tokens: u64,
    /// `inferenceConfig.maxTokens`, when set.
    pub max_tokens: Option<u64>,
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

/// Reads a Converse body, or says (as a ValidationException would) what is wrong.
pub fn parse_prompt(body: &[u8]) -> Result<Prompt, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("Malformed input request: {e}"))?;
    let messages = json
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("The request must contain at least one message in `messages`.")?;
    let mut input_tokens = 0;
    if let Some(system) = json.get("system") {
        input_tokens += texts(system).map(count_tokens).sum::<u64>();
    }
    let mut last_user_text = None;
    for message in messages {
        let role = message.get("role").and_then(Value::as_str);
        let content = message.get("content").unwrap_or(&Value::Null);
        let text: Vec<&str> = texts(content).collect();
        input_tokens += text.iter().map(|t| count_tokens(t)).sum::<u64>();
        match role {
            Some("user") => last_user_text = Some(text.join(" ")),
            Some("assistant") => {}
            other => return Err(format!("Invalid message role: {other:?}")),
        }
    }
    let last_user_text = last_user_text.ok_or("A conversation must start with a user message.")?;
    let max_tokens = json
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64);
    Ok(Prompt {
        last_user_text,
        input_tokens: input_tokens.max(1),
        max_tokens,
    })
}

/// An InvokeModel body in Anthropic's Messages format (`messages` whose
/// content is text or text blocks, `system` text, `max_tokens`) as the
/// Converse body it means, so one parser serves both APIs. Other model
/// families' bodies are refused, as a ValidationException would.
pub fn converse_from_anthropic(body: &[u8]) -> Result<Vec<u8>, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("Malformed input request: {e}"))?;
    let messages = json.get("messages").and_then(Value::as_array).ok_or(
        "The simulator's InvokeModel speaks Anthropic's Messages body: `messages` is required.",
    )?;
    let blocks = |content: &Value| -> Value {
        match content {
            Value::String(text) => serde_json::json!([{ "text": text }]),
            Value::Array(parts) => Value::Array(
                parts
                    .iter()
                    .filter_map(|p| p.get("text"))
                    .map(|t| serde_json::json!({ "text": t }))
                    .collect(),
            ),
            _ => serde_json::json!([]),
        }
    };
    let mut converse = serde_json::json!({
        "messages": messages
            .iter()
            .map(|m| serde_json::json!({
                "role": m.get("role").cloned().unwrap_or(Value::Null),
                "content": blocks(m.get("content").unwrap_or(&Value::Null)),
            }))
            .collect::<Vec<_>>(),
    });
    if let Some(system) = json.get("system") {
        converse["system"] = blocks(system);
    }
    if let Some(max) = json.get("max_tokens").and_then(Value::as_u64) {
        converse["inferenceConfig"] = serde_json::json!({ "maxTokens": max });
    }
    Ok(converse.to_string().into_bytes())
}

/// The simulated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The output words, each with its separating space.
    pub pieces: Vec<String>,
    /// `end_turn`, or `max_tokens` when cut short.
    pub stop_reason: &'static str,
}

impl Reply {
    /// The whole text.
    pub fn text(&self) -> String {
        self.pieces.concat()
    }

    /// Output tokens.
    pub fn output_tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

/// The reply to a prompt: "Simulated reply from <model>: <last user text>",
/// cut at `maxTokens` words.
pub fn reply_to(model_id: &str, prompt: &Prompt) -> Reply {
    let full = format!("Simulated reply from {model_id}: {}", prompt.last_user_text);
    let words: Vec<&str> = full.split_whitespace().collect();
    let limit = prompt.max_tokens.map(|m| m as usize).unwrap_or(usize::MAX);
    let cut = words.len() > limit;
    let kept = &words[..words.len().min(limit)];
    let pieces = kept
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
    Reply {
        pieces,
        stop_reason: if cut { "max_tokens" } else { "end_turn" },
    }
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
}
