//! The engine end to end on the tiny model package, with a KV cache too small for its load:
//! preemption and prefix caching may change latency, never what a caller receives.

mod common;

use common::{collect, start, tokens, Output};
use hearth_engine::{Engine, GenerateRequest, GenerationStream, Prompt};
use hearth_protocol::{FinishReason, SamplingParams};

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, ignore_eos: true, ..SamplingParams::default() }
}

/// Seeded sampling with penalties: state that a preemption must carry over untouched.
fn sampled(max_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        repetition_penalty: 1.3,
        frequency_penalty: 0.2,
        seed: Some(seed),
        ..greedy(max_tokens)
    }
}

fn submit(engine: &Engine, prompt: Vec<u32>, sampling: SamplingParams) -> GenerationStream {
    let sampling = sampling.validated().expect("valid sampling");
    engine
        .submit(GenerateRequest {
            prompt: Prompt::Tokens(prompt),
            sampling,
            constraint: None,
            adapter: None,
        })
        .expect("accepted")
}

async fn generate(engine: &Engine, prompt: Vec<u32>, sampling: SamplingParams) -> Output {
    collect(submit(engine, prompt, sampling)).await
}

/// Eight requests of 10 to 24 prompt tokens and 24 new ones each; half sampled with a seed.
fn workload() -> Vec<(Vec<u32>, SamplingParams)> {
    (0..8u64)
        .map(|i| {
            let prompt = tokens(i + 1, 10 + 2 * i as usize);
            let sampling = if i % 2 == 0 { greedy(24) } else { sampled(24, 100 + i) };
            (prompt, sampling)
        })
        .collect()
}

#[tokio::test]
async fn concurrent_requests_in_a_small_cache_match_each_alone() {
    let reference = start(512, false);
    let mut alone = Vec::new();
    for (prompt, sampling) in workload() {
        alone.push(generate(&reference, prompt, sampling).await);
    }

    // 24 blocks hold 96 tokens; the eight requests grow to about 300.
    let engine = start(24, true);
    let streams: Vec<_> = workload()
        .into_iter()
        .map(|(prompt, sampling)| submit(&engine, prompt, sampling))
        .collect();
    for (i, (stream, expected)) in streams.into_iter().zip(&alone).enumerate() {
        let output = collect(stream).await;
        assert_eq!(output.reason, FinishReason::Length, "request {i}");
        assert_eq!(output.text, expected.text, "request {i}");
        assert_eq!(output.usage.completion_tokens, 24, "request {i}");
        assert_eq!(output.usage.cached_tokens, 0, "request {i}: prompts share nothing");
    }
    // Stats are published after the step that sent the last event; shutdown waits for it.
    engine.shutdown();
    let stats = engine.stats();
    assert!(stats.num_preemptions > 0, "the cache was meant to overflow: {stats:?}");
    assert_eq!(stats.num_generated_tokens, 8 * 24);
    assert_eq!(stats.kv_blocks_used, 0, "every block is back: {stats:?}");
}

#[tokio::test]
async fn a_shared_prefix_is_served_from_the_cache_with_the_same_output() {
    let history = tokens(42, 60);
    let turns = [history.clone(), [history.clone(), tokens(43, 9)].concat()];
    let mut outputs = Vec::new();
    for prefix_caching in [true, false] {
        let engine = start(64, prefix_caching);
        let mut run = Vec::new();
        for prompt in &turns {
            run.push(generate(&engine, prompt.clone(), greedy(16)).await);
        }
        engine.shutdown();
        outputs.push((run, engine.stats()));
    }
    let [(cached, cached_stats), (uncached, uncached_stats)] =
        <[_; 2]>::try_from(outputs).expect("two runs");

    assert_eq!(cached[0].usage.cached_tokens, 0);
    assert_eq!(cached[1].usage.cached_tokens, 60, "the whole history, in full blocks");
    assert!(uncached.iter().all(|output| output.usage.cached_tokens == 0));
    for (with, without) in cached.iter().zip(&uncached) {
        assert_eq!(with.text, without.text);
    }
    assert_eq!(cached_stats.num_prefix_hit_tokens, 60);
    assert_eq!(cached_stats.num_prefix_queried_tokens, 60 + 69);
    assert_eq!(uncached_stats.num_prefix_queried_tokens, 0);
}

#[tokio::test]
async fn a_growing_conversation_computes_only_its_new_tokens() {
    let engine = start(256, true);
    let reference = start(256, false);
    // 29, 39, 49, ... tokens: no turn's prompt ends on a boundary of the 4-token blocks.
    let mut prompt = tokens(7, 29);
    let mut num_previous_tokens = 0;
    for turn in 0..5u64 {
        let output = generate(&engine, prompt.clone(), greedy(4)).await;
        // All of the previous turn's prompt: its whole blocks attached, and the tokens of its
        // last block before that turn's answer (which this prompt does not repeat) copied.
        assert_eq!(output.usage.cached_tokens, num_previous_tokens, "turn {turn}");
        let expected = generate(&reference, prompt.clone(), greedy(4)).await;
        assert_eq!(output.text, expected.text, "turn {turn}");
        num_previous_tokens = prompt.len();
        prompt.extend(tokens(100 + turn, 10));
    }
}

#[tokio::test]
async fn the_same_prompt_again_computes_only_its_last_token() {
    let engine = start(64, true);
    let reference = start(64, false);
    for len in [14, 16] {
        let prompt = tokens(len as u64, len);
        let first = generate(&engine, prompt.clone(), greedy(6)).await;
        let again = generate(&engine, prompt.clone(), greedy(6)).await;
        let expected = generate(&reference, prompt, greedy(6)).await;
        assert_eq!((first.usage.cached_tokens, again.usage.cached_tokens), (0, len - 1));
        assert_eq!(first.text, expected.text, "{len} tokens");
        assert_eq!(again.text, expected.text, "{len} tokens");
    }
}
