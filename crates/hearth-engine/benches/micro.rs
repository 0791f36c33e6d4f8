//! Micro-benchmarks of the engine's per-token bookkeeping, apart from the model: one scheduler
//! step, one sampled token, one detokenized token. The model's own time per step is measured by
//! the serving benchmark (benches/run-serving.sh); these show what the engine adds on top.
//!
//!   cargo bench -p hearth-engine --bench micro

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hearth_engine::generation::block_manager::BlockManager;
use hearth_engine::generation::detokenizer::IncrementalDetokenizer;
use hearth_engine::generation::sampler::Sampler;
use hearth_engine::generation::scheduler::{Scheduler, SchedulerConfig};
use hearth_engine::generation::sequence::Sequence;
use hearth_protocol::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The benchmark model's vocabulary (SmolLM2-135M's shape).
const VOCAB: usize = 49_152;
const PROMPT_TOKENS: usize = 350;
const OUTPUT_TOKENS: usize = 64;

/// A scheduler in steady state: `running` sequences decoding, each replaced by a fresh prompt
/// when it reaches its output length, so steps mix decodes with prefill chunks as in serving.
struct SteadyState {
    scheduler: Scheduler,
    next_id: u64,
}

impl SteadyState {
    fn new(running: usize) -> Self {
        let config = SchedulerConfig {
            max_num_seqs: running,
            max_waiting: running * 2,
            ..SchedulerConfig::default()
        };
        let blocks = running * (PROMPT_TOKENS + OUTPUT_TOKENS).div_ceil(16) * 2;
        let mut state = Self {
            scheduler: Scheduler::new(config, BlockManager::new(blocks, 16, true)),
            next_id: 0,
        };
        for _ in 0..running {
            state.admit();
        }
        // Past the first prefills, into the mixed steady state.
        for _ in 0..4 * OUTPUT_TOKENS {
            state.step();
        }
        state
    }

    fn admit(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let prompt = (0..PROMPT_TOKENS as u32).map(|i| (id as u32 * 7_919 + i) % VOCAB as u32);
        let seq = Sequence::new(id, prompt.collect(), OUTPUT_TOKENS, 0);
        self.scheduler.add(seq).expect("the queue has room");
    }

    /// One engine step minus the model: schedule, record, append a token per sampling
    /// sequence, retire the finished and admit their replacements.
    fn step(&mut self) -> usize {
        let batch = self.scheduler.schedule();
        self.scheduler.on_step_done(&batch);
        for item in batch.iter().filter(|item| item.samples) {
            let done = self
                .scheduler
                .append_token(item.seq_id, 42)
                .is_some_and(Sequence::is_at_max_tokens);
            if done {
                self.scheduler.finish(item.seq_id);
                self.admit();
            }
        }
        batch.len()
    }
}

fn scheduler_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler step");
    for running in [8, 64] {
        let mut state = SteadyState::new(running);
        group
            .bench_function(format!("{running} sequences"), |b| b.iter(|| black_box(state.step())));
    }
    group.finish();
}

fn logits(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..VOCAB).map(|_| rng.random_range(-10.0f32..10.0)).collect()
}

fn sampler(c: &mut Criterion) {
    let logits = logits(1);
    let prompt: Vec<u32> = (0..PROMPT_TOKENS as u32).collect();
    let generated: Vec<u32> = (1_000..1_000 + OUTPUT_TOKENS as u32).collect();
    let cases = [
        ("greedy", SamplingParams::default()),
        (
            "temperature 0.8, top-k 50, top-p 0.95",
            SamplingParams {
                temperature: 0.8,
                top_k: 50,
                top_p: 0.95,
                seed: Some(7),
                ..SamplingParams::default()
            },
        ),
        (
            "temperature 1, top-p 0.9, repetition and frequency penalties",
            SamplingParams {
                temperature: 1.0,
                top_p: 0.9,
                repetition_penalty: 1.1,
                frequency_penalty: 0.5,
                seed: Some(7),
                ..SamplingParams::default()
            },
        ),
    ];
    let mut group = c.benchmark_group("sample one token (49,152-word vocabulary)");
    for (name, params) in cases {
        let mut sampler = Sampler::new(&params, &prompt);
        group.bench_function(name, |b| b.iter(|| black_box(sampler.sample(&logits, &generated))));
    }
    group.finish();
}

fn detokenizer(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama/tokenizer.json");
    let tokenizer =
        Arc::new(tokenizers::Tokenizer::from_file(&path).expect("the example tokenizer"));
    let text =
        "The quick brown fox jumps over the lazy dog; naïve café, 東京, emoji 🦀 and 12345. "
            .repeat(8);
    let ids = tokenizer.encode(text.as_str(), false).expect("encodes").get_ids().to_vec();
    let prompt = &ids[..16];
    let output = &ids[16..];
    c.bench_function(&format!("detokenize {} tokens one at a time", output.len()), |b| {
        b.iter_batched(
            || IncrementalDetokenizer::new(tokenizer.clone(), prompt),
            |mut detok| {
                let mut out = String::new();
                for &id in output {
                    out.push_str(&detok.push(id).expect("decodes"));
                }
                out.push_str(&detok.flush());
                black_box(out)
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, scheduler_step, sampler, detokenizer);
criterion_main!(benches);
