//! Continuous-batching scheduler: one path for prefill, chunked prefill and decode.
//!
//! Each step answers one question, as in vLLM v1: how many new tokens does each sequence get this
//! step, under a budget of `max_batch_tokens`? A decode is a sequence with one uncomputed token; a
//! prefill chunk is a run of uncomputed prompt tokens. The scheduler owns the waiting queue, the
//! running set and the [`BlockManager`]; it never touches a tensor.
//!
//! Memory: a sequence is admitted to run only when blocks for its whole budget (prompt plus
//! `max_tokens`) can be reserved, so a running sequence can never run out of KV memory and nothing
//! needs to be preempted. That reserves more than most sequences use; preemption (and recompute)
//! comes later and will let admission reserve only what the next step needs.

use std::collections::VecDeque;

use crate::block_manager::BlockManager;
use crate::sequence::{SeqId, Sequence};

/// Limits of one scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running (holding KV blocks) at once.
    pub max_num_seqs: usize,
    /// Most new tokens computed in one step, over all sequences.
    pub max_batch_tokens: usize,
    /// Most prompt tokens of one sequence computed in one step.
    pub max_prefill_chunk: usize,
    /// A prompt that has waited this many steps since it arrived without completing its prefill
    /// gets its next chunk before decodes take the budget.
    pub max_prefill_wait_steps: u64,
    /// Most sequences waiting to be admitted; more is answered with [`AdmitError::QueueFull`].
    pub max_waiting: usize,
}

impl Default for SchedulerConfig {
    /// Sized for a CPU: a few hundred tokens per step keep one step well under a second on a
    /// small model, and the chunk leaves half the budget to decodes.
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            max_batch_tokens: 512,
            max_prefill_chunk: 256,
            max_prefill_wait_steps: 8,
            max_waiting: 256,
        }
    }
}

impl SchedulerConfig {
    /// Rejects limits that would stop every sequence from making progress.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_prefill_chunk", self.max_prefill_chunk),
        ];
        for (field, value) in counts {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        Ok(())
    }
}

/// A [`SchedulerConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("scheduler setting `{field}` must be at least 1")]
    Zero { field: &'static str },
}

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

/// Owns the waiting queue, the running set and the block manager.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    block_manager: BlockManager,
    /// First in, first admitted; the head is never overtaken, so the fairness bound holds.
    waiting: VecDeque<Sequence>,
    /// In admission order. A `Vec` with linear lookups: it holds at most `max_num_seqs` entries.
    running: Vec<Sequence>,
    /// Calls to `schedule` so far; arrival and waiting are measured in these.
    num_steps: u64,
    /// Index in `running` where the next step's decodes start, so that decodes take turns when
    /// they outnumber the budget.
    decode_cursor: usize,
}

impl Scheduler {
    /// A scheduler over a KV cache of `num_blocks` blocks of `block_size` tokens.
    ///
    /// # Panics
    /// When `config` fails [`SchedulerConfig::validate`] or `block_size` is 0: configuration
    /// bugs that the engine rejects when it loads its settings, before any request arrives.
    pub fn new(config: SchedulerConfig, num_blocks: usize, block_size: usize) -> Self {
        if let Err(err) = config.validate() {
            panic!("{err}");
        }
        Self {
            config,
            block_manager: BlockManager::new(num_blocks, block_size),
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_steps: 0,
            decode_cursor: 0,
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
        let needed_blocks = self.block_manager.num_blocks_for(seq.num_max_total_tokens());
        let total_blocks = self.block_manager.num_total_blocks();
        if needed_blocks > total_blocks {
            return Err(AdmitError::TooLarge { needed_blocks, total_blocks });
        }
        if self.waiting.len() >= self.config.max_waiting {
            return Err(AdmitError::QueueFull { num_waiting: self.waiting.len() });
        }
        seq.arrival_step = self.num_steps;
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Plans one step. Empty when there is nothing to compute.
    pub fn schedule(&mut self) -> Vec<ScheduledSeq> {
        let mut batch = Vec::new();
        self.schedule_into(&mut batch);
        batch
    }

    /// [`schedule`](Self::schedule) into a caller-owned buffer, so the engine loop can reuse one.
    ///
    /// Order: (1) overdue prompts, (2) decodes, (3) other running prompts, (4) new admissions.
    /// A prompt is overdue once `max_prefill_wait_steps` steps have passed since it arrived and its
    /// prefill is not complete; it is served before decodes, so a request at the head of the queue
    /// gets its first chunk within `max_prefill_wait_steps + 1` steps however busy decoding is.
    /// The budget cannot help when KV blocks or `max_num_seqs` slots are short: then the head
    /// waits for a running sequence to finish, and memory, not the budget, bounds the wait.
    pub fn schedule_into(&mut self, batch: &mut Vec<ScheduledSeq>) {
        batch.clear();
        let now = self.num_steps;
        self.num_steps += 1;
        let mut budget = self.config.max_batch_tokens;

        self.schedule_running_prefills(now, true, &mut budget, batch);
        self.admit_waiting(now, true, &mut budget, batch);
        self.schedule_decodes(&mut budget, batch);
        self.schedule_running_prefills(now, false, &mut budget, batch);
        self.admit_waiting(now, false, &mut budget, batch);
        debug_assert!(
            batch.iter().map(|s| s.num_tokens).sum::<usize>() <= self.config.max_batch_tokens
        );
    }

    /// Records that the runner computed the scheduled tokens. Sequences finished in the meantime
    /// (cancelled while the step ran) are skipped.
    pub fn on_step_done(&mut self, scheduled: &[ScheduledSeq]) {
        for item in scheduled {
            if let Some(seq) = self.running.iter_mut().find(|seq| seq.id == item.seq_id) {
                debug_assert_eq!(seq.num_computed_tokens, item.start, "step applied twice");
                seq.num_computed_tokens = (item.start + item.num_tokens).min(seq.num_tokens());
            }
        }
    }

    /// Appends a sampled token and returns the updated sequence, or `None` (appending nothing)
    /// when no running sequence has this id or it already holds `max_tokens` generated tokens —
    /// its reserved blocks have no room for more, so the caller should have finished it.
    pub fn append_token(&mut self, seq_id: SeqId, token: u32) -> Option<&Sequence> {
        let seq = self.running.iter_mut().find(|seq| seq.id == seq_id)?;
        debug_assert!(!seq.is_prefilling(), "token sampled before the prompt was computed");
        if seq.is_at_max_tokens() {
            return None;
        }
        seq.token_ids.push(token);
        Some(seq)
    }

    /// Removes a sequence wherever it is (waiting or running) and frees its blocks at once, so
    /// the next `schedule` can admit another. Used for normal completion and for cancellation.
    pub fn finish(&mut self, seq_id: SeqId) -> Option<Sequence> {
        let mut seq = match self.running.iter().position(|seq| seq.id == seq_id) {
            Some(index) => self.running.remove(index),
            None => {
                let index = self.waiting.iter().position(|seq| seq.id == seq_id)?;
                self.waiting.remove(index)?
            }
        };
        self.block_manager.free(std::mem::take(&mut seq.block_table));
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

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    fn is_overdue(&self, seq: &Sequence, now: u64) -> bool {
        now.saturating_sub(seq.arrival_step) >= self.config.max_prefill_wait_steps
    }

    /// Next prefill chunks of running sequences whose overdue-ness matches `overdue`.
    fn schedule_running_prefills(
        &self,
        now: u64,
        overdue: bool,
        budget: &mut usize,
        batch: &mut Vec<ScheduledSeq>,
    ) {
        for seq in &self.running {
            if *budget == 0 {
                return;
            }
            if seq.is_prefilling() && self.is_overdue(seq, now) == overdue {
                batch.extend(self.take_chunk(seq, budget));
            }
        }
    }

    /// One token for every decoding sequence while the budget lasts, starting at the cursor.
    fn schedule_decodes(&mut self, budget: &mut usize, batch: &mut Vec<ScheduledSeq>) {
        let num_running = self.running.len();
        let start = self.decode_cursor % num_running.max(1);
        for offset in 0..num_running {
            let index = (start + offset) % num_running;
            let seq = &self.running[index];
            // Sequences waiting for their sampled token have nothing to compute.
            if seq.is_prefilling() || seq.remaining_to_compute() == 0 {
                continue;
            }
            if *budget == 0 {
                self.decode_cursor = index;
                return;
            }
            batch.extend(self.take_chunk(seq, budget));
        }
    }

    /// Moves waiting sequences to running, first in first out, while slots, blocks and budget
    /// allow. With `overdue_only`, stops at the first one that is not overdue.
    fn admit_waiting(
        &mut self,
        now: u64,
        overdue_only: bool,
        budget: &mut usize,
        batch: &mut Vec<ScheduledSeq>,
    ) {
        while let Some(head) = self.waiting.front() {
            let admissible = *budget > 0
                && (!overdue_only || self.is_overdue(head, now))
                && self.running.len() < self.config.max_num_seqs
                && self.block_manager.can_allocate(head.num_max_total_tokens());
            if !admissible {
                return;
            }
            let Some(mut seq) = self.waiting.pop_front() else { return };
            let Some(blocks) = self.block_manager.allocate(seq.num_max_total_tokens()) else {
                // Unreachable after `can_allocate`; put it back rather than lose it.
                self.waiting.push_front(seq);
                return;
            };
            seq.block_table = blocks;
            batch.extend(self.take_chunk(&seq, budget));
            self.running.push(seq);
        }
    }

    /// The next chunk of `seq` within the budget, which it debits.
    fn take_chunk(&self, seq: &Sequence, budget: &mut usize) -> Option<ScheduledSeq> {
        let num_tokens = seq.remaining_to_compute().min(self.config.max_prefill_chunk).min(*budget);
        if num_tokens == 0 {
            return None;
        }
        *budget -= num_tokens;
        let start = seq.num_computed_tokens;
        Some(ScheduledSeq {
            seq_id: seq.id,
            start,
            num_tokens,
            samples: start + num_tokens == seq.num_tokens(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_batch_tokens: usize, max_prefill_chunk: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_num_seqs: 8,
            max_batch_tokens,
            max_prefill_chunk,
            max_prefill_wait_steps: 1_000,
            max_waiting: 64,
        }
    }

    fn scheduler(config: SchedulerConfig, num_blocks: usize) -> Scheduler {
        Scheduler::new(config, num_blocks, 4)
    }

    fn seq(id: SeqId, num_prompt_tokens: usize, max_tokens: usize) -> Sequence {
        let prompt = (0..num_prompt_tokens as u32).collect();
        Sequence::new(id, prompt, max_tokens, 0)
    }

    /// What the engine loop does: schedule, run, record, sample, finish at max_tokens.
    fn step(scheduler: &mut Scheduler) -> Vec<ScheduledSeq> {
        let batch = scheduler.schedule();
        scheduler.on_step_done(&batch);
        for item in batch.iter().filter(|item| item.samples) {
            let done = scheduler
                .append_token(item.seq_id, 1)
                .map(Sequence::is_at_max_tokens)
                .expect("a sampled sequence is running");
            if done {
                scheduler.finish(item.seq_id);
            }
        }
        batch
    }

    fn find(batch: &[ScheduledSeq], seq_id: SeqId) -> Option<ScheduledSeq> {
        batch.iter().copied().find(|item| item.seq_id == seq_id)
    }

    #[test]
    fn nothing_to_do_is_an_empty_step() {
        let mut scheduler = scheduler(config(16, 8), 16);
        assert!(!scheduler.has_work());
        assert!(scheduler.schedule().is_empty());
    }

    #[test]
    fn long_prompt_is_chunked_across_steps() {
        let mut scheduler = scheduler(config(64, 4), 16);
        scheduler.add(seq(1, 10, 3)).expect("admitted");
        let chunks: Vec<_> = (0..3).map(|_| step(&mut scheduler)[0]).collect();
        let spans: Vec<_> = chunks.iter().map(|c| (c.start, c.num_tokens, c.samples)).collect();
        assert_eq!(spans, [(0, 4, false), (4, 4, false), (8, 2, true)]);
        let decode = step(&mut scheduler)[0];
        assert_eq!((decode.start, decode.num_tokens, decode.samples), (10, 1, true));
    }

    #[test]
    fn budget_is_never_exceeded() {
        let mut scheduler = scheduler(config(10, 6), 64);
        for id in 0..12 {
            scheduler.add(seq(id, 3 + (id as usize * 5) % 17, 1 + id as usize % 4)).expect("fits");
        }
        let mut num_steps = 0;
        while scheduler.has_work() {
            let batch = step(&mut scheduler);
            assert!(batch.iter().map(|item| item.num_tokens).sum::<usize>() <= 10);
            assert!(batch.iter().all(|item| item.num_tokens <= 6));
            assert!(scheduler.num_running() <= 8);
            num_steps += 1;
            assert!(num_steps < 200, "the workload must drain");
        }
        assert_eq!(scheduler.block_manager().num_free_blocks(), 64);
    }

    #[test]
    fn decodes_come_before_prefill_chunks() {
        let mut scheduler = scheduler(config(4, 8), 16);
        scheduler.add(seq(1, 2, 8)).expect("admitted");
        step(&mut scheduler);
        scheduler.add(seq(2, 12, 1)).expect("admitted");
        let batch = step(&mut scheduler);
        assert_eq!(batch[0], ScheduledSeq { seq_id: 1, start: 2, num_tokens: 1, samples: true });
        assert_eq!(find(&batch, 2).map(|item| item.num_tokens), Some(3), "the rest of the budget");
    }

    #[test]
    fn decodes_take_turns_when_they_outnumber_the_budget() {
        // No waiting allowed, so the third sequence gets in although decodes fill the budget.
        let config = SchedulerConfig { max_prefill_wait_steps: 0, ..config(2, 8) };
        let mut scheduler = scheduler(config, 32);
        for id in 0..3 {
            scheduler.add(seq(id, 1, 20)).expect("admitted");
        }
        for _ in 0..2 {
            step(&mut scheduler);
        }
        assert!((0..3).all(|id| scheduler.get(id).is_some_and(|seq| seq.num_generated() > 0)));
        let mut num_decodes = [0; 3];
        for _ in 0..6 {
            for item in step(&mut scheduler) {
                num_decodes[item.seq_id as usize] += 1;
            }
        }
        assert_eq!(num_decodes, [4, 4, 4]);
    }

    /// Four decoders that fill the budget every step, plus a newcomer.
    fn busy_scheduler(max_prefill_wait_steps: u64) -> Scheduler {
        let config = SchedulerConfig { max_prefill_wait_steps, ..config(4, 4) };
        let mut scheduler = scheduler(config, 64);
        for id in 0..4 {
            scheduler.add(seq(id, 1, 40)).expect("admitted");
        }
        step(&mut scheduler);
        scheduler.add(seq(99, 6, 2)).expect("admitted");
        scheduler
    }

    fn steps_until_first_chunk(scheduler: &mut Scheduler, max_steps: usize) -> Option<usize> {
        (1..=max_steps).find(|_| find(&step(scheduler), 99).is_some())
    }

    #[test]
    fn without_the_fairness_bound_decodes_starve_a_newcomer() {
        let mut scheduler = busy_scheduler(1_000);
        assert_eq!(steps_until_first_chunk(&mut scheduler, 20), None);
    }

    #[test]
    fn waiting_request_starts_within_the_fairness_bound() {
        for max_prefill_wait_steps in [0, 1, 3, 7] {
            let mut scheduler = busy_scheduler(max_prefill_wait_steps);
            let waited = steps_until_first_chunk(&mut scheduler, 20).expect("starts");
            assert!(waited as u64 <= max_prefill_wait_steps + 1, "waited {waited} steps");
            // Once overdue, its prompt keeps priority until the prefill is complete.
            let rest = step(&mut scheduler);
            assert_eq!(
                find(&rest, 99).map(|item| (item.num_tokens, item.samples)),
                Some((2, true))
            );
        }
    }

    #[test]
    fn admission_waits_for_free_blocks() {
        // 4 blocks of 4 tokens. The first sequence reserves 3 (4 + 8 tokens); the second needs 2.
        let mut scheduler = scheduler(config(16, 16), 4);
        scheduler.add(seq(1, 4, 8)).expect("admitted");
        scheduler.add(seq(2, 4, 4)).expect("admitted");
        let batch = step(&mut scheduler);
        assert!(find(&batch, 2).is_none());
        assert_eq!((scheduler.num_running(), scheduler.num_waiting()), (1, 1));
        assert_eq!(scheduler.block_manager().num_free_blocks(), 1);

        step(&mut scheduler);
        assert_eq!(scheduler.num_waiting(), 1, "still short of blocks");
        scheduler.finish(1).expect("running");
        let batch = step(&mut scheduler);
        assert_eq!(find(&batch, 2).map(|item| item.num_tokens), Some(4));
    }

    #[test]
    fn admission_respects_max_num_seqs() {
        let config = SchedulerConfig { max_num_seqs: 2, ..config(64, 64) };
        let mut scheduler = scheduler(config, 64);
        for id in 0..3 {
            scheduler.add(seq(id, 2, 4)).expect("admitted");
        }
        step(&mut scheduler);
        assert_eq!((scheduler.num_running(), scheduler.num_waiting()), (2, 1));
    }

    #[test]
    fn full_queue_and_oversized_requests_are_refused() {
        let config = SchedulerConfig { max_waiting: 2, ..config(16, 16) };
        let mut scheduler = scheduler(config, 4);
        // 4 blocks of 4 tokens hold 16 tokens; 10 + 7 need 5 blocks.
        assert_eq!(
            scheduler.add(seq(1, 10, 7)),
            Err(AdmitError::TooLarge { needed_blocks: 5, total_blocks: 4 })
        );
        scheduler.add(seq(2, 1, 1)).expect("admitted");
        scheduler.add(seq(3, 1, 1)).expect("admitted");
        assert_eq!(scheduler.add(seq(4, 1, 1)), Err(AdmitError::QueueFull { num_waiting: 2 }));
        assert_eq!(scheduler.add(seq(5, 0, 1)), Err(AdmitError::EmptyPrompt));
        assert_eq!(scheduler.add(seq(6, 1, 0)), Err(AdmitError::ZeroMaxTokens));
    }

    #[test]
    fn cancelling_frees_blocks_at_once() {
        let mut scheduler = scheduler(config(4, 4), 8);
        scheduler.add(seq(1, 8, 8)).expect("admitted");
        scheduler.add(seq(2, 8, 8)).expect("admitted");
        scheduler.add(seq(3, 8, 8)).expect("admitted");
        step(&mut scheduler);
        assert_eq!(scheduler.block_manager().num_free_blocks(), 4);

        let cancelled = scheduler.finish(1).expect("running");
        assert!(cancelled.block_table.is_empty());
        assert_eq!(scheduler.block_manager().num_free_blocks(), 8);
        assert!(scheduler.get(1).is_none());

        assert!(scheduler.get(3).is_some());
        scheduler.finish(3).expect("waiting");
        assert!(scheduler.get(3).is_none());
        assert_eq!(scheduler.block_manager().num_free_blocks(), 8, "waiting sequences hold none");
        assert!(scheduler.finish(3).is_none());
    }

    #[test]
    fn step_results_for_cancelled_sequences_are_ignored() {
        let mut scheduler = scheduler(config(8, 8), 8);
        scheduler.add(seq(1, 4, 4)).expect("admitted");
        let batch = scheduler.schedule();
        scheduler.finish(1);
        scheduler.on_step_done(&batch);
        assert!(scheduler.append_token(1, 5).is_none());
        assert!(!scheduler.has_work());
    }

    #[test]
    fn append_stops_at_max_tokens() {
        let mut scheduler = scheduler(config(8, 8), 8);
        scheduler.add(seq(1, 2, 1)).expect("admitted");
        let batch = scheduler.schedule();
        scheduler.on_step_done(&batch);
        assert_eq!(scheduler.append_token(1, 7).map(Sequence::num_generated), Some(1));
        assert!(scheduler.append_token(1, 8).is_none(), "the reserved blocks are full");
    }

    #[test]
    fn zero_limits_are_rejected() {
        assert_eq!(SchedulerConfig::default().validate(), Ok(()));
        let config = SchedulerConfig { max_prefill_chunk: 0, ..SchedulerConfig::default() };
        assert_eq!(config.validate(), Err(ConfigError::Zero { field: "max_prefill_chunk" }));
    }
}
