//! Continuous-batching scheduler: one path for prefill, chunked prefill and decode.
//!
//! Each step answers one question, as in vLLM v1: how many new tokens does each sequence get this
//! step, under a budget of `max_batch_tokens`? A decode is a sequence with one uncomputed token; a
//! prefill chunk is a run of uncomputed tokens. The scheduler owns the waiting queue, the running
//! set and the [`BlockManager`]; it never touches a tensor.
//!
//! Memory grows on demand. A waiting sequence is admitted when the blocks for its tokens (less
//! the prefix the cache already holds) are free with a small watermark to spare; each step then
//! takes blocks for exactly the tokens it schedules. When a running sequence needs a block and
//! none is free, the most recently admitted running sequence is preempted by recompute: its
//! blocks are freed and it goes back to the front of the waiting queue with every token it has,
//! to be prefilled again when memory allows. The oldest running sequence is never the victim
//! while another runs, and a sequence alone always fits (its whole budget is checked against the
//! cache in [`Scheduler::add`]), so preemption cannot loop forever. How a step is planned is in
//! `planning`.

mod config;
mod planning;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use self::config::{ConfigError, SchedulerConfig};
use crate::generation::block_manager::{BlockCopy, BlockManager};
use crate::generation::sequence::{SeqId, Sequence};

/// Why [`Scheduler::add`] refused a sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("overloaded: {num_waiting} requests are already waiting")]
    QueueFull { num_waiting: usize },
    #[error(
        "request needs {needed_blocks} KV blocks for its prompt and max_tokens, \
         but the cache has only {total_blocks}"
    )]
    TooLarge { needed_blocks: usize, total_blocks: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
}

/// The work of one sequence in one step: compute `token_ids[start..start + num_tokens]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: SeqId,
    /// The sequence's `num_computed_tokens` when scheduled.
    pub start: usize,
    pub num_tokens: usize,
    /// The chunk ends at the last known token (the prompt is complete, or it is a decode): the
    /// runner samples a token for it.
    pub samples: bool,
}

/// Token flow since the scheduler started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Prompt tokens of every sequence accepted by [`Scheduler::add`].
    pub num_prompt_tokens: u64,
    /// Tokens appended by [`Scheduler::append_token`].
    pub num_generated_tokens: u64,
    /// Running sequences sent back to the waiting queue to free KV blocks.
    pub num_preemptions: u64,
}

/// Owns the waiting queue, the running set and the block manager.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    block_manager: BlockManager,
    /// First in, first admitted; the head is never overtaken, so the fairness bound holds.
    /// Preempted sequences rejoin at the front.
    waiting: VecDeque<Sequence>,
    /// In admission order, so the last one is the preemption victim. A `Vec` with linear
    /// lookups: it holds at most `max_num_seqs` entries.
    running: Vec<Sequence>,
    /// Calls to `schedule` so far; arrival and waiting are measured in these.
    num_steps: u64,
    /// Index in `running` where the next step's decodes start, so that decodes take turns when
    /// they outnumber the budget.
    decode_cursor: usize,
    /// Blocks an admission leaves free while anything runs (`kv_watermark_percent`).
    num_watermark_blocks: usize,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler over the KV cache that `block_manager` accounts for.
    ///
    /// # Panics
    /// When `config` fails [`SchedulerConfig::validate`]: a configuration bug that the engine
    /// rejects when it loads its settings, before any request arrives.
    pub fn new(config: SchedulerConfig, block_manager: BlockManager) -> Self {
        if let Err(err) = config.validate() {
            panic!("{err}");
        }
        let num_watermark_blocks =
            block_manager.num_total_blocks() * config.kv_watermark_percent / 100;
        Self {
            config,
            block_manager,
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_steps: 0,
            decode_cursor: 0,
            num_watermark_blocks,
            stats: SchedulerStats::default(),
        }
    }

    /// Queues a fresh sequence (nothing computed, no blocks). Its `arrival_step` is overwritten
    /// with the scheduler's own step count, the clock the fairness bound is measured in.
    pub fn add(&mut self, mut seq: Sequence) -> Result<(), AdmitError> {
        debug_assert!(seq.block_table.is_empty() && seq.num_computed_tokens == 0);
        debug_assert!(self.get(seq.id).is_none(), "sequence {} added twice", seq.id);
        if seq.num_prompt_tokens == 0 {
            return Err(AdmitError::EmptyPrompt);
        }
        if seq.max_tokens == 0 {
            return Err(AdmitError::ZeroMaxTokens);
        }
        // Checked before the queue bound: this refusal is permanent, so a client must not retry.
        // It is also what keeps preemption finite: a sequence alone always fits.
        let needed_blocks = self.block_manager.num_blocks_for(seq.num_max_total_tokens());
        let total_blocks = self.block_manager.num_total_blocks();
        if needed_blocks > total_blocks {
            return Err(AdmitError::TooLarge { needed_blocks, total_blocks });
        }
        // Preempted sequences were admitted once already; they do not hold new arrivals back.
        let num_waiting = self.waiting.iter().filter(|seq| seq.num_preemptions == 0).count();
        if num_waiting >= self.config.max_waiting {
            return Err(AdmitError::QueueFull { num_waiting });
        }
        seq.arrival_step = self.num_steps;
        self.block_manager.hash_full_blocks(&mut seq);
        self.stats.num_prompt_tokens += seq.num_prompt_tokens as u64;
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Plans one step. Empty when there is nothing to compute.
    pub fn schedule(&mut self) -> Vec<ScheduledSeq> {
        let mut batch = Vec::new();
        self.schedule_into(&mut batch);
        batch
    }

    /// Records that the runner computed the scheduled tokens, and publishes the blocks they
    /// filled to the prefix cache. Sequences finished in the meantime (cancelled while the step
    /// ran) are skipped.
    pub fn on_step_done(&mut self, scheduled: &[ScheduledSeq]) {
        for item in scheduled {
            if let Some(seq) = self.running.iter_mut().find(|seq| seq.id == item.seq_id) {
                debug_assert_eq!(seq.num_computed_tokens, item.start, "step applied twice");
                seq.num_computed_tokens = (item.start + item.num_tokens).min(seq.num_tokens());
                self.block_manager.cache_full_blocks(seq);
            }
        }
    }

    /// Appends a sampled token and returns the updated sequence, or `None` (appending nothing)
    /// when no running sequence has this id or it already holds `max_tokens` generated tokens —
    /// its budget is spent, so the caller should have finished it.
    pub fn append_token(&mut self, seq_id: SeqId, token: u32) -> Option<&Sequence> {
        let seq = self.running.iter_mut().find(|seq| seq.id == seq_id)?;
        debug_assert!(!seq.is_prefilling(), "token sampled before the prompt was computed");
        if seq.is_at_max_tokens() {
            return None;
        }
        seq.token_ids.push(token);
        self.block_manager.hash_full_blocks(seq);
        self.stats.num_generated_tokens += 1;
        Some(seq)
    }

    /// Removes a sequence wherever it is (waiting or running) and frees its blocks at once (a
    /// block shared with another sequence just loses a reference), so the next `schedule` can
    /// admit another. Used for normal completion and for cancellation.
    pub fn finish(&mut self, seq_id: SeqId) -> Option<Sequence> {
        let mut seq = match self.running.iter().position(|seq| seq.id == seq_id) {
            Some(index) => self.running.remove(index),
            None => {
                let index = self.waiting.iter().position(|seq| seq.id == seq_id)?;
                self.waiting.remove(index)?
            }
        };
        if let Err(err) = self.block_manager.free(&mut seq) {
            tracing::error!(error = %err, "KV block bookkeeping error while finishing");
        }
        Some(seq)
    }

    pub fn get(&self, seq_id: SeqId) -> Option<&Sequence> {
        self.running.iter().chain(&self.waiting).find(|seq| seq.id == seq_id)
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn block_manager(&self) -> &BlockManager {
        &self.block_manager
    }

    /// KV copies the planned step needs before its forward pass: partial-block prefix hits of
    /// the sequences it admitted.
    pub fn block_copies(&self) -> &[BlockCopy] {
        self.block_manager.pending_copies()
    }

    /// Records that [`block_copies`](Self::block_copies) were applied to the KV cache.
    pub fn on_block_copies_done(&mut self) {
        self.block_manager.clear_pending_copies();
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }
}
