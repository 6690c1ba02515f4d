//! The OpenAI request bodies the gateway reads, and its rule for the fields
//! it does not map: a short list is accepted and ignored (each with its
//! reason, in `docs/openai.md`); any other field that would change the
//! answer is refused with 400 naming it, never dropped silently.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A request that cannot be mapped: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub param: String,
    pub message: String,
}

pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Unsupported {
    Unsupported {
        param: param.into(),
        message: message.into(),
    }
}

/// A `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    /// `"auto"`, `"none"`, `"required"` or `{"type": "function", ...}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Anthropic's own `{"type": "enabled", "budget_tokens": N}`, as
    /// LiteLLM-style clients send it.
    #[serde(default)]
    pub thinking: Option<Value>,
    /// Every other field, checked by [`check_unmapped`].
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `stop`: one sequence or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A message's content: text, or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub image_url: Option<ImageUrl>,
    /// Anthropic's prompt-caching mark (`{"type": "ephemeral"}`), which
    /// clients of Claude through OpenAI's API put on a part: the prefix up
    /// to it is cached.
    #[serde(default)]
    pub cache_control: Option<CacheControl>,
}

/// A part's prompt-caching mark.
#[derive(Debug, Deserialize)]
pub struct CacheControl {
    #[serde(rename = "type")]
    pub kind: String,
}

/// An `image_url` part's image.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// A tool the model may call.
#[derive(Debug, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub function: Option<FunctionSpec>,
}

/// A function tool's definition.
#[derive(Debug, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON schema of the arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// An assistant's call of a tool.
#[derive(Debug, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub function: FunctionCall,
}

/// The function a call names, with its arguments as a JSON string.
#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// Request fields accepted and ignored: none changes what the model
/// answers (`seed` only asks for repeatability Bedrock does not offer).
/// `parallel_tool_calls`: Bedrock's models may call several tools in a
/// turn, which is OpenAI's default; Converse cannot forbid it.
const IGNORED: &[&str] = &[
    "parallel_tool_calls",
    "store",
    "metadata",
    "service_tier",
    "seed",
    "prompt_cache_key",
    "safety_identifier",
];

/// Message fields accepted and ignored: what a client echoes back from an
/// earlier answer.
const IGNORED_IN_MESSAGES: &[&str] = &["name", "refusal", "annotations", "reasoning_content"];

/// Checks fields the gateway does not map. Null is as good as absent, and
/// a field set to its neutral value (a penalty of 0, `logprobs: false`) is
/// accepted; anything else is refused, naming it.
pub fn check_unmapped(other: &Map<String, Value>, prefix: &str) -> Result<(), Unsupported> {
    let ignored = if prefix.is_empty() {
        IGNORED
    } else {
        IGNORED_IN_MESSAGES
    };
    for (field, value) in other {
        let neutral = match (field.as_str(), value) {
            (_, Value::Null) => true,
            (f, _) if ignored.contains(&f) => true,
            ("frequency_penalty" | "presence_penalty" | "top_logprobs", v) => {
                v.as_f64() == Some(0.0)
            }
            ("logprobs", v) => v == &Value::Bool(false),
            ("logit_bias", Value::Object(m)) => m.is_empty(),
            ("modalities", Value::Array(m)) => m.iter().all(|x| x == "text"),
            _ => false,
        };
        if neutral {
            continue;
        }
        let param = format!("{prefix}{field}");
        let message = match field.as_str() {
            "functions" | "function_call" => {
                "is OpenAI's legacy form; send `tools` and `tool_choice`".to_owned()
            }
            _ => "has no Bedrock equivalent here: the gateway refuses it rather than ignore it (see docs/openai.md)".to_owned(),
        };
        return Err(unsupported(param, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<(), Unsupported> {
        let r: ChatRequest = serde_json::from_value(body).unwrap();
        check_unmapped(&r.other, "")
    }

    #[test]
    fn neutral_and_listed_fields_pass_and_others_are_named() {
        let base = |extra: Value| {
            let mut b = json!({"model": "m", "messages": []});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            b
        };
        assert!(check(base(json!({"seed": 7, "store": false, "frequency_penalty": 0, "logprobs": false, "audio": null}))).is_ok());
        assert_eq!(
            check(base(json!({"presence_penalty": 0.5})))
                .unwrap_err()
                .param,
            "presence_penalty"
        );
        assert_eq!(
            check(base(json!({"audio": {"voice": "x"}})))
                .unwrap_err()
                .param,
            "audio"
        );
        assert!(check(base(json!({"functions": []})))
            .unwrap_err()
            .message
            .contains("tools"));
    }
}
