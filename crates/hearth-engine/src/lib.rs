//! candle execution for Hearth: Llama-family models over packed batches, a paged KV cache, the
//! continuous-batching scheduler, the sampler and the incremental detokenizer; and the
//! [`Embedder`], which runs BERT-family encoders for embeddings.
//!
//! One engine thread per loaded model owns that model's device state; requests reach it through a
//! bounded channel and events leave through per-request channels. This crate must never know about
//! HTTP, wire formats or upstream providers.

pub mod block_manager;
pub mod detokenizer;
mod embedder;
mod engine;
pub mod kv_cache;
mod loading;
pub mod metrics;
pub mod models;
mod runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
mod worker;

pub use embedder::{
    EmbedError, EmbedInput, EmbedTicket, Embedder, EmbedderConfig, EmbedderInfo, Embeddings,
};
pub use engine::{
    run_blocking, Engine, EngineConfig, EngineError, EngineStats, GenerateRequest,
    GenerationStream, ModelInfo, Prompt, SubmitError,
};
pub use loading::Progress;
pub use metrics::MetricsSnapshot;
