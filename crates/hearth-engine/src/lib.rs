//! candle execution for Hearth, in four wings:
//!
//! - [`generation`]: one loaded generative model's engine — the handle callers submit to
//!   ([`Engine`]), the engine thread, the continuous-batching scheduler, the block manager and
//!   paged KV cache, the sampler and the incremental detokenizer;
//! - [`embeddings`]: the [`Embedder`], which runs BERT-family encoders in dynamic batches;
//! - [`models`]: model families (Llama and its relatives over packed batches, BERT);
//! - [`kernels`]: the CPU matrix products and attention those models run on;
//!
//! and [`loading`], where weights come from (safetensors, quantized on load or not, or GGUF),
//! with the crate's errors in [`error`].
//!
//! One engine thread per loaded model owns that model's device state; requests reach it through a
//! bounded channel and events leave through per-request channels. This crate must never know about
//! HTTP, wire formats or upstream providers.

pub mod embeddings;
pub mod error;
pub mod generation;
pub mod kernels;
pub mod loading;
pub mod models;

pub use embeddings::{EmbedInput, EmbedTicket, Embedder, EmbedderConfig, EmbedderInfo, Embeddings};
pub use error::{EmbedError, EngineError, SubmitError};
pub use generation::adapters::{AdapterLookupError, AdapterStats};
pub use generation::handle::{
    run_blocking, ChatTraits, Engine, EngineConfig, GenerateRequest, GenerationStream, ModelInfo,
    Prompt,
};
pub use generation::memory::KvCacheSize;
pub use generation::metrics::{self, MetricsSnapshot};
pub use generation::EngineStats;
pub use loading::Progress;
