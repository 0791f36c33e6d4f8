//! KV-cache block accounting: which fixed-size blocks of the cache belong to whom.
//!
//! This module only counts and hands out block ids; the tensors live in the KV cache, which maps a
//! block id to its slots. Every block carries a reference count and free blocks sit in a queue in
//! the order they were freed. Both exist for prefix caching, which is not implemented yet: a full
//! block will be keyed by a hash chained from the previous block's hash and its tokens, shared by
//! bumping its count, and a freed block will keep its hash while it waits in the queue, so the
//! least recently freed block is the one evicted first. Callers keep the same `allocate` / `free`
//! pair when that lands.

use std::collections::VecDeque;

/// Index of one KV-cache block.
pub type BlockId = u32;

/// Hands out KV-cache blocks and takes them back.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    /// Number of holders of each block; 0 means the block is in `free_block_ids`.
    ref_counts: Vec<u32>,
    /// Front = least recently freed, so that (with prefix caching) warm blocks are evicted last.
    free_block_ids: VecDeque<BlockId>,
}

impl BlockManager {
    /// A manager of `num_blocks` blocks of `block_size` tokens each.
    ///
    /// # Panics
    /// When `block_size` is 0 or `num_blocks` does not fit a [`BlockId`]; both are configuration
    /// bugs caught at startup.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be at least 1");
        let last_id = BlockId::try_from(num_blocks).expect("num_blocks must fit in a BlockId");
        Self { block_size, ref_counts: vec![0; num_blocks], free_block_ids: (0..last_id).collect() }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_total_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free_block_ids.len()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.num_total_blocks() - self.num_free_blocks()
    }

    /// Blocks needed to hold `num_tokens` tokens (rounded up).
    pub fn num_blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Whether [`allocate`](Self::allocate) would succeed for `num_tokens` tokens right now.
    pub fn can_allocate(&self, num_tokens: usize) -> bool {
        self.num_blocks_for(num_tokens) <= self.num_free_blocks()
    }

    /// Takes enough blocks for `num_tokens` tokens, or `None` (taking nothing) when too few are free.
    pub fn allocate(&mut self, num_tokens: usize) -> Option<Vec<BlockId>> {
        if !self.can_allocate(num_tokens) {
            return None;
        }
        let num_blocks = self.num_blocks_for(num_tokens);
        let blocks: Vec<BlockId> = self.free_block_ids.drain(..num_blocks).collect();
        for &id in &blocks {
            let count = &mut self.ref_counts[id as usize];
            debug_assert_eq!(*count, 0, "block {id} was in the free queue while held");
            *count = 1;
        }
        Some(blocks)
    }

    /// Gives blocks back; they can be allocated again at once. Taking the `Vec` by value means a
    /// caller cannot keep using a block table it has freed.
    pub fn free(&mut self, blocks: Vec<BlockId>) {
        for id in blocks {
            let count = &mut self.ref_counts[id as usize];
            debug_assert!(*count > 0, "block {id} freed twice");
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.free_block_ids.push_back(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_blocks_for_rounds_up() {
        let manager = BlockManager::new(8, 4);
        assert_eq!(manager.num_blocks_for(0), 0);
        assert_eq!(manager.num_blocks_for(1), 1);
        assert_eq!(manager.num_blocks_for(4), 1);
        assert_eq!(manager.num_blocks_for(5), 2);
        assert_eq!(manager.num_blocks_for(32), 8);
    }

    #[test]
    fn allocate_and_free_keep_counts_exact() {
        let mut manager = BlockManager::new(8, 4);
        let a = manager.allocate(9).expect("9 tokens fit");
        assert_eq!(a.len(), 3);
        assert_eq!(manager.num_used_blocks(), 3);
        assert_eq!(manager.num_free_blocks(), 5);
        let b = manager.allocate(4).expect("4 tokens fit");
        assert!(a.iter().all(|id| !b.contains(id)), "blocks are never handed out twice");
        manager.free(a);
        assert_eq!(manager.num_free_blocks(), 7);
        manager.free(b);
        assert_eq!(manager.num_free_blocks(), 8);
        assert_eq!(manager.num_total_blocks(), 8);
    }

    #[test]
    fn exhaustion_refuses_without_taking_anything() {
        let mut manager = BlockManager::new(4, 2);
        let held = manager.allocate(6).expect("3 blocks fit");
        assert!(!manager.can_allocate(3));
        assert!(manager.allocate(3).is_none());
        assert_eq!(manager.num_free_blocks(), 1, "a refused allocation takes nothing");
        assert!(manager.can_allocate(2));
        manager.free(held);
        assert!(manager.allocate(8).is_some());
        assert_eq!(manager.num_free_blocks(), 0);
    }

    #[test]
    fn freed_blocks_are_reused_least_recently_freed_first() {
        let mut manager = BlockManager::new(3, 1);
        let first = manager.allocate(3).expect("fits");
        manager.free(vec![first[2]]);
        manager.free(vec![first[0]]);
        assert_eq!(manager.allocate(1), Some(vec![first[2]]));
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    #[cfg(debug_assertions)]
    fn double_free_is_caught_in_debug_builds() {
        let mut manager = BlockManager::new(2, 1);
        let blocks = manager.allocate(1).expect("fits");
        manager.free(blocks.clone());
        manager.free(blocks);
    }
}
