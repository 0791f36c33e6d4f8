//! What the engine's integration tests share: the tiny model with a KV cache of a chosen size,
//! seeded prompts, and reading a stream to its end.

use std::path::PathBuf;

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig, GenerationStream, KvCacheSize};
use hearth_protocol::{FinishReason, GenerationEvent, Usage};

pub const BLOCK_SIZE: usize = 4;
/// Bytes of one block of the tiny model's cache: K and V, 4 layers, 2 KV heads of 16 f32.
pub const BYTES_PER_BLOCK: usize = 2 * 4 * BLOCK_SIZE * 2 * 16 * 4;

pub fn start(num_blocks: usize, prefix_caching: bool) -> Engine {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama");
    let package =
        hearth_package::Package::load(&dir).expect("models/tiny-llama is a valid package");
    let config = EngineConfig {
        block_size: BLOCK_SIZE,
        kv_cache: KvCacheSize::Bytes(num_blocks * BYTES_PER_BLOCK),
        prefix_caching,
        ..EngineConfig::default()
    };
    let engine = Engine::start(&package, config, &Device::Cpu, &|_, _| {}).expect("engine starts");
    assert_eq!(engine.stats().kv_blocks_total, num_blocks);
    engine
}

/// Token ids from a seeded generator, inside the tiny vocabulary and clear of its special ids.
pub fn tokens(seed: u64, len: usize) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            3 + (state % 500) as u32
        })
        .collect()
}

#[derive(Debug, PartialEq)]
pub struct Output {
    pub text: String,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// Reads a stream to its end, checking that no Text event repeats tokens already reported.
pub async fn collect(mut stream: GenerationStream) -> Output {
    let mut text = String::new();
    let mut num_reported = 0;
    loop {
        match stream.recv().await.expect("a terminal event") {
            GenerationEvent::Text { text: piece, completion_tokens } => {
                assert!(completion_tokens > num_reported, "tokens reported twice");
                num_reported = completion_tokens;
                text.push_str(&piece);
            }
            GenerationEvent::Finished { reason, usage } => return Output { text, reason, usage },
            GenerationEvent::Failed { message } => panic!("generation failed: {message}"),
        }
    }
}
