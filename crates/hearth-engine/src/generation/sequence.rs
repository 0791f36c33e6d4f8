//! One generation request as the scheduler sees it: its tokens, how many of them are already in
//! the KV cache, and the blocks that hold them. No tensors, no sampling state.

use crate::generation::kv_cache::{BlockHash, BlockId};

/// Identifier of a sequence, unique within one engine.
pub type SeqId = u64;

/// A prompt and the tokens generated after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub id: SeqId,
    /// The prompt, then every generated token.
    pub token_ids: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Leading tokens whose KV is already in the cache.
    pub num_computed_tokens: usize,
    /// The KV blocks of this sequence, in token order; empty while it waits.
    pub block_table: Vec<BlockId>,
    /// Content hash of each full block of `token_ids`, chained from the first block (see
    /// [`BlockManager`](crate::generation::block_manager::BlockManager)). Depends on the tokens only, so it
    /// survives preemption. Empty when prefix caching is off.
    pub block_hashes: Vec<BlockHash>,
    /// Leading entries of `block_table` that are in the prefix cache: attached on a hit, or
    /// published once their tokens were computed.
    pub num_cached_blocks: usize,
    /// Prompt tokens taken from the prefix cache when the sequence was first admitted; this is
    /// what the caller is told (`Usage::cached_tokens`). Hits on its own blocks after a
    /// preemption are not the caller's business.
    pub num_cached_prompt_tokens: usize,
    /// Times the sequence lost its KV to make room and went back to the waiting queue.
    pub num_preemptions: usize,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// The scheduler step at which the sequence was queued; the fairness bound counts from here.
    pub arrival_step: u64,
    /// Keys its prefix-cache entries apart from other sequences' with the same tokens: the id of
    /// its LoRA adapter (`None`: the base model).
    pub cache_salt: Option<u64>,
}

impl Sequence {
    /// A sequence that has computed nothing yet. [`Scheduler::add`](crate::generation::scheduler::Scheduler::add)
    /// restamps `arrival_step` with its own step count.
    pub fn new(id: SeqId, prompt_ids: Vec<u32>, max_tokens: usize, arrival_step: u64) -> Self {
        Self {
            id,
            num_prompt_tokens: prompt_ids.len(),
            token_ids: prompt_ids,
            num_computed_tokens: 0,
            block_table: Vec::new(),
            block_hashes: Vec::new(),
            num_cached_blocks: 0,
            num_cached_prompt_tokens: 0,
            num_preemptions: 0,
            max_tokens,
            arrival_step,
            cache_salt: None,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_generated(&self) -> usize {
        self.num_tokens() - self.num_prompt_tokens
    }

    /// Tokens the sequence can hold at most: the prompt and its whole generation budget.
    pub fn num_max_total_tokens(&self) -> usize {
        self.num_prompt_tokens + self.max_tokens
    }

    /// True while more than one token waits for the model: the prompt is not through yet, or,
    /// after a preemption, the prompt and the tokens generated so far are being recomputed.
    /// Otherwise the sequence is decoding (one sampled token to compute) or waiting to sample.
    pub fn is_prefilling(&self) -> bool {
        self.num_computed_tokens < self.num_prompt_tokens || self.remaining_to_compute() > 1
    }

    /// Tokens known but not yet in the KV cache: the rest of the prompt, or the last sampled token.
    pub fn remaining_to_compute(&self) -> usize {
        self.num_tokens() - self.num_computed_tokens
    }

    /// True once `max_tokens` tokens have been generated.
    pub fn is_at_max_tokens(&self) -> bool {
        self.num_generated() >= self.max_tokens
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.token_ids[..self.num_prompt_tokens]
    }

    pub fn generated_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    pub fn last_token(&self) -> Option<u32> {
        self.token_ids.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_prefill_then_decode() {
        let mut seq = Sequence::new(7, vec![1, 2, 3], 2, 0);
        assert!(seq.is_prefilling());
        assert_eq!(seq.remaining_to_compute(), 3);
        assert_eq!(seq.num_max_total_tokens(), 5);

        seq.num_computed_tokens = 3;
        assert!(!seq.is_prefilling());
        assert_eq!(seq.remaining_to_compute(), 0);

        seq.token_ids.push(9);
        assert!(!seq.is_prefilling(), "one sampled token to compute is a decode");
        assert_eq!(seq.num_generated(), 1);
        assert_eq!(seq.remaining_to_compute(), 1);
        assert_eq!(seq.prompt_ids(), &[1, 2, 3]);
        assert_eq!(seq.generated_ids(), &[9]);
        assert_eq!(seq.last_token(), Some(9));
        assert!(!seq.is_at_max_tokens());
        seq.token_ids.push(10);
        assert!(seq.is_at_max_tokens());
    }

    #[test]
    fn a_preempted_sequence_prefills_its_generated_tokens_again() {
        let mut seq = Sequence::new(7, vec![1, 2, 3], 4, 0);
        seq.token_ids.extend([9, 10]);
        seq.num_computed_tokens = 4;
        assert!(!seq.is_prefilling());
        // Preemption drops the KV; the prompt and the first generated token are computed again.
        seq.num_computed_tokens = 0;
        assert!(seq.is_prefilling());
        seq.num_computed_tokens = 3;
        assert!(seq.is_prefilling(), "two tokens still to compute");
        seq.num_computed_tokens = 4;
        assert!(!seq.is_prefilling());
    }
}
