//! How the simulator answers a request that offers tools (`toolConfig`):
//! deterministically, so a test can predict which tools are called and with
//! what arguments.
//!
//! 1. A `toolChoice` naming a tool calls exactly that tool.
//! 2. Otherwise the simulator wants the tools whose names appear in the last
//!    user text (several at once: parallel calls), or the first tool when
//!    none is named, less those the conversation has called already.
//! 3. With nothing left to call, `any` still calls the last declared tool
//!    (it must call one) and `auto` answers in text.
//!
//! Arguments are built from each tool's JSON schema (see [`sample_of`]).

use serde_json::{json, Map, Value};

/// A tool the request offers.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    /// Its `inputSchema.json`.
    pub schema: Value,
}

/// Converse's `toolChoice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    Any,
    Named(String),
}

/// What the request says about tools.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolUseContext {
    pub tools: Vec<ToolSpec>,
    pub choice: Option<ToolChoice>,
    /// Call a tool only when the prompt's last text block names it (an
    /// Anthropic body with `auto`: a model answers "hello" in words, and
    /// Claude Code offers two dozen tools with every prompt).
    pub named_only: bool,
    /// Tools the conversation's assistant turns called already.
    pub called: Vec<String>,
}

impl ToolUseContext {
    /// Reads `toolConfig`; a malformed one is a ValidationException's message.
    pub fn parse(request: &Value) -> Result<Self, String> {
        let mut context = Self::default();
        let Some(config) = request.get("toolConfig") else {
            return Ok(context);
        };
        let tools = config
            .get("tools")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or("toolConfig.tools must hold at least one tool.")?;
        for tool in tools {
            let spec = tool
                .get("toolSpec")
                .ok_or("Each tool must be a toolSpec.")?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or("toolSpec.name is required.")?;
            let schema = spec
                .pointer("/inputSchema/json")
                .cloned()
                .ok_or("toolSpec.inputSchema.json is required.")?;
            context.tools.push(ToolSpec {
                name: name.to_owned(),
                schema,
            });
        }
        context.named_only = config
            .get("namedOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        context.choice = match config.get("toolChoice") {
            None => None,
            Some(c) if c.get("auto").is_some() => Some(ToolChoice::Auto),
            Some(c) if c.get("any").is_some() => Some(ToolChoice::Any),
            Some(c) => {
                let name = c
                    .pointer("/tool/name")
                    .and_then(Value::as_str)
                    .ok_or("toolChoice must be auto, any or tool.")?;
                if !context.tools.iter().any(|t| t.name == name) {
                    return Err(format!("toolChoice names `{name}`, which is not a tool."));
                }
                Some(ToolChoice::Named(name.to_owned()))
            }
        };
        Ok(context)
    }

    /// The tools to call, in declaration order (empty: answer in text),
    /// for a prompt whose last user message says `last_user_text`, the
    /// last of its text blocks `last_block`.
    pub fn calls_for(&self, last_user_text: &str, last_block: &str) -> Vec<&ToolSpec> {
        if self.tools.is_empty() {
            return Vec::new();
        }
        if let Some(ToolChoice::Named(name)) = &self.choice {
            return self.tools.iter().filter(|t| &t.name == name).collect();
        }
        let text = if self.named_only {
            last_block
        } else {
            last_user_text
        };
        let named: Vec<&ToolSpec> = self
            .tools
            .iter()
            .filter(|t| text.contains(t.name.as_str()))
            .collect();
        let wanted = match (named.is_empty(), self.named_only) {
            (false, _) => named,
            (true, false) => vec![&self.tools[0]],
            (true, true) => return Vec::new(),
        };
        let left: Vec<&ToolSpec> = wanted
            .into_iter()
            .filter(|t| !self.called.contains(&t.name))
            .collect();
        match (&self.choice, left.is_empty()) {
            (_, false) => left,
            (Some(ToolChoice::Any), true) => self.tools.last().into_iter().collect(),
            _ => Vec::new(),
        }
    }
}

/// A value that fits `schema`: the first `enum` value; for a string,
/// "sample <property>"; 1 for an integer, 1.5 for a number, true for a
/// boolean; one sample item for an array; every property for an object.
pub fn sample_of(schema: &Value, property: &str) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(first) = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array))
        .and_then(|options| options.first())
    {
        return sample_of(first, property);
    }
    let kind = match schema.get("type") {
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).next(),
        Some(kind) => kind.as_str(),
        None if schema.get("properties").is_some() => Some("object"),
        None => None,
    };
    let sample = |p: &str| {
        if p.is_empty() {
            "sample".to_owned()
        } else {
            format!("sample {p}")
        }
    };
    match kind {
        Some("object") => {
            let mut object = Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, s) in properties {
                    object.insert(name.clone(), sample_of(s, name));
                }
            }
            Value::Object(object)
        }
        Some("array") => json!([sample_of(
            schema.get("items").unwrap_or(&json!({})),
            property
        )]),
        Some("integer") => json!(1),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("null") => Value::Null,
        _ => json!(sample(property)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(config: Value) -> ToolUseContext {
        ToolUseContext::parse(&json!({ "toolConfig": config })).unwrap()
    }

    fn tool(name: &str) -> Value {
        json!({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}})
    }

    fn names(calls: Vec<&ToolSpec>) -> Vec<&str> {
        calls.into_iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn named_tools_are_called_together_and_then_answered_in_text() {
        let mut c = context(json!({"tools": [tool("weather"), tool("time"), tool("news")]}));
        assert_eq!(names(c.calls_for("hello", "hello")), ["weather"]);
        assert_eq!(
            names(c.calls_for("use time and weather", "use time and weather")),
            ["weather", "time"]
        );
        c.called = vec!["weather".into(), "time".into()];
        assert!(c
            .calls_for("use time and weather", "use time and weather")
            .is_empty());
    }

    #[test]
    fn a_choice_forces_a_tool() {
        let mut c = context(
            json!({"tools": [tool("a"), tool("b")], "toolChoice": {"tool": {"name": "b"}}}),
        );
        c.called = vec!["b".into()];
        assert_eq!(names(c.calls_for("a", "a")), ["b"]);
        let mut c = context(json!({"tools": [tool("a"), tool("b")], "toolChoice": {"any": {}}}));
        c.called = vec!["a".into()];
        assert_eq!(names(c.calls_for("x", "x")), ["b"]);
        assert!(ToolUseContext::parse(
            &json!({"toolConfig": {"tools": [tool("a")], "toolChoice": {"tool": {"name": "z"}}}})
        )
        .is_err());
    }

    #[test]
    fn arguments_follow_the_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "exact": {"type": ["boolean", "null"]}
            }
        });
        assert_eq!(
            sample_of(&schema, ""),
            json!({"city": "sample city", "unit": "celsius", "days": 1, "tags": ["sample tags"], "exact": true})
        );
    }
}
