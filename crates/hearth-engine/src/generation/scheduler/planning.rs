//! Planning one step: which sequences get how many tokens, the blocks they need, and who is
//! preempted when blocks run out.

use super::{ScheduledSeq, Scheduler};
use crate::generation::sequence::Sequence;

/// One step being planned.
struct Plan<'a> {
    /// The step's number, for the fairness bound.
    now: u64,
    /// Tokens still free in this step.
    budget: usize,
    /// Prompt tokens still free in this step: `max_prefill_tokens_while_decoding` when running
    /// sequences decode, the whole budget when none does.
    prefill_budget: usize,
    batch: &'a mut Vec<ScheduledSeq>,
    /// Leading entries of `running` that were running when the step began (and still are).
    /// Sequences admitted during the step sit after them and got their chunk at admission;
    /// preemption takes from the end, so it shrinks this only once those are gone.
    num_continuing: usize,
}

impl Plan<'_> {
    fn push(&mut self, seq: &Sequence, num_tokens: usize) {
        debug_assert!(num_tokens > 0 && num_tokens <= self.budget);
        self.budget -= num_tokens;
        if seq.is_prefilling() {
            self.prefill_budget = self.prefill_budget.saturating_sub(num_tokens);
        }
        let start = seq.num_computed_tokens;
        self.batch.push(ScheduledSeq {
            seq_id: seq.id,
            start,
            num_tokens,
            samples: start + num_tokens == seq.num_tokens(),
        });
    }

    /// Takes a preempted sequence's chunk back out of the step, returning its tokens to the
    /// budget.
    fn unschedule(&mut self, seq: &Sequence) {
        if let Some(position) = self.batch.iter().position(|item| item.seq_id == seq.id) {
            let num_tokens = self.batch.remove(position).num_tokens;
            self.budget += num_tokens;
            if seq.is_prefilling() {
                self.prefill_budget += num_tokens;
            }
        }
    }
}

impl Scheduler {
    /// [`schedule`](Self::schedule) into a caller-owned buffer, so the engine loop can reuse one.
    ///
    /// Order: (1) overdue prompts, (2) decodes, (3) other running prompts, (4) new admissions.
    /// A prompt is overdue once `max_prefill_wait_steps` steps have passed since it arrived and its
    /// prefill is not complete; it is served before decodes, so a request at the head of the queue
    /// gets its first chunk within `max_prefill_wait_steps + 1` steps however busy decoding is.
    /// The budget cannot help when KV blocks or `max_num_seqs` slots are short: then the head
    /// waits for a running sequence to finish, and memory, not the budget, bounds the wait.
    /// A preempted sequence keeps its arrival step, so it is overdue at once and its recompute
    /// goes first when memory lets it back in.
    pub fn schedule_into(&mut self, batch: &mut Vec<ScheduledSeq>) {
        batch.clear();
        // Copies not applied by now belong to a step that failed; its sequences have ended.
        self.block_manager.clear_pending_copies();
        let decoding =
            self.running.iter().any(|seq| !seq.is_prefilling() && seq.remaining_to_compute() > 0);
        let mut plan = Plan {
            now: self.num_steps,
            budget: self.config.max_batch_tokens,
            prefill_budget: match decoding {
                true => self.config.max_prefill_tokens_while_decoding,
                false => self.config.max_batch_tokens,
            },
            batch,
            num_continuing: self.running.len(),
        };
        self.num_steps += 1;

        self.schedule_running_prefills(true, &mut plan);
        self.admit_waiting(true, &mut plan);
        self.schedule_decodes(&mut plan);
        self.schedule_running_prefills(false, &mut plan);
        self.admit_waiting(false, &mut plan);
        debug_assert!(
            plan.batch.iter().map(|s| s.num_tokens).sum::<usize>() <= self.config.max_batch_tokens
        );
    }

    fn is_overdue(&self, seq: &Sequence, now: u64) -> bool {
        now.saturating_sub(seq.arrival_step) >= self.config.max_prefill_wait_steps
    }

    /// Next prefill chunks of running sequences whose overdue-ness matches `overdue`.
    fn schedule_running_prefills(&mut self, overdue: bool, plan: &mut Plan) {
        let mut index = 0;
        // Re-read the bound each time: a chunk may preempt sequences from the end.
        while index < plan.num_continuing && plan.budget > 0 {
            let seq = &self.running[index];
            if seq.is_prefilling() && self.is_overdue(seq, plan.now) == overdue {
                self.schedule_chunk(index, plan);
            }
            index += 1;
        }
    }

    /// One token for every decoding sequence while the budget lasts, starting at the cursor.
    fn schedule_decodes(&mut self, plan: &mut Plan) {
        let num_candidates = plan.num_continuing;
        let start = self.decode_cursor % num_candidates.max(1);
        for offset in 0..num_candidates {
            let index = (start + offset) % num_candidates;
            // Preempted during this pass; the indices before it still name the same sequences.
            if index >= plan.num_continuing {
                continue;
            }
            let seq = &self.running[index];
            // Sequences waiting for their sampled token have nothing to compute.
            if seq.is_prefilling() || seq.remaining_to_compute() == 0 {
                continue;
            }
            if plan.budget == 0 {
                self.decode_cursor = index;
                return;
            }
            self.schedule_chunk(index, plan);
        }
    }

    /// Moves waiting sequences to running, first in first out, while slots, blocks and budget
    /// allow, attaching each one's cached prefix. With `overdue_only`, stops at the first one
    /// that is not overdue.
    fn admit_waiting(&mut self, overdue_only: bool, plan: &mut Plan) {
        while let Some(head) = self.waiting.front() {
            let num_spare_blocks =
                if self.running.is_empty() { 0 } else { self.num_watermark_blocks };
            let admissible = plan.budget > 0
                && plan.prefill_budget > 0
                && (!overdue_only || self.is_overdue(head, plan.now))
                && self.running.len() < self.config.max_num_seqs
                && self.block_manager.can_allocate(head, num_spare_blocks);
            if !admissible {
                return;
            }
            let Some(mut seq) = self.waiting.pop_front() else { return };
            let num_hit_tokens = self.block_manager.allocate(&mut seq);
            if seq.num_preemptions == 0 {
                seq.num_cached_prompt_tokens = num_hit_tokens;
            }
            self.running.push(seq);
            // `can_allocate` counted blocks for every token, so this chunk gets its blocks; if
            // it did not, the sequence is back at the head and would only be refused again.
            let scheduled = self.schedule_chunk(self.running.len() - 1, plan);
            debug_assert!(scheduled, "an admitted sequence could not get its first chunk");
            if !scheduled {
                return;
            }
        }
    }

    /// Schedules the next chunk of `running[index]` and takes the blocks it needs. When blocks
    /// are short, preempts running sequences from the most recently admitted, stopping once the
    /// chunk fits or after preempting this sequence itself. Returns whether it was scheduled.
    fn schedule_chunk(&mut self, index: usize, plan: &mut Plan) -> bool {
        let seq = &self.running[index];
        let budget =
            if seq.is_prefilling() { plan.budget.min(plan.prefill_budget) } else { plan.budget };
        let num_tokens = self.chunk_len(seq, budget);
        if num_tokens == 0 {
            return false;
        }
        loop {
            let seq = &mut self.running[index];
            if self.block_manager.may_append(seq, num_tokens) {
                plan.push(seq, num_tokens);
                return true;
            }
            let victim = self.running.len() - 1;
            self.preempt_last(plan);
            if victim == index {
                return false;
            }
        }
    }

    /// Tokens of `seq`'s next chunk within `budget`.
    fn chunk_len(&self, seq: &Sequence, budget: usize) -> usize {
        seq.remaining_to_compute().min(self.config.max_prefill_chunk).min(budget)
    }

    /// Preempts the most recently admitted running sequence by recompute: its blocks are freed
    /// (published ones stay in the prefix cache, so its recompute may hit them) and it goes
    /// back to the front of the waiting queue with its prompt and generated tokens.
    fn preempt_last(&mut self, plan: &mut Plan) {
        let Some(mut seq) = self.running.pop() else { return };
        plan.unschedule(&seq);
        plan.num_continuing = plan.num_continuing.min(self.running.len());
        if let Err(err) = self.block_manager.free(&mut seq) {
            tracing::error!(error = %err, "KV block bookkeeping error while preempting");
        }
        seq.num_preemptions += 1;
        self.stats.num_preemptions += 1;
        tracing::debug!(
            seq = seq.id,
            num_tokens = seq.num_tokens(),
            "KV blocks ran out; preempted, will recompute"
        );
        self.waiting.push_front(seq);
    }
}
