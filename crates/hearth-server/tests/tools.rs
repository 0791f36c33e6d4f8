//! Tool calls on a local model, on the OpenAI and Anthropic surfaces. The tiny model's random
//! weights write nothing sensible, so every call it makes comes from the grammar; its template
//! prints no tools, so it reads Hearth's own tool prompt (Hermes format).

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

fn weather_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": { "type": "string", "maxLength": 12 },
            "unit": { "enum": ["celsius", "fahrenheit"] },
        },
        "required": ["city", "unit"],
        "additionalProperties": false,
    })
}

fn openai_tools() -> Value {
    json!([
        { "type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": weather_parameters() } },
        { "type": "function", "function": {
            "name": "get_time", "parameters": { "type": "object", "properties": {
                "zone": { "enum": ["utc", "local"] } }, "required": ["zone"],
                "additionalProperties": false } } },
    ])
}

fn chat(tool_choice: Value, seed: u64) -> Value {
    json!({
        "model": MODEL,
        "messages": [{ "role": "user", "content": "What is the weather in Paris?" }],
        "tools": openai_tools(),
        "tool_choice": tool_choice,
        "parallel_tool_calls": false,
        "max_tokens": 120,
        "temperature": 1,
        "seed": seed,
    })
}

/// The schema each tool's arguments must satisfy.
fn assert_valid_call(name: &str, arguments: &str) {
    let parameters = openai_tools()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("no tool named {name:?}"))["function"]["parameters"]
        .clone();
    let value: Value =
        serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments:?}"));
    let validator = jsonschema::validator_for(&parameters).unwrap();
    assert!(validator.is_valid(&value), "{name}({value}) breaks its schema");
}

/// (id, name, arguments) of each call, from a whole answer.
fn whole_calls(message: &Value) -> Vec<(String, String, String)> {
    message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    assert_eq!(c["type"], "function");
                    let f = &c["function"];
                    (
                        c["id"].as_str().unwrap().into(),
                        f["name"].as_str().unwrap().into(),
                        f["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Calls and text reassembled from an OpenAI stream, checking OpenAI's delta shape: the id,
/// type and name once, in the call's first delta, then argument fragments.
fn streamed(text: &str) -> (Vec<(String, String, String)>, String, String) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let (mut content, mut finish) = (String::new(), String::new());
    for (_, data) in sse_events(text) {
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else { continue };
        let choice = &chunk["choices"][0];
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.into();
        }
        content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        for delta in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = delta["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                assert_eq!(delta["type"], "function", "{delta}");
                let name = delta["function"]["name"].as_str().expect("name in the first delta");
                calls.push((delta["id"].as_str().unwrap().into(), name.into(), String::new()));
            } else {
                assert!(
                    delta.get("id").is_none() && delta["function"].get("name").is_none(),
                    "{delta}"
                );
            }
            calls[index].2.push_str(delta["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    (calls, content, finish)
}

#[tokio::test]
async fn a_required_or_named_call_is_well_formed_whole_and_streamed() {
    let app = app();
    let choices = [
        json!("required"),
        json!({ "type": "function", "function": { "name": "get_time" } }),
        json!({ "type": "function", "function": { "name": "get_weather" } }),
    ];
    for (seed, choice) in choices.into_iter().enumerate() {
        let body = chat(choice.clone(), seed as u64);
        let reply = post(&app, "/v1/chat/completions", body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let answer = reply.json();
        let choice_out = &answer["choices"][0];
        assert_eq!(choice_out["finish_reason"], "tool_calls", "{choice}: {answer}");
        assert!(choice_out["message"]["content"].is_null(), "{answer}");
        let whole = whole_calls(&choice_out["message"]);
        assert_eq!(whole.len(), 1, "parallel_tool_calls is false: {answer}");
        for (id, name, arguments) in &whole {
            assert!(id.starts_with("call_"), "{id}");
            assert_valid_call(name, arguments);
        }
        if let Some(named) = choice["function"]["name"].as_str() {
            assert_eq!(whole[0].1, named);
        }

        let mut stream_body = body;
        stream_body["stream"] = json!(true);
        let reply = post(&app, "/v1/chat/completions", stream_body).await;
        let (calls, content, finish) = streamed(&reply.text());
        assert_eq!((content.as_str(), finish.as_str()), ("", "tool_calls"));
        // Same seed, same answer; ids are fresh per response.
        let strip = |c: &[(String, String, String)]| -> Vec<(String, String)> {
            c.iter().map(|(_, n, a)| (n.clone(), a.clone())).collect()
        };
        assert_eq!(strip(&calls), strip(&whole), "{choice}");
    }
}

#[tokio::test]
async fn parallel_calls_each_follow_their_schema() {
    let app = app();
    let mut body = chat(json!("required"), 11);
    body["parallel_tool_calls"] = json!(true);
    body["max_tokens"] = json!(300);
    let reply = post(&app, "/v1/chat/completions", body).await;
    let answer = reply.json();
    let calls = whole_calls(&answer["choices"][0]["message"]);
    assert!(!calls.is_empty(), "{answer}");
    let finished = answer["choices"][0]["finish_reason"] == "tool_calls";
    // A call cut off by max_tokens is the only one allowed to be incomplete.
    let complete = if finished { calls.len() } else { calls.len() - 1 };
    for (_, name, arguments) in &calls[..complete] {
        assert_valid_call(name, arguments);
    }
}

#[tokio::test]
async fn auto_and_none_answer_in_text_or_with_valid_calls() {
    let app = app();
    for seed in 0..4 {
        let reply = post(&app, "/v1/chat/completions", chat(json!("auto"), seed)).await;
        let answer = reply.json();
        let choice = &answer["choices"][0];
        let calls = whole_calls(&choice["message"]);
        if choice["finish_reason"] == "tool_calls" {
            assert!(!calls.is_empty(), "{answer}");
            calls.iter().for_each(|(_, name, arguments)| assert_valid_call(name, arguments));
        } else {
            assert!(calls.is_empty() || choice["finish_reason"] == "length", "{answer}");
        }
    }
    let reply = post(&app, "/v1/chat/completions", chat(json!("none"), 1)).await;
    let answer = reply.json();
    assert!(answer["choices"][0]["message"].get("tool_calls").is_none(), "{answer}");
    assert_ne!(answer["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn tool_results_are_fed_back_for_the_next_turn() {
    let app = app();
    let mut body = chat(json!("auto"), 3);
    body["messages"] = json!([
        { "role": "user", "content": "What is the weather in Paris?" },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function",
          "function": { "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}" } }] },
        { "role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny" },
    ]);
    body["tool_choice"] = json!("none");
    body["max_tokens"] = json!(5);
    let reply = post(&app, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let answer = reply.json();
    assert!(
        answer["usage"]["prompt_tokens"].as_u64().unwrap() > 100,
        "the tool prompt and history: {answer}"
    );
}

#[tokio::test]
async fn a_tool_schema_that_cannot_compile_is_400_naming_tools() {
    let app = app();
    let mut body = chat(json!("required"), 0);
    body["tools"][0]["function"]["parameters"] = json!({ "type": "no-such-type" });
    let reply = post(&app, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["param"], "tools", "{error}");
    assert!(error["message"].as_str().unwrap().contains("no-such-type"), "{error}");
}

/// Anthropic's API has no seed: whole and streamed answers are checked each on its own.
fn anthropic(tool_choice: Value) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 120,
        "temperature": 1,
        "messages": [{ "role": "user", "content": "What is the weather in Paris?" }],
        "tools": [{ "name": "get_weather", "description": "Weather in a city",
                    "input_schema": weather_parameters() }],
        "tool_choice": tool_choice,
    })
}

#[tokio::test]
async fn anthropic_tool_use_whole_and_streamed() {
    let app = app();
    let headers = [("anthropic-version", "2023-06-01")];
    for choice in [
        json!({ "type": "any", "disable_parallel_tool_use": true }),
        json!({ "type": "tool", "name": "get_weather", "disable_parallel_tool_use": true }),
    ] {
        let reply = post_with(&app, "/v1/messages", &headers, anthropic(choice.clone())).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["stop_reason"], "tool_use", "{answer}");
        let uses: Vec<&Value> = answer["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .collect();
        assert_eq!(uses.len(), 1, "{answer}");
        assert_eq!(uses[0]["name"], "get_weather");
        assert_valid_call("get_weather", &uses[0]["input"].to_string());

        let mut body = anthropic(choice);
        body["stream"] = json!(true);
        let reply = post_with(&app, "/v1/messages", &headers, body).await;
        let mut json_text = String::new();
        let mut stop = String::new();
        for (_, data) in sse_events(&reply.text()) {
            let event: Value = serde_json::from_str(&data).unwrap();
            match event["type"].as_str().unwrap_or_default() {
                "content_block_start" if event["content_block"]["type"] == "tool_use" => {
                    assert_eq!(event["content_block"]["name"], "get_weather");
                }
                "content_block_delta" if event["delta"]["type"] == "input_json_delta" => {
                    json_text.push_str(event["delta"]["partial_json"].as_str().unwrap());
                }
                "message_delta" => {
                    stop = event["delta"]["stop_reason"].as_str().unwrap_or_default().into()
                }
                _ => {}
            }
        }
        assert_eq!(stop, "tool_use");
        assert_valid_call("get_weather", &json_text);
    }
}
