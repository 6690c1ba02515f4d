//! A chat completion request as the Converse body it means: messages (text,
//! images, tool calls and results), tools and the choice among them, JSON
//! mode, reasoning, and the inference settings. Pure functions of JSON.

use serde_json::{json, Map, Value};

use super::request::{
    check_unmapped, unsupported, ChatMessage, ChatRequest, Content, Part, Stop, Tool, Unsupported,
};

/// The tool JSON mode forces the model to call: its input is the answer.
/// The answer's translation turns it back into `content`.
pub const JSON_TOOL: &str = "json_response";

/// Image formats Converse takes, by their media type.
const IMAGE_FORMATS: &[(&str, &str)] = &[
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("image/jpg", "jpeg"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
];

/// A translated request, with what its answer's translation needs to know.
#[derive(Debug)]
pub struct Translated {
    pub body: Value,
    /// `response_format` asked for JSON: the [`JSON_TOOL`] call is the answer.
    pub json_mode: bool,
    /// Bytes of base64 image data in `body` (an image costs at most 1 600
    /// tokens, far less than its bytes suggest).
    pub image_bytes: usize,
    pub images: usize,
}

impl ChatRequest {
    /// The output budget the client set, if any.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// `response_format` asks for JSON.
    fn json_schema(&self) -> Result<Option<Value>, Unsupported> {
        let Some(format) = &self.response_format else {
            return Ok(None);
        };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(json!({ "type": "object" }))),
            Some("json_schema") => format
                .pointer("/json_schema/schema")
                .cloned()
                .map(Some)
                .ok_or_else(|| unsupported("response_format.json_schema.schema", "is required")),
            _ => Err(unsupported(
                "response_format.type",
                "must be text, json_object or json_schema",
            )),
        }
    }

    /// The Converse request body for this chat request.
    pub fn to_converse(&self) -> Result<Translated, Unsupported> {
        check_unmapped(&self.other, "")?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(unsupported("n", "only n = 1 is supported"));
        }
        let mut images = Images::default();
        let (system, turns) = conversation(&self.messages, &mut images)?;
        let mut body = Map::new();
        let has_tool_blocks = turns.iter().any(|t| {
            t["content"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|b| b.get("toolUse").or(b.get("toolResult")).is_some())
            })
        });
        body.insert("messages".into(), Value::Array(turns));
        if !system.is_empty() {
            body.insert("system".into(), Value::Array(system));
        }
        if let Some(inference) = self.inference_config() {
            body.insert("inferenceConfig".into(), inference);
        }
        let json_schema = self.json_schema()?;
        if let Some(config) = self.tool_config(json_schema.as_ref(), has_tool_blocks)? {
            body.insert("toolConfig".into(), config);
        }
        if let Some(thinking) = self.thinking_config()? {
            body.insert(
                "additionalModelRequestFields".into(),
                json!({ "thinking": thinking }),
            );
        }
        Ok(Translated {
            body: Value::Object(body),
            json_mode: json_schema.is_some(),
            image_bytes: images.bytes,
            images: images.count,
        })
    }

    fn inference_config(&self) -> Option<Value> {
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
            Some(Stop::One(s)) => {
                inference.insert("stopSequences".into(), json!([s]));
            }
            Some(Stop::Many(v)) if !v.is_empty() => {
                inference.insert("stopSequences".into(), json!(v));
            }
            _ => {}
        }
        (!inference.is_empty()).then_some(Value::Object(inference))
    }

    /// `toolConfig`: the client's tools, plus [`JSON_TOOL`] in JSON mode.
    fn tool_config(
        &self,
        json_schema: Option<&Value>,
        has_tool_blocks: bool,
    ) -> Result<Option<Value>, Unsupported> {
        let tools = self.tools.as_deref().unwrap_or_default();
        let mut specs = tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool_spec(t, i))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<&str> = tools
            .iter()
            .filter_map(|t| t.function.as_ref().map(|f| f.name.as_str()))
            .collect();
        let mut choice = match &self.tool_choice {
            None => None,
            Some(_) if specs.is_empty() => {
                return Err(unsupported("tool_choice", "needs `tools`"));
            }
            Some(Value::String(c)) if c == "auto" => Some(json!({ "auto": {} })),
            Some(Value::String(c)) if c == "required" => Some(json!({ "any": {} })),
            Some(Value::String(c)) if c == "none" => {
                if has_tool_blocks {
                    return Err(unsupported(
                        "tool_choice",
                        "`none` cannot be honoured once the conversation holds tool calls: Bedrock then needs the tools, and has no way to forbid them; send `auto`, or leave the tools out",
                    ));
                }
                specs.clear();
                None
            }
            Some(named) => {
                let name = named
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
                    .ok_or_else(|| {
                        unsupported(
                            "tool_choice",
                            "must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        )
                    })?;
                if !names.contains(&name) {
                    return Err(unsupported(
                        "tool_choice",
                        format!("names `{name}`, which is not in `tools`"),
                    ));
                }
                Some(json!({ "tool": { "name": name } }))
            }
        };
        if let Some(schema) = json_schema {
            specs.push(json!({"toolSpec": {
                "name": JSON_TOOL,
                "description": "Give your final answer as this tool's input: a JSON value that fits its schema.",
                "inputSchema": { "json": schema },
            }}));
            // Alone, the JSON tool is forced; beside the client's tools, the
            // model must call one of them or give its answer through it.
            if specs.len() == 1 {
                choice = Some(json!({ "tool": { "name": JSON_TOOL } }));
            } else if choice.as_ref().is_none_or(|c| c.get("tool").is_none()) {
                choice = Some(json!({ "any": {} }));
            }
        }
        if specs.is_empty() {
            if has_tool_blocks {
                return Err(unsupported(
                    "tools",
                    "the conversation holds tool calls or results: Bedrock needs the tools' definitions with it",
                ));
            }
            return Ok(None);
        }
        let mut config = json!({ "tools": specs });
        if let Some(choice) = choice {
            config["toolChoice"] = choice;
        }
        Ok(Some(config))
    }

    /// Extended thinking, as Anthropic's models on Bedrock take it.
    fn thinking_config(&self) -> Result<Option<Value>, Unsupported> {
        let budget = match (&self.reasoning_effort, &self.thinking) {
            (Some(_), Some(_)) => {
                return Err(unsupported(
                    "thinking",
                    "send `reasoning_effort` or `thinking`, not both",
                ))
            }
            (None, Some(thinking)) => return Ok(Some(thinking.clone())),
            (None, None) => return Ok(None),
            (Some(effort), None) => match effort.as_str() {
                "none" | "minimal" => return Ok(None),
                "low" => 1_024,
                "medium" => 2_048,
                "high" => 4_096,
                _ => {
                    return Err(unsupported(
                        "reasoning_effort",
                        "must be none, minimal, low, medium or high",
                    ))
                }
            },
        };
        if self.max_output_tokens().is_some_and(|max| max <= budget) {
            return Err(unsupported(
                "max_tokens",
                format!("must exceed the thinking budget of `reasoning_effort` ({budget} tokens)"),
            ));
        }
        Ok(Some(json!({ "type": "enabled", "budget_tokens": budget })))
    }
}

fn tool_spec(tool: &Tool, i: usize) -> Result<Value, Unsupported> {
    let function = match (tool.kind.as_str(), &tool.function) {
        ("function", Some(f)) => f,
        ("function", None) => {
            return Err(unsupported(format!("tools[{i}].function"), "is required"))
        }
        (kind, _) => {
            return Err(unsupported(
                format!("tools[{i}].type"),
                format!("tool type `{kind}` is not supported (function is)"),
            ))
        }
    };
    if function.name == JSON_TOOL {
        return Err(unsupported(
            format!("tools[{i}].function.name"),
            format!("`{JSON_TOOL}` is reserved for JSON mode"),
        ));
    }
    let schema = function
        .parameters
        .clone()
        .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
    let mut spec = json!({ "name": function.name, "inputSchema": { "json": schema } });
    if let Some(d) = function.description.as_deref().filter(|d| !d.is_empty()) {
        spec["description"] = json!(d);
    }
    Ok(json!({ "toolSpec": spec }))
}

/// Images seen while translating.
#[derive(Debug, Default)]
struct Images {
    count: usize,
    bytes: usize,
}

/// The system blocks and the turns. Converse wants turns to alternate:
/// consecutive messages of one role (a `tool` message is the user's turn)
/// become one turn of several blocks.
fn conversation(
    messages: &[ChatMessage],
    images: &mut Images,
) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        check_unmapped(&m.other, &format!("messages[{i}]."))?;
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.extend(system_blocks(m, i)?);
                continue;
            }
            "user" => ("user", content_blocks(m.content.as_ref(), i, images)?),
            "assistant" => ("assistant", assistant_blocks(m, i, images)?),
            "tool" => ("user", vec![tool_result(m, i)?]),
            other => {
                return Err(unsupported(
                    format!("messages[{i}].role"),
                    format!("role `{other}` is not supported (system, developer, user, assistant and tool are)"),
                ))
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(unsupported(
            "messages",
            "needs at least one user or assistant message",
        ));
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    Ok((system, turns))
}

/// A system message's text blocks (text parts only), each part marked
/// `cache_control` followed by a cache point.
fn system_blocks(m: &ChatMessage, i: usize) -> Result<Vec<Value>, Unsupported> {
    match &m.content {
        None => Err(unsupported(format!("messages[{i}].content"), "is missing")),
        Some(Content::Text(t)) => Ok(vec![json!({ "text": t })]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => blocks.push(json!({ "text": t })),
                    (kind, _) => {
                        return Err(unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!("content part `{kind}` is not supported here (text is)"),
                        ))
                    }
                }
                cache_point(p, i, j, &mut blocks)?;
            }
            Ok(blocks)
        }
    }
}

/// After a part marked `cache_control: {"type": "ephemeral"}`, Converse's
/// cache point: the prefix up to it is cached.
fn cache_point(p: &Part, i: usize, j: usize, blocks: &mut Vec<Value>) -> Result<(), Unsupported> {
    match p.cache_control.as_ref().map(|c| c.kind.as_str()) {
        None => Ok(()),
        Some("ephemeral") => {
            blocks.push(json!({ "cachePoint": { "type": "default" } }));
            Ok(())
        }
        Some(other) => Err(unsupported(
            format!("messages[{i}].content[{j}].cache_control.type"),
            format!("`{other}` is not a cache type (ephemeral is)"),
        )),
    }
}

fn content_blocks(
    content: Option<&Content>,
    i: usize,
    images: &mut Images,
) -> Result<Vec<Value>, Unsupported> {
    match content {
        None => Err(unsupported(format!("messages[{i}].content"), "is missing")),
        Some(Content::Text(t)) => Ok(vec![json!({ "text": t })]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let block = match (p.kind.as_str(), &p.text, &p.image_url) {
                    ("text", Some(t), _) => json!({ "text": t }),
                    ("image_url", _, Some(image)) => image_block(&image.url, i, j, images)?,
                    (kind, _, _) => {
                        return Err(unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "content part `{kind}` is not supported (text and image_url are)"
                            ),
                        ))
                    }
                };
                blocks.push(block);
                cache_point(p, i, j, &mut blocks)?;
            }
            Ok(blocks)
        }
    }
}

/// An `image_url` part as a Converse image block. Only `data:` URLs: the
/// gateway does not fetch from the network on a client's behalf.
fn image_block(url: &str, i: usize, j: usize, images: &mut Images) -> Result<Value, Unsupported> {
    let param = format!("messages[{i}].content[{j}].image_url.url");
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(unsupported(
            param,
            "is a web address; only data URLs are accepted (data:image/png;base64,...): Bedrock takes image bytes, and the gateway does not fetch URLs for clients",
        ));
    }
    let (media_type, data) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| {
            unsupported(
                &param,
                "must be a base64 data URL (data:image/png;base64,...)",
            )
        })?;
    let format = IMAGE_FORMATS
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(media_type))
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            unsupported(
                &param,
                format!("has media type `{media_type}`; png, jpeg, gif and webp are supported"),
            )
        })?;
    if aws_smithy_types::base64::decode(data).is_err() {
        return Err(unsupported(param, "is not valid base64"));
    }
    images.count += 1;
    images.bytes += data.len();
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// An assistant turn: its text, then its tool calls as `toolUse` blocks.
fn assistant_blocks(
    m: &ChatMessage,
    i: usize,
    images: &mut Images,
) -> Result<Vec<Value>, Unsupported> {
    let calls = m.tool_calls.as_deref().unwrap_or_default();
    let mut blocks = match &m.content {
        None if !calls.is_empty() => Vec::new(),
        Some(Content::Text(t)) if t.is_empty() && !calls.is_empty() => Vec::new(),
        content => content_blocks(content.as_ref(), i, images)?,
    };
    for (j, call) in calls.iter().enumerate() {
        let arguments = if call.function.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str::<Value>(&call.function.arguments).map_err(|e| {
                unsupported(
                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                    format!("is not JSON: {e}"),
                )
            })?
        };
        blocks.push(json!({"toolUse": {
            "toolUseId": call.id,
            "name": call.function.name,
            "input": arguments,
        }}));
    }
    Ok(blocks)
}

/// A message's text (text parts only, joined).
fn text_only(m: &ChatMessage, i: usize) -> Result<String, Unsupported> {
    match &m.content {
        None => Err(unsupported(format!("messages[{i}].content"), "is missing")),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| match (p.kind.as_str(), &p.text) {
                ("text", Some(t)) => Ok(t.as_str()),
                (kind, _) => Err(unsupported(
                    format!("messages[{i}].content[{j}]"),
                    format!("content part `{kind}` is not supported here (text is)"),
                )),
            })
            .collect(),
    }
}

/// A `tool` message as a `toolResult` block.
fn tool_result(m: &ChatMessage, i: usize) -> Result<Value, Unsupported> {
    let id = m
        .tool_call_id
        .as_deref()
        .ok_or_else(|| unsupported(format!("messages[{i}].tool_call_id"), "is required"))?;
    let text = text_only(m, i)?;
    Ok(json!({"toolResult": { "toolUseId": id, "content": [{ "text": text }] }}))
}

#[cfg(test)]
mod tests;
