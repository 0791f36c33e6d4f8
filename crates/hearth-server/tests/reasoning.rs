//! A reasoning model's thinking, split from its answer, on the OpenAI and Anthropic surfaces.
//! The package is Qwen3-architecture with random weights and a template that opens the
//! thinking in the generation prompt (as Qwen3's thinking models and DeepSeek-R1 do), unless
//! `enable_thinking` is false. Random weights never write `</think>`, so everything such a
//! model says is reasoning; the parser's handling of `</think>` is tested on its own.

mod common;

use axum::http::StatusCode;
use candle_core::Device;
use common::*;
use hearth_engine::{Engine, EngineConfig};
use hearth_gateway::LocalModel;
use hearth_package::synth::{write_llama_package, SynthFamily, SynthSpec};
use hearth_package::Package;
use serde_json::{json, Value};

const TEMPLATE: &str = "{%- for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}\
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}\
{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}\
{%- else %}{{ '<think>\\n' }}{%- endif %}{%- endif %}";

/// A Qwen3 package with a thinking template, served as `tiny-llama` (the tests' model name).
fn thinking_app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // A package's name comes from its directory, and a temporary directory's is not a name.
    let package_dir = dir.path().join("thinker");
    let spec = SynthSpec { family: SynthFamily::Qwen3, ..SynthSpec::tiny_llama() };
    write_llama_package(&spec, &package_dir, &mut |_, _| {}).unwrap();
    let config_path = package_dir.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!(TEMPLATE);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let package = Package::load(&package_dir).unwrap();
    assert_eq!(package.model.model_type, "qwen3");
    let engine =
        Engine::start(&package, EngineConfig::default(), &Device::Cpu, &|_, _| {}).unwrap();
    let model = LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() };
    (app_with(catalog_with(model), test_config()).1, dir)
}

fn chat(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{ "role": "user", "content": "What is 2 + 2?" }],
        "max_tokens": 12,
        "temperature": 1,
        "seed": 4,
        "stream": stream,
    })
}

#[tokio::test]
async fn openai_reasoning_content_whole_and_streamed() {
    let (app, _dir) = thinking_app();
    let reply = post(&app, "/v1/chat/completions", chat(false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let answer = reply.json();
    let message = &answer["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(!reasoning.is_empty());
    assert!(message["content"].is_null(), "nothing past the thinking: {answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 12, "thinking tokens are counted: {answer}");

    let reply = post(&app, "/v1/chat/completions", chat(true)).await;
    let (mut streamed, mut content) = (String::new(), String::new());
    for (_, data) in sse_events(&reply.text()) {
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else { continue };
        let delta = &chunk["choices"][0]["delta"];
        streamed.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
        content.push_str(delta["content"].as_str().unwrap_or_default());
    }
    assert_eq!((streamed.as_str(), content.as_str()), (reasoning, ""), "same seed, same split");
}

#[tokio::test]
async fn enable_thinking_false_reaches_the_template() {
    let (app, _dir) = thinking_app();
    let mut body = chat(false);
    body["chat_template_kwargs"] = json!({ "enable_thinking": false });
    let answer = post(&app, "/v1/chat/completions", body).await.json();
    let message = &answer["choices"][0]["message"];
    assert!(message.get("reasoning_content").is_none(), "{answer}");
    assert!(!message["content"].as_str().unwrap_or_default().is_empty(), "{answer}");
}

/// Anthropic's `thinking` switch reaches the template as `enable_thinking`.
#[tokio::test]
async fn anthropic_thinking_disabled_reaches_the_template() {
    let (app, _dir) = thinking_app();
    let headers = [("anthropic-version", "2023-06-01")];
    let body = |thinking: Value| {
        json!({
            "model": MODEL, "max_tokens": 12, "thinking": thinking,
            "messages": [{ "role": "user", "content": "What is 2 + 2?" }],
        })
    };
    let off = post_with(&app, "/v1/messages", &headers, body(json!({"type": "disabled"}))).await;
    let off = off.json();
    assert_eq!(off["content"][0]["type"], "text", "{off}");
    let on = json!({"type": "enabled", "budget_tokens": 1024});
    let on = post_with(&app, "/v1/messages", &headers, body(on)).await.json();
    assert_eq!(on["content"][0]["type"], "thinking", "{on}");
}

#[tokio::test]
async fn anthropic_thinking_blocks_whole_and_streamed() {
    let (app, _dir) = thinking_app();
    let headers = [("anthropic-version", "2023-06-01")];
    let body = json!({
        "model": MODEL, "max_tokens": 12,
        "messages": [{ "role": "user", "content": "What is 2 + 2?" }],
    });
    let answer = post_with(&app, "/v1/messages", &headers, body.clone()).await.json();
    assert_eq!(answer["content"][0]["type"], "thinking", "{answer}");
    assert!(!answer["content"][0]["thinking"].as_str().unwrap().is_empty(), "{answer}");
    assert_eq!(answer["content"][0]["signature"], "", "{answer}");

    let mut body = body;
    body["stream"] = json!(true);
    let reply = post_with(&app, "/v1/messages", &headers, body).await;
    let events: Vec<Value> =
        sse_events(&reply.text()).iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    let start = events.iter().find(|e| e["type"] == "content_block_start").unwrap();
    assert_eq!(start["content_block"]["type"], "thinking", "{start}");
    let thinking: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "thinking_delta")
        .map(|e| e["delta"]["thinking"].as_str().unwrap().to_owned())
        .collect();
    assert!(!thinking.is_empty());
}

#[tokio::test]
async fn responses_reasoning_items_whole_and_streamed() {
    let (app, _dir) = thinking_app();
    let body = json!({"model": MODEL, "input": "What is 2 + 2?", "max_output_tokens": 12, "temperature": 0});
    let answer = post(&app, "/v1/responses", body.clone()).await.json();
    let item = &answer["output"][0];
    assert_eq!(item["type"], "reasoning", "{answer}");
    let reasoning = item["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(!reasoning.is_empty());
    assert_eq!(item["content"][0]["type"], "reasoning_text");
    assert_eq!(answer["output"].as_array().unwrap().len(), 1, "nothing past the thinking");
    assert_eq!(answer["usage"]["output_tokens"], 12, "thinking tokens are counted");

    let mut body = body;
    body["stream"] = json!(true);
    let reply = post(&app, "/v1/responses", body).await;
    let events: Vec<Value> =
        sse_events(&reply.text()).iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "response.reasoning_text.delta")
        .map(|e| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streamed, reasoning, "greedy: the same split");
}
