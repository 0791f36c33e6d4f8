//! KV-cache block accounting and prefix caching: which fixed-size blocks of the cache belong to
//! whom, and which blocks hold KV that a later sequence can reuse.
//!
//! This module only counts and hands out block ids; the tensors live in the KV cache, which maps a
//! block id to its slots. Blocks are handed out as a sequence's tokens are scheduled
//! ([`can_append`](BlockManager::can_append) / [`may_append`](BlockManager::may_append)), not for
//! its whole budget up front.
//!
//! Prefix caching, as in nano-vllm and vLLM: once every token of a full block has been computed,
//! the block is published under a hash chained from the previous block's hash and its own token
//! ids. A later sequence whose leading blocks hash the same attaches those blocks instead of
//! computing them (reference counts let running sequences share them). A hash match alone is not
//! trusted: a hit must also hold the same token ids, and must have been computed after the very
//! block matched just before it (each publication gets a serial number that is never reused), so
//! even a hash collision anywhere in the chain cannot attach KV computed for other tokens.
//! A freed block keeps its publication and stays attachable until it is evicted; free blocks are
//! evicted least recently freed first. Past the last whole block, a sequence may still take the
//! leading tokens of one more block by copy (`partial`).

mod free_queue;
mod partial;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use ahash::RandomState;

use self::free_queue::FreeQueue;
use self::partial::{DonorIndex, DonorKey, PartialHit};
use crate::generation::sequence::Sequence;

pub use crate::generation::kv_cache::{BlockCopy, BlockHash, BlockId};

/// A bookkeeping error of the block manager: a bug, reported instead of corrupting the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("sequence {seq} released block {block}, which was already free")]
    DoubleFree { block: BlockId, seq: u64 },
}

/// Fixed keys: hashes are compared within one process only, but they must not change while it
/// runs, which a randomly keyed hasher would not promise across hasher instances.
static BLOCK_HASHER: RandomState = RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// What a sequence's first block has for a parent serial: none, or for a salted sequence (one
/// under a LoRA adapter) a value of the salt's own. Publication serials count up from zero, so
/// values from the top of the range never meet one: a partial first block is shared only
/// between sequences of the same salt, as whole blocks are (their hashes chain from the salt).
fn root_serial(seq: &Sequence) -> Option<u64> {
    seq.cache_salt.map(|salt| u64::MAX - salt)
}

/// The hash of a full block holding `token_ids`, after a block hashed `parent` (`None` for a
/// sequence's first block).
pub fn hash_block(parent: Option<BlockHash>, token_ids: &[u32]) -> BlockHash {
    BLOCK_HASHER.hash_one((parent, token_ids))
}

/// Prefix-cache lookups since the engine started, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of every sequence admitted while prefix caching is on.
    pub num_queried_tokens: u64,
    /// Of those, tokens whose KV was attached from the cache instead of computed.
    pub num_hit_tokens: u64,
}

/// How one block was published to the prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Publication {
    hash: BlockHash,
    /// Unique over the engine's life, unlike block ids, so that a child can name its parent.
    serial: u64,
    /// The publication of the block this one's KV was computed after.
    parent_serial: Option<u64>,
}

#[derive(Debug, Default)]
struct Block {
    /// Number of sequences holding the block; 0 means it is in the free queue.
    ref_count: u32,
    /// Set while the block is in the prefix cache's index.
    publication: Option<Publication>,
    /// Set while the block is listed as a donor of leading tokens: every published block, and
    /// the partly filled last block of a freed sequence.
    donor_key: Option<DonorKey>,
    /// The tokens a published or listed block holds, to confirm a hit. Kept (and its capacity
    /// reused) across publications.
    token_ids: Vec<u32>,
}

impl Block {
    /// Whether the block's KV can still be found by a later sequence, so that it should be
    /// evicted late.
    fn is_listed(&self) -> bool {
        self.publication.is_some() || self.donor_key.is_some()
    }
}

/// Leading blocks of a sequence found in the prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PrefixMatch {
    num_blocks: usize,
    /// Of those, blocks no sequence holds: attaching them takes them off the free queue.
    num_free_blocks: usize,
    /// Leading tokens of the block after them, taken from a donor by copy.
    partial: Option<PartialHit>,
}

/// Hands out KV-cache blocks, takes them back, and indexes full blocks for reuse.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Every block whose `ref_count` is 0, published or not; front = evicted first.
    free_queue: FreeQueue,
    /// Published blocks by hash; each entry's block has the matching `publication`.
    /// Keyed by hashes ahash already computed; ahash again (not SipHash) for the map itself.
    cached_blocks: HashMap<BlockHash, BlockId, RandomState>,
    /// Blocks whose leading tokens a sequence may copy, by what they were computed after.
    donors: DonorIndex,
    /// Copies that admissions since the last step asked for; the runner applies them before
    /// the step's forward pass.
    pending_copies: Vec<BlockCopy>,
    prefix_caching: bool,
    next_serial: u64,
    stats: PrefixCacheStats,
}

impl BlockManager {
    /// A manager of `num_blocks` blocks of `block_size` tokens each.
    ///
    /// # Panics
    /// When `block_size` is 0 or `num_blocks` does not fit a [`BlockId`]; both are configuration
    /// bugs caught at startup.
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be at least 1");
        assert!(BlockId::try_from(num_blocks).is_ok(), "num_blocks must fit in a BlockId");
        Self {
            block_size,
            blocks: (0..num_blocks).map(|_| Block::default()).collect(),
            free_queue: FreeQueue::new(num_blocks),
            cached_blocks: HashMap::default(),
            donors: DonorIndex::default(),
            pending_copies: Vec::new(),
            prefix_caching,
            next_serial: 0,
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    pub fn num_total_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks no sequence holds, including published ones that a hit could still attach.
    pub fn num_free_blocks(&self) -> usize {
        self.free_queue.len()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.num_total_blocks() - self.num_free_blocks()
    }

    /// Blocks in the prefix cache's index, held or free.
    pub fn num_cached_blocks(&self) -> usize {
        self.cached_blocks.len()
    }

    /// Blocks needed to hold `num_tokens` tokens (rounded up).
    pub fn num_blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Extends `seq.block_hashes` over its full blocks not hashed yet. Call after tokens are
    /// added; a no-op when prefix caching is off.
    pub fn hash_full_blocks(&self, seq: &mut Sequence) {
        if !self.prefix_caching {
            return;
        }
        let num_full_blocks = seq.num_tokens() / self.block_size;
        for index in seq.block_hashes.len()..num_full_blocks {
            // The first block chains from the salt, so every hash after it differs by adapter.
            let parent = index.checked_sub(1).map(|p| seq.block_hashes[p]).or(seq.cache_salt);
            let start = index * self.block_size;
            let hash = hash_block(parent, &seq.token_ids[start..start + self.block_size]);
            seq.block_hashes.push(hash);
        }
    }

    /// Whether `seq`, holding no blocks, can be admitted with blocks for all its tokens (less
    /// its cached prefix) and still leave `num_spare_blocks` free for running sequences to grow.
    pub fn can_allocate(&self, seq: &Sequence, num_spare_blocks: usize) -> bool {
        let found = self.match_prefix(seq);
        let num_new_blocks = self.num_blocks_for(seq.num_tokens()) - found.num_blocks;
        num_new_blocks + found.num_free_blocks + num_spare_blocks <= self.num_free_blocks()
    }

    /// Admits `seq`, which holds no blocks: attaches its longest cached prefix and marks those
    /// tokens computed. Returns the number of tokens attached. Blocks for the tokens it still
    /// has to compute come from [`may_append`](Self::may_append) as they are scheduled. A
    /// partial hit takes its block at once and queues the copy that fills it
    /// ([`pending_copies`](Self::pending_copies)).
    pub fn allocate(&mut self, seq: &mut Sequence) -> usize {
        debug_assert!(seq.block_table.is_empty(), "sequence {} allocated twice", seq.id);
        let found = self.match_prefix(seq);
        for &hash in &seq.block_hashes[..found.num_blocks] {
            let id = self.cached_blocks[&hash];
            self.hold(id);
            seq.block_table.push(id);
        }
        let mut num_hit_tokens = found.num_blocks * self.block_size;
        if let Some(hit) = found.partial {
            self.attach_partial(seq, hit);
            num_hit_tokens += hit.num_tokens;
        }
        seq.num_computed_tokens = num_hit_tokens;
        seq.num_cached_blocks = found.num_blocks;
        if self.prefix_caching {
            self.stats.num_queried_tokens += seq.num_tokens() as u64;
            self.stats.num_hit_tokens += num_hit_tokens as u64;
        }
        num_hit_tokens
    }

    /// Block copies that admissions asked for since [`clear_pending_copies`](Self::clear_pending_copies),
    /// in order. They must be applied to the KV cache before the next forward pass.
    pub fn pending_copies(&self) -> &[BlockCopy] {
        &self.pending_copies
    }

    /// Forgets the pending copies: they were applied, or the step that needed them is over.
    pub fn clear_pending_copies(&mut self) {
        self.pending_copies.clear();
    }

    /// Whether `seq` can get the blocks to compute its next `num_new_tokens` tokens.
    pub fn can_append(&self, seq: &Sequence, num_new_tokens: usize) -> bool {
        self.num_blocks_to_append(seq, num_new_tokens) <= self.num_free_blocks()
    }

    /// Grows `seq.block_table` to hold its next `num_new_tokens` tokens, evicting the least
    /// recently freed blocks. Returns false, taking nothing, when too few blocks are free.
    pub fn may_append(&mut self, seq: &mut Sequence, num_new_tokens: usize) -> bool {
        if !self.can_append(seq, num_new_tokens) {
            return false;
        }
        for _ in 0..self.num_blocks_to_append(seq, num_new_tokens) {
            let id = self.take_free_block();
            seq.block_table.push(id);
        }
        true
    }

    /// Publishes the full blocks of `seq` whose tokens have all been computed. Call after a
    /// step; a no-op when prefix caching is off.
    pub fn cache_full_blocks(&mut self, seq: &mut Sequence) {
        if !self.prefix_caching {
            return;
        }
        let num_full_computed = (seq.num_computed_tokens / self.block_size)
            .min(seq.block_hashes.len())
            .min(seq.block_table.len());
        while seq.num_cached_blocks < num_full_computed {
            let index = seq.num_cached_blocks;
            if !self.publish(seq, index) {
                // Its hash is taken by other content; blocks after it cannot chain from it.
                return;
            }
            seq.num_cached_blocks += 1;
        }
    }

    /// Gives back every block of `seq`, which then holds no KV. Published blocks stay in the
    /// cache, a sequence's later blocks queued to be evicted before its earlier ones (which
    /// other prompts are likelier to share), and so does a partly computed last block, as a
    /// donor; other unpublished blocks are reused first.
    ///
    /// A block that is already free means a bookkeeping bug: nothing is changed (a second
    /// release would queue the block twice and hand it to two sequences), the sequence's table
    /// is emptied, and the error says which block.
    pub fn free(&mut self, seq: &mut Sequence) -> Result<(), BlockError> {
        if let Some(&id) =
            seq.block_table.iter().find(|&&id| self.blocks[id as usize].ref_count == 0)
        {
            seq.block_table.clear();
            return Err(BlockError::DoubleFree { block: id, seq: seq.id });
        }
        self.list_tail(seq);
        // A copy into a block given back now would land in a block that is no longer its.
        self.pending_copies.retain(|copy| !seq.block_table.contains(&copy.dst));
        for id in seq.block_table.drain(..).rev() {
            let block = &mut self.blocks[id as usize];
            block.ref_count -= 1;
            if block.ref_count == 0 {
                if block.is_listed() {
                    self.free_queue.push_back(id);
                } else {
                    self.free_queue.push_front(id);
                }
            }
        }
        seq.num_computed_tokens = 0;
        seq.num_cached_blocks = 0;
        Ok(())
    }

    fn num_blocks_to_append(&self, seq: &Sequence, num_new_tokens: usize) -> usize {
        let num_tokens = seq.num_computed_tokens + num_new_tokens;
        self.num_blocks_for(num_tokens).saturating_sub(seq.block_table.len())
    }

    /// The longest run of leading blocks of `seq` found in the cache, then the most leading
    /// tokens of the next block a donor holds, stopping short of its last token: that one is
    /// always computed, so there are logits to sample from.
    fn match_prefix(&self, seq: &Sequence) -> PrefixMatch {
        if !self.prefix_caching {
            return PrefixMatch::default();
        }
        let max_blocks = seq.num_tokens().saturating_sub(1) / self.block_size;
        let mut found = PrefixMatch::default();
        let mut parent_serial = root_serial(seq);
        for (index, &hash) in seq.block_hashes.iter().take(max_blocks).enumerate() {
            let start = index * self.block_size;
            let tokens = &seq.token_ids[start..start + self.block_size];
            let Some(id) = self.lookup(hash, parent_serial, tokens) else { break };
            let block = &self.blocks[id as usize];
            found.num_blocks += 1;
            found.num_free_blocks += usize::from(block.ref_count == 0);
            parent_serial = block.publication.map(|p| p.serial);
        }
        found.partial = self.match_partial(seq, found.num_blocks * self.block_size, parent_serial);
        found
    }

    /// The published block for `hash`, if it holds `tokens` and was computed after the block
    /// published as `parent_serial`.
    fn lookup(
        &self,
        hash: BlockHash,
        parent_serial: Option<u64>,
        tokens: &[u32],
    ) -> Option<BlockId> {
        let &id = self.cached_blocks.get(&hash)?;
        let block = &self.blocks[id as usize];
        let publication = block.publication?;
        let confirmed = publication.parent_serial == parent_serial && block.token_ids == tokens;
        confirmed.then_some(id)
    }

    /// Publishes block `index` of `seq` (all earlier blocks are published). When an equal block
    /// is already published (two sequences computed the same prefix at once), `seq` switches to
    /// it and its own copy is freed, so the chain goes on through the published one. Returns
    /// false when the hash is taken by different content, or the block before is not published
    /// (then nothing names what this one's KV was computed after).
    fn publish(&mut self, seq: &mut Sequence, index: usize) -> bool {
        let id = seq.block_table[index];
        let hash = seq.block_hashes[index];
        let Some(parent_serial) = self.parent_serial(seq, index) else { return false };
        let start = index * self.block_size;
        let tokens = &seq.token_ids[start..start + self.block_size];
        if self.cached_blocks.contains_key(&hash) {
            let Some(existing) = self.lookup(hash, parent_serial, tokens) else { return false };
            self.hold(existing);
            seq.block_table[index] = existing;
            self.release_unpublished(id);
            return true;
        }
        self.cached_blocks.insert(hash, id);
        let serial = self.next_serial;
        self.next_serial += 1;
        let block = &mut self.blocks[id as usize];
        block.publication = Some(Publication { hash, serial, parent_serial });
        block.token_ids.clear();
        block.token_ids.extend_from_slice(tokens);
        self.list_donor(id, parent_serial);
        true
    }

    /// What block `index` of `seq` was computed after: `Some(None)` for the first block,
    /// `Some(Some(serial))` after a published block, `None` after an unpublished one.
    fn parent_serial(&self, seq: &Sequence, index: usize) -> Option<Option<u64>> {
        match index.checked_sub(1) {
            None => Some(root_serial(seq)),
            Some(parent) => {
                let publication = self.blocks[seq.block_table[parent] as usize].publication?;
                Some(Some(publication.serial))
            }
        }
    }

    /// Takes one more reference to `id`, taking it off the free queue if nobody held it.
    fn hold(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        if block.ref_count == 0 {
            self.free_queue.remove(id);
        }
        block.ref_count += 1;
    }

    /// Drops the one reference to an unpublished block; it is reused before any cached block.
    fn release_unpublished(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        debug_assert!(block.ref_count == 1 && block.publication.is_none());
        block.ref_count -= 1;
        if block.ref_count == 0 {
            self.free_queue.push_front(id);
        }
    }

    /// Pops the least recently freed block, evicting its publication, and holds it.
    ///
    /// # Panics
    /// When no block is free; callers check with [`can_append`](Self::can_append).
    fn take_free_block(&mut self) -> BlockId {
        let id = self.free_queue.pop_front().expect("a free block (checked by the caller)");
        let block = &mut self.blocks[id as usize];
        debug_assert_eq!(block.ref_count, 0, "block {id} was in the free queue while held");
        if let Some(publication) = block.publication.take() {
            self.cached_blocks.remove(&publication.hash);
        }
        if let Some(key) = block.donor_key.take() {
            self.donors.remove(key, id);
        }
        block.ref_count = 1;
        id
    }
}
