//! One generative model's engine: the handle callers submit to ([`handle`]), the engine thread
//! ([`worker`]) that runs each step, the scheduler deciding what runs, the block manager and
//! paged KV cache holding what was computed, the sampler, the detokenizer and the metrics.

pub mod adapters;
pub mod block_manager;
mod constraint;
pub mod detokenizer;
pub mod handle;
pub mod kv_cache;
pub mod memory;
pub mod metrics;
mod phases;
mod runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
mod shared;
mod worker;

pub use shared::EngineStats;
