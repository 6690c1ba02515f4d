//! Unit tests of the parent module.

use super::*;

fn converse(body: Value) -> Result<Translated, Unsupported> {
    serde_json::from_value::<ChatRequest>(body)
        .unwrap()
        .to_converse()
}

#[test]
fn messages_and_settings_map_to_converse() {
    let t = converse(json!({
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
    }))
    .unwrap();
    assert_eq!(
        t.body,
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
    assert!(!t.json_mode);
}

#[test]
fn a_tool_conversation_maps_to_tool_use_and_results() {
    let t = converse(json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": "required"
    }))
    .unwrap();
    assert_eq!(
        t.body["messages"][1]["content"][0],
        json!({"toolUse": {"toolUseId": "c1", "name": "get_weather", "input": {"city": "Oslo"}}})
    );
    assert_eq!(
        t.body["messages"][1]["content"][1]["toolUse"]["input"],
        json!({})
    );
    assert_eq!(
        t.body["messages"][2]["content"],
        json!([
            {"toolResult": {"toolUseId": "c1", "content": [{"text": "sunny"}]}},
            {"toolResult": {"toolUseId": "c2", "content": [{"text": "noon"}]}}
        ])
    );
    assert_eq!(t.body["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        t.body["toolConfig"]["tools"][0]["toolSpec"]["description"],
        "Weather"
    );
    assert_eq!(
        t.body["toolConfig"]["tools"][1]["toolSpec"]["inputSchema"]["json"],
        json!({"type": "object", "properties": {}})
    );
}

#[test]
fn tool_choices_map_or_are_refused() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let choice = |c: Value| {
        converse(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": c}),
        )
    };
    assert_eq!(
        choice(json!("auto")).unwrap().body["toolConfig"]["toolChoice"],
        json!({"auto": {}})
    );
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "f"}}))
            .unwrap()
            .body["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "f"}})
    );
    assert!(choice(json!("none"))
        .unwrap()
        .body
        .get("toolConfig")
        .is_none());
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "g"}}))
            .unwrap_err()
            .param,
        "tool_choice"
    );
    let history = json!([
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}
    ]);
    let refused = converse(json!({"model": "m", "messages": history})).unwrap_err();
    assert_eq!(refused.param, "tools");
    let bad = converse(json!({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
    ], "tools": tools}))
    .unwrap_err();
    assert_eq!(bad.param, "messages[0].tool_calls[0].function.arguments");
}

#[test]
fn images_need_data_urls_of_known_types() {
    let image = |url: &str| {
        converse(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}
            ]}]}),
        )
    };
    let t = image("data:image/png;base64,iVBORw0KGgo=").unwrap();
    assert_eq!(
        t.body["messages"][0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    assert_eq!((t.images, t.image_bytes), (1, 12));
    let web = image("https://example.com/cat.png").unwrap_err();
    assert_eq!(web.param, "messages[0].content[1].image_url.url");
    assert!(web.message.contains("only data URLs"));
    assert!(image("data:image/tiff;base64,AAAA")
        .unwrap_err()
        .message
        .contains("tiff"));
    assert!(image("data:image/png;base64,@@@").is_err());
}

#[test]
fn json_mode_forces_the_json_tool_unless_other_tools_are_offered() {
    let alone = converse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}))
    .unwrap();
    assert!(alone.json_mode);
    let config = &alone.body["toolConfig"];
    assert_eq!(config["toolChoice"], json!({"tool": {"name": JSON_TOOL}}));
    assert_eq!(
        config["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["a"]["type"],
        "integer"
    );
    let beside = converse(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"}}),
    )
    .unwrap();
    assert_eq!(beside.body["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        beside.body["toolConfig"]["tools"].as_array().unwrap().len(),
        2
    );
    let text = converse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}})).unwrap();
    assert!(!text.json_mode && text.body.get("toolConfig").is_none());
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget() {
    let t = converse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium", "max_tokens": 4000})).unwrap();
    assert_eq!(
        t.body["additionalModelRequestFields"],
        json!({"thinking": {"type": "enabled", "budget_tokens": 2048}})
    );
    let low_max = converse(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high", "max_tokens": 100}),
    );
    assert_eq!(low_max.unwrap_err().param, "max_tokens");
    let direct = converse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 5000}})).unwrap();
    assert_eq!(
        direct.body["additionalModelRequestFields"]["thinking"]["budget_tokens"],
        5000
    );
}

#[test]
fn what_cannot_be_mapped_is_refused_with_the_param() {
    let refused = |body: Value| converse(body).unwrap_err().param;
    assert_eq!(
        refused(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]})),
        "messages[0].role"
    );
    assert_eq!(
        refused(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})
        ),
        "messages[0].content[0]"
    );
    assert_eq!(
        refused(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]})),
        "n"
    );
    assert_eq!(
        refused(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]})),
        "messages"
    );
    assert_eq!(
        refused(
            json!({"model": "m", "logprobs": true, "messages": [{"role": "user", "content": "x"}]})
        ),
        "logprobs"
    );
    assert_eq!(
        refused(
            json!({"model": "m", "messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]})
        ),
        "messages[0].audio"
    );
}
