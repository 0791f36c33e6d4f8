//! The `hearth synth` presets of the Gemma, Phi-3 and Qwen3-MoE families load as packages and serve through the
//! batched engine: greedy output is the same for a prompt alone and beside others. (Numerics
//! against transformers are `tests/parity.rs`; this is the package-to-stream path.)

// Only `collect` is used here; the tiny-llama helpers are the other files'.
#[allow(dead_code)]
mod common;

use std::path::Path;

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig, GenerateRequest, KvCacheSize, Prompt};
use hearth_package::synth::{write_llama_package, SynthSpec};
use hearth_package::Package;
use hearth_protocol::SamplingParams;

const PROMPTS: [&str; 3] = ["the quick brown fox", "hello", "a longer prompt about the weather"];

fn start(dir: &Path) -> Engine {
    let package = Package::load(dir).expect("the synthetic package loads");
    let config = EngineConfig { kv_cache: KvCacheSize::Bytes(8 << 20), ..EngineConfig::default() };
    Engine::start(&package, config, &Device::Cpu, &|_, _| {}).expect("the engine starts")
}

fn request(prompt: &str) -> GenerateRequest {
    let sampling = SamplingParams { max_tokens: 12, ignore_eos: true, ..SamplingParams::default() };
    GenerateRequest {
        prompt: Prompt::Text(prompt.to_string()),
        sampling: sampling.validated().expect("valid sampling"),
        constraint: None,
        adapter: None,
    }
}

async fn serves_alone_and_batched(preset: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(preset);
    let spec = SynthSpec::preset(preset).expect("a preset");
    write_llama_package(&spec, &dir, &mut |_, _| {}).unwrap();
    let engine = start(&dir);
    let mut alone = Vec::new();
    for prompt in PROMPTS {
        alone.push(common::collect(engine.submit(request(prompt)).unwrap()).await);
    }
    let streams: Vec<_> = PROMPTS.iter().map(|p| engine.submit(request(p)).unwrap()).collect();
    let mut batched = Vec::new();
    for stream in streams {
        batched.push(common::collect(stream).await);
    }
    engine.shutdown();
    for (one, many) in alone.iter().zip(&batched) {
        assert_eq!(one.usage.completion_tokens, 12, "{preset}");
        assert!(!one.text.is_empty(), "{preset}");
        assert_eq!(one.text, many.text, "{preset}: a prompt's output changed beside others");
    }
}

#[tokio::test]
async fn tiny_gemma2_serves() {
    serves_alone_and_batched("tiny-gemma2").await;
}

#[tokio::test]
async fn tiny_gemma3_serves() {
    serves_alone_and_batched("tiny-gemma3").await;
}

#[tokio::test]
async fn tiny_phi3_serves() {
    serves_alone_and_batched("tiny-phi3").await;
}

#[tokio::test]
async fn tiny_qwen3_moe_serves() {
    serves_alone_and_batched("tiny-qwen3-moe").await;
}

#[tokio::test]
async fn tiny_qwen2_moe_serves() {
    serves_alone_and_batched("tiny-qwen2-moe").await;
}

#[tokio::test]
async fn tiny_mixtral_serves() {
    serves_alone_and_batched("tiny-mixtral").await;
}
