//! One generation request as the scheduler sees it: its tokens, how many of them are already in
//! the KV cache, and the blocks that hold them. No tensors, no sampling state.

use crate::block_manager::BlockId;

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
    /// The KV blocks of this sequence, in token order; empty until it is admitted to run.
    pub block_table: Vec<BlockId>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// The scheduler step at which the sequence was queued; the fairness bound counts from here.
    pub arrival_step: u64,
}

impl Sequence {
    /// A sequence that has computed nothing yet. [`Scheduler::add`](crate::scheduler::Scheduler::add)
    /// restamps `arrival_step` with its own step count.
    pub fn new(id: SeqId, prompt_ids: Vec<u32>, max_tokens: usize, arrival_step: u64) -> Self {
        Self {
            id,
            num_prompt_tokens: prompt_ids.len(),
            token_ids: prompt_ids,
            num_computed_tokens: 0,
            block_table: Vec::new(),
            max_tokens,
            arrival_step,
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

    /// True while part of the prompt still has to go through the model.
    pub fn is_prefilling(&self) -> bool {
        self.num_computed_tokens < self.num_prompt_tokens
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
        assert_eq!(seq.num_generated(), 1);
        assert_eq!(seq.remaining_to_compute(), 1);
        assert_eq!(seq.prompt_ids(), &[1, 2, 3]);
        assert_eq!(seq.generated_ids(), &[9]);
        assert_eq!(seq.last_token(), Some(9));
        assert!(!seq.is_at_max_tokens());
        seq.token_ids.push(10);
        assert!(seq.is_at_max_tokens());
    }
}
