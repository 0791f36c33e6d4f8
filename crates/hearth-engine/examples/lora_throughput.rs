//! Decode throughput with many LoRA adapters in one batch against the bare base model: 8
//! concurrent streams on a SmolLM2-135M-shaped model (random weights, q8_0 on load), each
//! stream under its own rank-16 adapter over every projection, or all on the base model, or all
//! under one adapter. Rounds alternate so the machine's drift hits every column alike.
//!
//! Run with `cargo run --release -p hearth-engine --example lora_throughput [ROUNDS]`.

use std::time::Instant;

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig, GenerateRequest, Prompt};
use hearth_package::synth::{write_llama_package, write_lora_adapter, LoraSpec, SynthSpec};
use hearth_package::Package;
use hearth_protocol::{GenerationEvent, SamplingParams};

const STREAMS: usize = 8;
const PROMPT_TOKENS: usize = 64;
const OUTPUT_TOKENS: usize = 64;
const RANK: usize = 16;

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("smollm2-135m");
    let spec = SynthSpec::smollm2_135m();
    eprintln!("writing a SmolLM2-135M-shaped package and {STREAMS} rank-{RANK} adapters");
    write_llama_package(&spec, &dir, &mut |_, _| {}).expect("the package is written");
    let mut yaml = String::from("quantize: q8_0\nadapters:\n");
    for i in 0..STREAMS {
        let lora = LoraSpec { rank: RANK, ..LoraSpec::all_projections(i as u64) };
        write_lora_adapter(&spec, &lora, &dir.join(format!("a{i}"))).expect("an adapter");
        yaml.push_str(&format!("  - {{name: a{i}, path: a{i}}}\n"));
    }
    std::fs::write(dir.join("hearth.yaml"), yaml).expect("hearth.yaml");
    let package = Package::load(&dir).expect("the package loads");
    let engine = Engine::start(&package, EngineConfig::default(), &Device::Cpu, &|_, _| {})
        .expect("the engine starts");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let columns: [AdapterOf; 3] = [|_| None, |i| Some(format!("a{i}")), |_| Some("a0".into())];
    // Warm-up: every adapter loaded, every kernel touched.
    runtime.block_on(round(&engine, |i| Some(format!("a{i}"))));
    println!(
        "round  {:>12}  {:>12}  {:>12}   (output tokens/s, {STREAMS} streams)",
        "base", "8 adapters", "1 adapter"
    );
    let mut totals = [0f64; 3];
    for r in 0..rounds {
        let mut line = format!("{:>5}", r + 1);
        for (c, adapter) in columns.iter().enumerate() {
            let rate = runtime.block_on(round(&engine, *adapter));
            totals[c] += rate;
            line.push_str(&format!("  {rate:>12.1}"));
        }
        println!("{line}");
    }
    let mean: Vec<f64> = totals.iter().map(|t| t / rounds as f64).collect();
    println!("mean   {:>12.1}  {:>12.1}  {:>12.1}", mean[0], mean[1], mean[2]);
    println!(
        "8 adapters / base = {:.2}, 1 adapter / base = {:.2}",
        mean[1] / mean[0],
        mean[2] / mean[0]
    );
    engine.shutdown();
}

/// Which adapter stream `i` runs under.
type AdapterOf = fn(usize) -> Option<String>;

/// Output tokens per second of `STREAMS` concurrent requests, stream `i` under `adapter(i)`.
async fn round(engine: &Engine, adapter: AdapterOf) -> f64 {
    let start = Instant::now();
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| {
            let sampling = SamplingParams {
                max_tokens: OUTPUT_TOKENS,
                ignore_eos: true,
                ..SamplingParams::default()
            };
            // Distinct prompts, so that no stream reuses another's cached prefix.
            let prompt =
                (0..PROMPT_TOKENS).map(|t| (7 + 13 * i + 31 * t) as u32 % 40_000 + 100).collect();
            let request = GenerateRequest {
                prompt: Prompt::Tokens(prompt),
                sampling: sampling.validated().expect("valid sampling"),
                constraint: None,
                adapter: adapter(i),
            };
            engine.submit(request).expect("submitted")
        })
        .collect();
    let mut tokens = 0;
    for mut stream in streams {
        loop {
            match stream.recv().await.expect("an event") {
                GenerationEvent::Text { .. } => {}
                GenerationEvent::Finished { usage, .. } => {
                    tokens += usage.completion_tokens;
                    break;
                }
                GenerationEvent::Failed { message } => panic!("failed: {message}"),
            }
        }
    }
    tokens as f64 / start.elapsed().as_secs_f64()
}
