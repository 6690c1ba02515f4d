//! OpenAI chat completions to Bedrock Converse and back: requests, answers,
//! stream events and finish reasons. Pure functions of JSON, so each mapping
//! is unit-tested on its own.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// A `POST /v1/chat/completions` body: the fields Switchyard maps. Others
/// (`presence_penalty`, `seed`, ...) have no Converse equivalent and are
/// ignored, as OpenAI-compatible servers commonly do.
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
}

/// A message's content: text, or a list of parts of which only text ones
/// are supported.
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
}

/// A request that cannot be mapped: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub param: String,
    pub message: String,
}

fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Unsupported {
    Unsupported {
        param: param.into(),
        message: message.into(),
    }
}

impl ChatRequest {
    /// The output budget the client set, if any.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The Converse request body for this chat request.
    pub fn to_converse(&self) -> Result<Value, Unsupported> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(unsupported("n", "only n = 1 is supported"));
        }
        let mut system = Vec::new();
        let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            let text = text_of(m, i)?;
            match m.role.as_str() {
                "system" | "developer" => system.push(json!({ "text": text })),
                role @ ("user" | "assistant") => {
                    let block = json!({ "text": text });
                    // Converse wants turns to alternate: consecutive messages
                    // of one role become one turn of several blocks.
                    match messages.last_mut() {
                        Some((last, blocks)) if last == role => blocks.push(block),
                        _ => messages.push((role.to_owned(), vec![block])),
                    }
                }
                other => {
                    return Err(unsupported(
                        format!("messages[{i}].role"),
                        format!("role `{other}` is not supported (system, developer, user and assistant are)"),
                    ))
                }
            }
        }
        if messages.is_empty() {
            return Err(unsupported(
                "messages",
                "needs at least one user or assistant message",
            ));
        }
        let mut body = Map::new();
        body.insert(
            "messages".into(),
            Value::Array(
                messages
                    .into_iter()
                    .map(|(role, content)| json!({ "role": role, "content": content }))
                    .collect(),
            ),
        );
        if !system.is_empty() {
            body.insert("system".into(), Value::Array(system));
        }
        let mut inference = Map::new();
        if let Some(max) = self.max_output_tokens() {
            inference.insert("maxTokens".into(), json!(max));
        }
        if let Some(t) = self.temperature {
            inference.insert("temperature".into(), json!(t));
        }
        if let Some(p) = self.top_p {
            inference.insert("topP".into(), json!(p));
        }
        match &self.stop {
            None => {}
            Some(Stop::One(s)) => {
                inference.insert("stopSequences".into(), json!([s]));
            }
            Some(Stop::Many(v)) if !v.is_empty() => {
                inference.insert("stopSequences".into(), json!(v));
            }
            Some(Stop::Many(_)) => {}
        }
        if !inference.is_empty() {
            body.insert("inferenceConfig".into(), Value::Object(inference));
        }
        Ok(Value::Object(body))
    }
}

fn text_of(m: &ChatMessage, i: usize) -> Result<String, Unsupported> {
    match &m.content {
        None => Err(unsupported(format!("messages[{i}].content"), "is missing")),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!("content part `{kind}` is not supported (text is)"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        "tool_use" => "tool_calls",
        _ => "stop",
    }
}

/// OpenAI's `usage` for a Converse `usage`.
pub fn usage(converse_usage: &Value) -> Value {
    let n = |k: &str| converse_usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    json!({
        "prompt_tokens": n("inputTokens"),
        "completion_tokens": n("outputTokens"),
        "total_tokens": n("totalTokens"),
    })
}

/// The `chat.completion` object for a Converse answer.
pub fn completion(id: &str, created: u64, model: &str, converse: &Value) -> Value {
    let text: String = converse
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let stop = converse
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": null,
            "finish_reason": finish_reason(stop),
        }],
        "usage": usage(converse.get("usage").unwrap_or(&Value::Null)),
    })
}

/// The chunks a stream event becomes (a Converse event type and its JSON
/// payload); `include_usage` adds the final usage chunk.
pub fn chunks(
    id: &str,
    created: u64,
    model: &str,
    event_type: &str,
    payload: &Value,
    include_usage: bool,
) -> Vec<Value> {
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    match event_type {
        "messageStart" => vec![chunk(json!({ "role": "assistant", "content": "" }), None)],
        "contentBlockDelta" => payload
            .pointer("/delta/text")
            .and_then(Value::as_str)
            .map(|text| vec![chunk(json!({ "content": text }), None)])
            .unwrap_or_default(),
        "messageStop" => {
            let stop = payload
                .get("stopReason")
                .and_then(Value::as_str)
                .unwrap_or("end_turn");
            vec![chunk(json!({}), Some(finish_reason(stop)))]
        }
        "metadata" if include_usage => vec![json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage(payload.get("usage").unwrap_or(&Value::Null)),
        })],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn messages_and_settings_map_to_converse() {
        let r = request(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}
            ],
            "max_tokens": 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END"
        }));
        assert_eq!(
            r.to_converse().unwrap(),
            json!({
                "system": [{"text": "Be brief."}],
                "messages": [
                    {"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]},
                    {"role": "assistant", "content": [{"text": "Hello"}]},
                    {"role": "user", "content": [{"text": "Bye"}]}
                ],
                "inferenceConfig": {"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
            })
        );
    }

    #[test]
    fn what_cannot_be_mapped_is_refused_with_the_param() {
        let r = request(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}));
        assert_eq!(r.to_converse().unwrap_err().param, "messages[0].role");
        let r = request(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        );
        assert_eq!(r.to_converse().unwrap_err().param, "messages[0].content[0]");
        let r =
            request(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(r.to_converse().unwrap_err().param, "n");
        let r = request(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        assert_eq!(r.to_converse().unwrap_err().param, "messages");
    }

    #[test]
    fn an_answer_maps_to_a_completion() {
        let converse = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " you"}]}},
            "stopReason": "max_tokens",
            "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}
        });
        let c = completion("chatcmpl-1", 7, "claude", &converse);
        assert_eq!(c["choices"][0]["message"]["content"], "Hello you");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        );
        assert_eq!(c["object"], "chat.completion");
    }

    #[test]
    fn stream_events_map_to_chunks() {
        let delta = chunks(
            "i",
            1,
            "m",
            "contentBlockDelta",
            &json!({"delta": {"text": "Hi"}}),
            false,
        );
        assert_eq!(delta[0]["choices"][0]["delta"]["content"], "Hi");
        let stop = chunks(
            "i",
            1,
            "m",
            "messageStop",
            &json!({"stopReason": "end_turn"}),
            false,
        );
        assert_eq!(stop[0]["choices"][0]["finish_reason"], "stop");
        let meta = json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}});
        assert!(chunks("i", 1, "m", "metadata", &meta, false).is_empty());
        assert_eq!(
            chunks("i", 1, "m", "metadata", &meta, true)[0]["usage"]["total_tokens"],
            3
        );
        assert!(chunks("i", 1, "m", "contentBlockStop", &json!({}), true).is_empty());
    }
}
