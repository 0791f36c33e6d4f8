//! What an engine's handles and its worker thread share: the load and counters the worker
//! publishes after every step, the queue count that bounds submissions, and the metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use crate::generation::metrics::EngineMetrics;

/// A snapshot of the engine's load, refreshed after every step. The `u64` counts run from the
/// engine's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_total: usize,
    /// Blocks held by sequences; the rest are free (cached or not).
    pub kv_blocks_used: usize,
    /// Blocks in the prefix cache, held or free.
    pub kv_blocks_cached: usize,
    pub block_size: usize,
    /// Tokens of admitted sequences looked up in the prefix cache (re-admissions after a
    /// preemption included).
    pub num_prefix_queried_tokens: u64,
    /// Of those, tokens whose KV came from the cache.
    pub num_prefix_hit_tokens: u64,
    /// Running sequences whose KV was dropped to make room, to be recomputed.
    pub num_preemptions: u64,
    /// Prompt tokens of accepted requests.
    pub num_prompt_tokens: u64,
    /// Tokens generated.
    pub num_generated_tokens: u64,
}

/// State shared between handles and the worker thread.
pub(crate) struct Shared {
    pub stats: Mutex<EngineStats>,
    /// Requests submitted but not yet given their first prefill chunk; bounds the queue.
    pub num_queued: AtomicUsize,
    pub shutting_down: AtomicBool,
    /// Latency histograms and request outcomes, recorded by the worker.
    pub metrics: EngineMetrics,
}
