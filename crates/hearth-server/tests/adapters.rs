//! LoRA adapters over HTTP: `PACKAGE:ADAPTER` model ids on the OpenAI and Anthropic surfaces,
//! adapters listed in `/v1/models` with their base, and an unknown adapter refused with a JSON
//! error that names the ones there are.

mod common;

use axum::http::StatusCode;
use candle_core::Device;
use common::*;
use hearth_engine::{Engine, EngineConfig};
use hearth_gateway::LocalModel;
use hearth_package::synth::{write_llama_package, write_lora_adapter, LoraSpec, SynthSpec};
use hearth_package::Package;
use serde_json::json;

/// tiny-llama with adapters `support` and `legal`, served as `tiny-llama`.
fn adapter_app() -> (axum::Router, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-llama");
    let spec = SynthSpec::tiny_llama();
    write_llama_package(&spec, &dir, &mut |_, _| {}).unwrap();
    for (seed, name) in [(1, "support"), (2, "legal")] {
        write_lora_adapter(&spec, &LoraSpec::all_projections(seed), &dir.join(name)).unwrap();
    }
    let yaml = "adapters:\n  - {name: support, path: support}\n  - {name: legal, path: legal}\n";
    std::fs::write(dir.join("hearth.yaml"), yaml).unwrap();
    let package = Package::load(&dir).unwrap();
    let engine =
        Engine::start(&package, EngineConfig::default(), &Device::Cpu, &|_, _| {}).unwrap();
    let model = LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() };
    (app_with(catalog_with(model), test_config()).1, tmp)
}

fn chat(model: &str) -> serde_json::Value {
    json!({"model": model, "max_tokens": 8, "temperature": 0,
           "messages": [{"role": "user", "content": "hello there"}]})
}

#[tokio::test]
async fn adapters_are_listed_with_their_base() {
    let (app, _tmp) = adapter_app();
    let list = get(&app, "/v1/models").await.json();
    let ids: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny-llama", "tiny-llama:legal", "tiny-llama:support"]);
    let support = get(&app, "/v1/models/tiny-llama:support").await.json();
    assert_eq!(
        (support["parent"].as_str(), support["kind"].as_str()),
        (Some("tiny-llama"), Some("local"))
    );
    assert!(get(&app, "/v1/models/tiny-llama").await.json()["parent"].is_null());
}

#[tokio::test]
async fn a_request_names_its_adapter_in_the_model_id() {
    let (app, _tmp) = adapter_app();
    let text = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        (
            body["model"].as_str().unwrap().to_string(),
            body["choices"][0]["message"]["content"].as_str().unwrap().to_string(),
        )
    };
    let (_, base) = text(post(&app, "/v1/chat/completions", chat("tiny-llama")).await);
    let (model, support) =
        text(post(&app, "/v1/chat/completions", chat("tiny-llama:support")).await);
    assert_eq!(model, "tiny-llama:support");
    assert_ne!(support, base, "the adapter changes the answer");
    let (_, again) = text(post(&app, "/v1/chat/completions", chat("tiny-llama:support")).await);
    assert_eq!(again, support, "greedy decoding under one adapter is repeatable");
    // Read once, on first use; the other adapter is not read yet.
    let metrics = get(&app, "/metrics").await.text();
    for line in [
        "hearth_lora_adapter_loads_total{model=\"tiny-llama\"} 1",
        "hearth_lora_adapters_loaded{model=\"tiny-llama\"} 1",
        "hearth_lora_adapter_evictions_total{model=\"tiny-llama\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let anthropic = json!({"model": "tiny-llama:legal", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hello there"}]});
    let reply = post(&app, "/v1/messages", anthropic).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn an_unknown_adapter_is_a_404_naming_the_adapters() {
    let (app, _tmp) = adapter_app();
    let reply = post(&app, "/v1/chat/completions", chat("tiny-llama:nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("`nope`") && message.contains("legal, support"), "{message}");
}

/// Raw completions, the Responses API and Cog's per-model routes take `PACKAGE:ADAPTER` too:
/// the adapter changes raw completions' and Cog's greedy output, the Responses API answers under
/// the adapter's id, and an unknown adapter is a 404 naming the known ones.
#[tokio::test]
async fn every_surface_takes_the_adapter_in_the_model_id() {
    let (app, _tmp) = adapter_app();
    let completion = |model: &str| json!({"model": model, "prompt": "hello there", "max_tokens": 8, "temperature": 0});
    let text = |reply: Reply, pointer: &str| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json().pointer(pointer).and_then(|v| v.as_str()).unwrap().to_string()
    };
    let base =
        text(post(&app, "/v1/completions", completion("tiny-llama")).await, "/choices/0/text");
    let support = text(
        post(&app, "/v1/completions", completion("tiny-llama:support")).await,
        "/choices/0/text",
    );
    assert_ne!(support, base, "the adapter changes the raw completion");

    let responses = json!({"model": "tiny-llama:support", "input": "hello there",
                           "max_output_tokens": 8, "temperature": 0});
    let reply = post(&app, "/v1/responses", responses).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["model"], "tiny-llama:support");

    let cog = json!({"input": {"prompt": "hello there", "max_tokens": 8, "temperature": 0}});
    let cog_text = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let output = reply.json()["output"].as_array().unwrap().clone();
        output.iter().map(|t| t.as_str().unwrap().to_string()).collect::<String>()
    };
    let cog_base = cog_text(post(&app, "/cog/tiny-llama/predictions", cog.clone()).await);
    let cog_support =
        cog_text(post(&app, "/cog/tiny-llama:support/predictions", cog.clone()).await);
    assert_ne!(cog_support, cog_base, "the adapter changes the prediction");

    // An adapter the model does not have: a 404 naming those it has, on each surface.
    let reply = post(&app, "/v1/completions", completion("tiny-llama:nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert!(reply.text().contains("legal, support"), "{}", reply.text());
    let reply = post(&app, "/cog/tiny-llama:nope/predictions", cog).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert!(reply.text().contains("legal, support"), "{}", reply.text());
}
