//! Reuse of part of a block: the leading tokens a sequence shares with a block that holds other
//! tokens after them.
//!
//! Whole-block hits stop at the first block whose tokens differ from the sequence's. Yet the
//! commonest repeats diverge inside a block: a prompt sent again with a few words added, or an
//! agent's next turn, which re-sends the history up to and past the last token the previous turn
//! computed. Whole blocks alone recompute up to `block_size - 1` shared tokens each time.
//!
//! So blocks are also listed as *donors*, keyed by the publication their KV was computed after
//! (none for a sequence's first block) and their first token: every published block, and the
//! partly filled last block of a freed sequence (its *tail*), which is kept in the free queue
//! like a published block, to be evicted late. After the whole-block match, the donor sharing
//! the most leading tokens with the sequence gives them: the sequence takes a fresh block, and
//! a [`BlockCopy`] of those slots, applied before the step's forward pass, fills it. A donor that
//! someone holds is only read, so a running sequence's block can be one; a free donor may itself
//! be the fresh block taken, and then needs no copy. SGLang's radix cache reuses KV token by
//! token to the same end; vLLM reuses whole blocks only.

use std::collections::HashMap;

use ahash::RandomState;

use super::{BlockCopy, BlockId, BlockManager};
use crate::generation::sequence::Sequence;

/// What a donor's KV was computed after (the serial of the publication before it, `None` for a
/// sequence's first block), and its first token.
pub(super) type DonorKey = (Option<u64>, u32);

/// Most donors listed under one key. Keying on the first token keeps most lists short, but
/// every first block of a model whose prompts open with the same token shares one key; past
/// this many, the longest-listed donor leaves the list (its block stays cached, whole-block hits
/// still find it), so a lookup and an eviction cost a bounded scan.
pub(super) const MAX_DONORS_PER_KEY: usize = 32;

/// Donor blocks by key, oldest listed first.
#[derive(Debug, Default)]
pub(super) struct DonorIndex {
    by_key: HashMap<DonorKey, Vec<BlockId>, RandomState>,
}

impl DonorIndex {
    /// Lists `id`; returns the donor it pushed out of a full list.
    fn insert(&mut self, key: DonorKey, id: BlockId) -> Option<BlockId> {
        let ids = self.by_key.entry(key).or_default();
        let dropped = (ids.len() >= MAX_DONORS_PER_KEY).then(|| ids.remove(0));
        ids.push(id);
        dropped
    }

    pub(super) fn remove(&mut self, key: DonorKey, id: BlockId) {
        if let Some(ids) = self.by_key.get_mut(&key) {
            ids.retain(|&listed| listed != id);
            if ids.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }

    fn get(&self, key: &DonorKey) -> &[BlockId] {
        self.by_key.get(key).map_or(&[], Vec::as_slice)
    }

    #[cfg(test)]
    pub(super) fn all(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.by_key.values().flatten().copied()
    }
}

/// The leading tokens of one block that a sequence takes from a donor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartialHit {
    pub donor: BlockId,
    pub num_tokens: usize,
}

/// The partly computed last block of a sequence being freed.
struct Tail {
    id: BlockId,
    parent_serial: Option<u64>,
    /// Its computed tokens, as a range of the sequence's tokens.
    tokens: std::ops::Range<usize>,
}

impl BlockManager {
    /// The donor that shares the most leading tokens with `seq` from `start` (the block boundary
    /// where the whole-block match stopped, after the publication `parent_serial`), leaving the
    /// sequence's last token to compute.
    pub(super) fn match_partial(
        &self,
        seq: &Sequence,
        start: usize,
        parent_serial: Option<u64>,
    ) -> Option<PartialHit> {
        let max_tokens = seq.num_tokens().saturating_sub(start + 1).min(self.block_size);
        let wanted = seq.token_ids.get(start..start + max_tokens).filter(|t| !t.is_empty())?;
        self.donors
            .get(&(parent_serial, wanted[0]))
            .iter()
            .map(|&donor| PartialHit {
                donor,
                num_tokens: common_prefix_len(&self.blocks[donor as usize].token_ids, wanted),
            })
            .max_by_key(|hit| hit.num_tokens)
    }

    /// Takes a fresh block for `seq`'s next tokens and queues the copy of the donor's leading
    /// tokens into it. The fresh block may be the donor itself, when it was the next free block
    /// to go: its slots then already hold those tokens.
    pub(super) fn attach_partial(&mut self, seq: &mut Sequence, hit: PartialHit) {
        let dst = self.take_free_block();
        seq.block_table.push(dst);
        if dst != hit.donor {
            self.pending_copies.push(BlockCopy { src: hit.donor, dst, num_slots: hit.num_tokens });
        }
    }

    /// Lists block `id`, whose `token_ids` are set, as a donor computed after `parent_serial`.
    pub(super) fn list_donor(&mut self, id: BlockId, parent_serial: Option<u64>) {
        let block = &mut self.blocks[id as usize];
        let Some(&first) = block.token_ids.first() else { return };
        let key = (parent_serial, first);
        debug_assert!(block.donor_key.is_none(), "block {id} listed twice");
        block.donor_key = Some(key);
        if let Some(dropped) = self.donors.insert(key, id) {
            self.blocks[dropped as usize].donor_key = None;
        }
    }

    /// Before `seq`'s blocks are freed: lists its last block as a donor of the tokens computed
    /// in it, when they partly fill it and no donor already holds them.
    pub(super) fn list_tail(&mut self, seq: &Sequence) {
        let Some(tail) = self.tail_of(seq) else { return };
        let tokens = &seq.token_ids[tail.tokens];
        let key = (tail.parent_serial, tokens[0]);
        let covered = self
            .donors
            .get(&key)
            .iter()
            .any(|&donor| self.blocks[donor as usize].token_ids.starts_with(tokens));
        if covered {
            return;
        }
        let block = &mut self.blocks[tail.id as usize];
        block.token_ids.clear();
        block.token_ids.extend_from_slice(tokens);
        self.list_donor(tail.id, tail.parent_serial);
    }

    /// `seq`'s partly computed last block, when its KV can be trusted by a later sequence: every
    /// block before it is published (so the chain it was computed after has a name), only `seq`
    /// holds it, and it is not waiting for a copy that has not been applied (a step that failed
    /// before its forward pass).
    fn tail_of(&self, seq: &Sequence) -> Option<Tail> {
        if !self.prefix_caching {
            return None;
        }
        let index = seq.num_computed_tokens / self.block_size;
        let start = index * self.block_size;
        if start == seq.num_computed_tokens || index != seq.num_cached_blocks {
            return None;
        }
        let &id = seq.block_table.get(index)?;
        let block = &self.blocks[id as usize];
        let unshared = block.ref_count == 1 && !block.is_listed();
        if !unshared || self.pending_copies.iter().any(|copy| copy.dst == id) {
            return None;
        }
        let parent_serial = self.parent_serial(seq, index)?;
        Some(Tail { id, parent_serial, tokens: start..seq.num_computed_tokens })
    }
}

fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
