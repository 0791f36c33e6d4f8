//! Time to first token of an agent-style conversation on the tiny model, with and without
//! prefix caching: every turn re-sends the whole history plus a new message (`turn`), and then
//! the same prompt once more, unchanged (`resend`).
//!
//! Run with `cargo run --release -p hearth-engine --example prefix_cache_ttft`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig, GenerateRequest, Prompt};
use hearth_package::Package;
use hearth_protocol::{GenerationEvent, SamplingParams};

const NUM_TURNS: usize = 10;
/// Tokens each turn adds to the history; turn 10 sends 1,500.
const TOKENS_PER_TURN: usize = 150;
/// Independent conversations (histories that share nothing); the median turn is reported.
const NUM_CONVERSATIONS: usize = 5;

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama");
    let package = Package::load(&dir).expect("models/tiny-llama is a valid package");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");

    let mut columns = Vec::new();
    for prefix_caching in [true, false] {
        let config = EngineConfig { prefix_caching, ..EngineConfig::default() };
        let engine = Engine::start(&package, config, &Device::Cpu, &|_, _| {}).expect("starts");
        columns.push(runtime.block_on(conversations(&engine)));
        engine.shutdown();
    }
    println!("turn  prompt  cached  turn_ms (cached / uncached)  resend_ms (cached / uncached)");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (turn, (cached, uncached)) in columns[0].iter().zip(&columns[1]).enumerate() {
        println!(
            "{:>4}  {:>6}  {:>6}  {:>12.1} / {:>8.1}     {:>12.1} / {:>8.1}",
            turn + 1,
            (turn + 1) * TOKENS_PER_TURN,
            cached.num_cached_tokens,
            ms(cached.turn),
            ms(uncached.turn),
            ms(cached.resend),
            ms(uncached.resend),
        );
    }
}

/// Medians over the conversations of one turn.
struct TurnTimes {
    turn: Duration,
    resend: Duration,
    num_cached_tokens: usize,
}

async fn conversations(engine: &Engine) -> Vec<TurnTimes> {
    let mut samples = vec![(Vec::new(), Vec::new(), 0); NUM_TURNS];
    for conversation in 0..NUM_CONVERSATIONS as u64 {
        let history = tokens(conversation, NUM_TURNS * TOKENS_PER_TURN);
        for (turn, (turns, resends, num_cached)) in samples.iter_mut().enumerate() {
            let prompt = &history[..(turn + 1) * TOKENS_PER_TURN];
            let (ttft, cached) = first_token(engine, prompt.to_vec()).await;
            turns.push(ttft);
            *num_cached = cached;
            resends.push(first_token(engine, prompt.to_vec()).await.0);
        }
    }
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    samples
        .into_iter()
        .map(|(turns, resends, num_cached_tokens)| TurnTimes {
            turn: median(turns),
            resend: median(resends),
            num_cached_tokens,
        })
        .collect()
}

async fn first_token(engine: &Engine, prompt: Vec<u32>) -> (Duration, usize) {
    let sampling = SamplingParams { max_tokens: 1, ignore_eos: true, ..SamplingParams::default() };
    let started = Instant::now();
    let mut stream = engine
        .submit(GenerateRequest {
            prompt: Prompt::Tokens(prompt),
            sampling: sampling.validated().expect("valid"),
            constraint: None,
            adapter: None,
        })
        .expect("accepted");
    let mut ttft = None;
    loop {
        match stream.recv().await.expect("a terminal event") {
            GenerationEvent::Text { .. } => {
                ttft.get_or_insert_with(|| started.elapsed());
            }
            GenerationEvent::Finished { usage, .. } => {
                let ttft = *ttft.get_or_insert_with(|| started.elapsed());
                return (ttft, usage.cached_tokens);
            }
            GenerationEvent::Failed { message } => panic!("generation failed: {message}"),
        }
    }
}

/// A pseudo-random history per `seed`, inside the tiny vocabulary and clear of its special ids.
fn tokens(seed: u64, len: usize) -> Vec<u32> {
    let mut state = (seed + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            3 + (state % 500) as u32
        })
        .collect()
}
