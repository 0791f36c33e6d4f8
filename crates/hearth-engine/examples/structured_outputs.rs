//! What structured outputs cost on the CPU, on a SmolLM2-135M-shaped model (random weights,
//! the real architecture and its 49,152-token vocabulary):
//!
//! - inter-token latency at 8 concurrent streams, JSON-Schema-constrained against free
//!   decoding on the same prompts (rounds alternate, so drift hits both alike);
//! - time to first token with and without a typical tool's grammar to compile (a forced call,
//!   and `auto`'s text-or-call grammar), one request at a time (the difference is what
//!   compiling the grammar adds).
//!
//! Run with `cargo run --release -p hearth-engine --example structured_outputs`. The model is
//! written once to `target/bench-models/smollm2-135m`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig, GenerateRequest, Prompt};
use hearth_package::synth::{write_llama_package, SynthSpec};
use hearth_package::Package;
use hearth_protocol::tools::{forced_call_grammar, ToolFormat};
use hearth_protocol::{
    GenerationEvent, OutputConstraint, SamplingParams, ToolChoice, ToolDefinition,
};
use serde_json::json;

const STREAMS: usize = 8;
const TOKENS_PER_STREAM: usize = 64;
const ROUNDS: usize = 3;
const TTFT_SAMPLES: usize = 60;

fn main() {
    let dir = model_dir();
    let package = Package::load(&dir).expect("the benchmark model loads");
    let engine = Engine::start(&package, EngineConfig::default(), &Device::Cpu, &|_, _| {})
        .expect("the engine starts");
    let runtime = tokio::runtime::Builder::new_multi_thread().build().expect("a runtime");
    // Long answers: forty strings of eight or more characters outlast every stream.
    let long = OutputConstraint::schema(
        json!({ "type": "object", "required": ["items"], "additionalProperties": false,
            "properties": { "items": { "type": "array", "minItems": 40, "maxItems": 40,
                "items": { "type": "string", "minLength": 8, "maxLength": 16 } } } }),
    );
    let tool = ToolDefinition {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({ "type": "object", "required": ["location", "unit"],
            "additionalProperties": false, "properties": {
                "location": { "type": "string", "description": "City and country" },
                "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] },
                "days": { "type": "integer", "minimum": 1, "maximum": 14 } } }),
    };
    let grammar = |choice| {
        forced_call_grammar(ToolFormat::Hermes, std::slice::from_ref(&tool), &choice, true, None)
    };
    let (forced, auto) = (grammar(ToolChoice::Required), grammar(ToolChoice::Auto));
    runtime.block_on(streams(&engine, None)); // warm-up
                                              // `auto`'s grammar while the model answers in text (random weights never write a call).
    let (mut free, mut constrained, mut text_under_auto) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        free.extend(runtime.block_on(streams(&engine, None)));
        constrained.extend(runtime.block_on(streams(&engine, Some(long.clone()))));
        text_under_auto.extend(runtime.block_on(streams(&engine, auto.clone())));
    }
    println!("inter-token latency, {STREAMS} concurrent streams of {TOKENS_PER_STREAM} tokens, {ROUNDS} rounds each:");
    report("free", &mut free);
    report("json schema", &mut constrained);
    report("auto tool call", &mut text_under_auto);
    for (label, samples) in [("json schema", &constrained), ("auto tool call", &text_under_auto)] {
        let change = 100.0 * (p(samples, 0.5) / p(&free, 0.5) - 1.0);
        println!("{label} overhead at p50: {change:+.1} %");
    }

    let modes = [("no grammar", None), ("forced tool call", forced), ("auto tool call", auto)];
    let mut submit = vec![Vec::new(); modes.len()];
    let mut ttft = vec![Vec::new(); modes.len()];
    for i in 0..TTFT_SAMPLES {
        for (m, (_, grammar)) in modes.iter().enumerate() {
            // Prompts of their own: a prompt seen before would start on a prefix-cache hit.
            let seed = 1000 * (m + 1) + i;
            let (s, t) = runtime.block_on(first_token(&engine, seed, grammar.clone()));
            submit[m].push(s);
            ttft[m].push(t);
        }
    }
    println!("one request at a time, {TTFT_SAMPLES} each: submit (tokenize + compile the grammar)");
    for (m, (label, _)) in modes.iter().enumerate() {
        report(label, &mut submit[m]);
    }
    println!("time to first token:");
    for (m, (label, _)) in modes.iter().enumerate() {
        report(label, &mut ttft[m]);
    }
    for m in 1..modes.len() {
        println!(
            "added by the {} grammar at p50: compile {:.2} ms, first token {:.2} ms",
            modes[m].0,
            p(&submit[m], 0.5) - p(&submit[0], 0.5),
            p(&ttft[m], 0.5) - p(&ttft[0], 0.5)
        );
    }
    engine.shutdown();
}

/// The synthesized model, written on first use.
fn model_dir() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models/smollm2-135m");
    if !dir.exists() {
        eprintln!("writing the benchmark model to {}", dir.display());
        // Written aside and renamed, so an interrupted write is never taken for the model.
        let partial = dir.with_extension("partial");
        let spec = SynthSpec::smollm2_135m();
        write_llama_package(&spec, &partial, &mut |_, _| {}).expect("the model is written");
        std::fs::rename(&partial, &dir).expect("the model is moved into place");
    }
    dir
}

fn request(
    seed: usize,
    max_tokens: usize,
    constraint: Option<OutputConstraint>,
) -> GenerateRequest {
    let prompt: Vec<u32> =
        (0..32).map(|i| 100 + ((seed * 7919 + i * 104_729) % 40_000) as u32).collect();
    let sampling = SamplingParams {
        temperature: 1.0,
        seed: Some(seed as u64),
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        sampling: sampling.validated().expect("valid"),
        constraint,
        adapter: None,
    }
}

/// Gaps between a stream's tokens, in milliseconds, over `STREAMS` concurrent streams.
async fn streams(engine: &Engine, constraint: Option<OutputConstraint>) -> Vec<f64> {
    let mut tasks = Vec::new();
    for seed in 0..STREAMS {
        let mut stream =
            engine.submit(request(seed, TOKENS_PER_STREAM, constraint.clone())).expect("accepted");
        tasks.push(tokio::spawn(async move {
            let (mut gaps, mut last, mut seen) = (Vec::new(), None::<Instant>, 0);
            while let Some(event) = stream.recv().await {
                match event {
                    GenerationEvent::Text { completion_tokens, .. } => {
                        let now = Instant::now();
                        if let Some(last) = last {
                            let tokens = (completion_tokens - seen).max(1) as f64;
                            gaps.push(ms(now - last) / tokens);
                        }
                        (last, seen) = (Some(now), completion_tokens);
                    }
                    GenerationEvent::Finished { .. } => break,
                    GenerationEvent::Failed { message } => panic!("{message}"),
                }
            }
            gaps
        }));
    }
    let mut gaps = Vec::new();
    for task in tasks {
        gaps.extend(task.await.expect("the stream task"));
    }
    gaps
}

/// (time `submit` took, which includes compiling the grammar; time to the first token).
async fn first_token(
    engine: &Engine,
    seed: usize,
    constraint: Option<OutputConstraint>,
) -> (f64, f64) {
    let started = Instant::now();
    let mut stream = engine.submit(request(seed, 1, constraint)).expect("accepted");
    let submitted = ms(started.elapsed());
    while let Some(event) = stream.recv().await {
        if matches!(event, GenerationEvent::Text { .. } | GenerationEvent::Finished { .. }) {
            break;
        }
    }
    (submitted, ms(started.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn p(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(label: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!(
        "  {label:<16} n={:<5} mean {mean:7.2} ms  p50 {:7.2} ms  p99 {:7.2} ms",
        samples.len(),
        p(samples, 0.5),
        p(samples, 0.99)
    );
}
