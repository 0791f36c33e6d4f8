use super::*;

const BLOCK_SIZE: usize = 4;

fn manager(num_blocks: usize) -> BlockManager {
    BlockManager::new(num_blocks, BLOCK_SIZE, true)
}

/// A waiting sequence over `tokens`, hashed the way the scheduler hashes it.
fn seq(manager: &BlockManager, id: u64, tokens: &[u32]) -> Sequence {
    let mut seq = Sequence::new(id, tokens.to_vec(), 8, 0);
    manager.hash_full_blocks(&mut seq);
    seq
}

/// What a step does for one sequence: blocks for `num_tokens` more, computed, published.
fn compute(manager: &mut BlockManager, seq: &mut Sequence, num_tokens: usize) {
    assert!(manager.may_append(seq, num_tokens), "blocks for {num_tokens} tokens");
    seq.num_computed_tokens += num_tokens;
    manager.cache_full_blocks(seq);
}

/// Admits `seq` and computes the rest of its tokens; returns the tokens taken from the cache.
fn admit_and_prefill(manager: &mut BlockManager, seq: &mut Sequence) -> usize {
    assert!(manager.can_allocate(seq, 0));
    let num_hit_tokens = manager.allocate(seq);
    // The worker applies the copies before the step's forward pass.
    manager.clear_pending_copies();
    let remaining = seq.remaining_to_compute();
    compute(manager, seq, remaining);
    num_hit_tokens
}

fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

#[test]
fn num_blocks_for_rounds_up() {
    let manager = manager(8);
    assert_eq!(manager.num_blocks_for(0), 0);
    assert_eq!(manager.num_blocks_for(1), 1);
    assert_eq!(manager.num_blocks_for(4), 1);
    assert_eq!(manager.num_blocks_for(5), 2);
    assert_eq!(manager.num_blocks_for(32), 8);
}

#[test]
fn hashes_chain_over_full_blocks_only() {
    let manager = manager(8);
    let a = seq(&manager, 1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(a.block_hashes.len(), 2, "the ninth token does not fill a block");
    assert_eq!(a.block_hashes[0], hash_block(None, &[1, 2, 3, 4]));
    assert_eq!(a.block_hashes[1], hash_block(Some(a.block_hashes[0]), &[5, 6, 7, 8]));

    let same = seq(&manager, 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(same.block_hashes, a.block_hashes);
    // Same second block after a different first block: a different chain.
    let other = seq(&manager, 3, &[9, 2, 3, 4, 5, 6, 7, 8]);
    assert_ne!(other.block_hashes[1], a.block_hashes[1]);

    let off = BlockManager::new(8, BLOCK_SIZE, false);
    assert!(seq(&off, 4, &[1, 2, 3, 4]).block_hashes.is_empty());
}

#[test]
fn blocks_grow_as_tokens_are_scheduled_with_exact_counts() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..6));
    assert_eq!(manager.allocate(&mut a), 0);
    assert!(a.block_table.is_empty(), "admission takes no block for uncomputed tokens");
    compute(&mut manager, &mut a, 3);
    assert_eq!((a.block_table.len(), manager.num_free_blocks()), (1, 7));
    compute(&mut manager, &mut a, 3);
    assert_eq!((a.block_table.len(), manager.num_free_blocks()), (2, 6));
    assert!(manager.can_append(&a, 4 * 6 + 2), "six more blocks are free");
    assert!(!manager.can_append(&a, 4 * 6 + 3));
    assert!(!manager.may_append(&mut a, 100));
    assert_eq!(manager.num_free_blocks(), 6, "a refused append takes nothing");
    manager.free(&mut a).unwrap();
    assert_eq!((manager.num_free_blocks(), manager.num_used_blocks()), (8, 0));
    assert_eq!((a.num_computed_tokens, a.num_cached_blocks), (0, 0));
}

#[test]
fn a_freed_prefix_is_attached_again_by_a_later_sequence() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..10));
    assert_eq!(admit_and_prefill(&mut manager, &mut a), 0);
    assert_eq!(manager.num_cached_blocks(), 2, "two full computed blocks are published");
    let prefix = a.block_table[..2].to_vec();
    manager.free(&mut a).unwrap();
    assert_eq!(manager.num_free_blocks(), 8, "cached blocks count as free");

    let mut b = seq(&manager, 2, &[tokens(0..8), vec![77, 78, 79]].concat());
    assert!(manager.can_allocate(&b, 0));
    assert_eq!(manager.allocate(&mut b), 8);
    assert_eq!(b.block_table, prefix, "the very blocks a computed");
    assert_eq!((b.num_computed_tokens, b.num_cached_blocks), (8, 2));
    assert_eq!(manager.num_free_blocks(), 6);
    assert_eq!(manager.stats(), PrefixCacheStats { num_queried_tokens: 21, num_hit_tokens: 8 });
}

#[test]
fn a_hit_always_leaves_a_token_to_compute() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..8));
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    let mut again = seq(&manager, 2, &tokens(0..8));
    assert_eq!(manager.allocate(&mut again), 7, "one block attached, 3 tokens of the next copied");
    assert_eq!(again.remaining_to_compute(), 1);
    assert_eq!(again.num_cached_blocks, 1, "the copied block is not published yet");
    let copy = BlockCopy { src: a_block(&manager, 4), dst: again.block_table[1], num_slots: 3 };
    assert_eq!(manager.pending_copies(), [copy]);
}

/// The one block listed as a donor whose first token is `start`.
fn a_block(manager: &BlockManager, start: u32) -> BlockId {
    let donors: Vec<BlockId> = manager
        .donors
        .all()
        .filter(|&id| manager.blocks[id as usize].token_ids.first() == Some(&start))
        .collect();
    assert_eq!(donors.len(), 1, "donors starting with token {start}: {donors:?}");
    donors[0]
}

#[test]
fn a_repeated_prompt_copies_the_computed_tokens_of_the_last_partial_block() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..10));
    admit_and_prefill(&mut manager, &mut a);
    let tail = a.block_table[2];
    manager.free(&mut a).unwrap();

    // The same ten tokens and one more: two blocks attached, tokens 8 and 9 copied.
    let mut b = seq(&manager, 2, &[tokens(0..10), vec![50]].concat());
    assert!(manager.can_allocate(&b, 0));
    assert_eq!(manager.allocate(&mut b), 10);
    assert_eq!((b.block_table.len(), b.remaining_to_compute()), (3, 1));
    assert_ne!(b.block_table[2], tail, "a donor other than the next free block is only read");
    let copy = BlockCopy { src: tail, dst: b.block_table[2], num_slots: 2 };
    assert_eq!(manager.pending_copies(), [copy]);
    assert_eq!(manager.stats(), PrefixCacheStats { num_queried_tokens: 21, num_hit_tokens: 10 });
    manager.clear_pending_copies();
    compute(&mut manager, &mut b, 1);
    manager.free(&mut b).unwrap();

    // Diverging after token 8: only that one is copied, from either tail.
    let mut c = seq(&manager, 3, &[tokens(0..9), vec![60, 61]].concat());
    assert_eq!(manager.allocate(&mut c), 9);
}

#[test]
fn a_partial_hit_needs_the_same_blocks_before_it() {
    let mut manager = manager(16);
    let mut a = seq(&manager, 1, &[tokens(0..4), vec![10, 11]].concat());
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    let mut x = seq(&manager, 2, &[tokens(50..54), vec![99]].concat());
    admit_and_prefill(&mut manager, &mut x);
    manager.free(&mut x).unwrap();
    // a's last-block tokens after x's first block: that block only, nothing copied.
    let mut b = seq(&manager, 5, &[tokens(50..54), vec![10, 11, 12]].concat());
    assert_eq!(manager.allocate(&mut b), 4);
    assert!(manager.pending_copies().is_empty());
    manager.free(&mut b).unwrap();
    let mut c = seq(&manager, 3, &[tokens(0..4), vec![10, 11, 12]].concat());
    assert_eq!(manager.allocate(&mut c), 6);
    // A first block shared in part: 0, 1, 2 of a's published first block.
    let mut d = seq(&manager, 4, &[tokens(0..3), vec![70, 71]].concat());
    assert_eq!(manager.allocate(&mut d), 3);
}

#[test]
fn a_free_donor_taken_as_the_fresh_block_needs_no_copy() {
    let mut manager = manager(3);
    let mut a = seq(&manager, 1, &tokens(0..6));
    admit_and_prefill(&mut manager, &mut a);
    let tail = a.block_table[1];
    manager.free(&mut a).unwrap();
    // Another sequence takes the one never used block: a's tail is next in the free queue.
    let mut z = seq(&manager, 2, &[90]);
    compute(&mut manager, &mut z, 1);
    let mut b = seq(&manager, 3, &[tokens(0..6), vec![9]].concat());
    assert_eq!(manager.allocate(&mut b), 6);
    assert_eq!(b.block_table[1], tail, "its slots already hold tokens 4 and 5");
    assert!(manager.pending_copies().is_empty());
    assert_eq!(manager.donors.all().count(), 1, "the tail is b's own block now, not a donor");
}

#[test]
fn a_block_freed_before_its_copy_is_applied_drops_the_copy() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..6));
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    let mut b = seq(&manager, 2, &[tokens(0..6), vec![9]].concat());
    assert_eq!(manager.allocate(&mut b), 6);
    assert_eq!(manager.pending_copies().len(), 1);
    // Preempted in the same step: the copy would land in a block that is no longer b's.
    manager.free(&mut b).unwrap();
    assert!(manager.pending_copies().is_empty());
}

#[test]
fn a_key_lists_a_bounded_number_of_donors_newest_kept() {
    let mut manager = manager(2 * partial::MAX_DONORS_PER_KEY + 4);
    for i in 0..partial::MAX_DONORS_PER_KEY as u32 + 3 {
        // Prompts that share their first token only.
        let mut s = seq(&manager, u64::from(i), &[7, 100 + i, 3]);
        admit_and_prefill(&mut manager, &mut s);
        manager.free(&mut s).unwrap();
    }
    assert_eq!(manager.donors.all().count(), partial::MAX_DONORS_PER_KEY);
    let mut newest = seq(&manager, 99, &[7, 102 + partial::MAX_DONORS_PER_KEY as u32, 5]);
    assert_eq!(manager.allocate(&mut newest), 2);
    let mut oldest = seq(&manager, 98, &[7, 100, 5]);
    assert_eq!(manager.allocate(&mut oldest), 1, "its listing went: the first token only");
}

#[test]
fn a_tail_another_donor_holds_is_not_listed_twice() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..6));
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    let mut b = seq(&manager, 2, &tokens(0..6));
    assert_eq!(manager.allocate(&mut b), 5);
    manager.clear_pending_copies();
    compute(&mut manager, &mut b, 1);
    manager.free(&mut b).unwrap();
    assert_eq!(manager.donors.all().count(), 2, "a's first block and a's tail, not b's");
}

#[test]
fn a_block_whose_copy_was_never_applied_is_not_listed() {
    let mut manager = manager(3);
    let mut a = seq(&manager, 1, &tokens(0..6));
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    let mut b = seq(&manager, 2, &[tokens(0..6), vec![9]].concat());
    assert_eq!(manager.allocate(&mut b), 6);
    // Another sequence takes the last free block, the donor, which leaves the list.
    let mut c = seq(&manager, 3, &[40]);
    compute(&mut manager, &mut c, 1);
    assert_eq!(manager.donors.all().count(), 1, "a's first block is left");
    // The step failed before its forward pass: b ends with its copy never applied, so its
    // block holds no KV, though b counts those tokens computed.
    manager.free(&mut b).unwrap();
    assert_eq!(manager.donors.all().count(), 1, "b's block is not listed");
}

#[test]
fn a_hash_collision_is_not_reused() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..9));
    admit_and_prefill(&mut manager, &mut a);

    // Different tokens under the same hashes, as a collision would give.
    let mut b = seq(&manager, 2, &tokens(100..109));
    b.block_hashes.clone_from(&a.block_hashes);
    assert_eq!(manager.allocate(&mut b), 0);
    assert!(b.block_table.is_empty());
    compute(&mut manager, &mut b, 9);
    assert_eq!(b.num_cached_blocks, 0, "the taken hash is not published twice");
    assert_eq!(manager.num_cached_blocks(), 2);
    assert_eq!(manager.num_free_blocks(), 8 - 3 - 3);
}

#[test]
fn a_block_computed_after_other_content_is_not_reused() {
    let mut manager = manager(16);
    // a = X Y, c = X' (published on its own), then b = X' Y whose second hash collides with a's.
    let mut a = seq(&manager, 1, &[tokens(0..4), tokens(10..14), vec![99]].concat());
    admit_and_prefill(&mut manager, &mut a);
    let mut c = seq(&manager, 3, &[tokens(50..54), vec![99]].concat());
    admit_and_prefill(&mut manager, &mut c);
    let mut b = seq(&manager, 2, &[tokens(50..54), tokens(10..14), vec![99]].concat());
    b.block_hashes[1] = a.block_hashes[1];
    assert_eq!(manager.allocate(&mut b), 4, "X' hits, but Y's KV was computed after X");
    assert_eq!(b.block_table, c.block_table[..1]);
}

#[test]
fn running_sequences_share_prefix_blocks_by_reference() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..10));
    admit_and_prefill(&mut manager, &mut a);
    let mut b = seq(&manager, 2, &[tokens(0..8), vec![50, 51]].concat());
    assert_eq!(admit_and_prefill(&mut manager, &mut b), 8);
    assert_eq!(a.block_table[..2], b.block_table[..2]);
    assert_ne!(a.block_table[2], b.block_table[2]);
    assert_eq!(manager.num_used_blocks(), 4, "two shared blocks and one private each");

    manager.free(&mut a).unwrap();
    assert_eq!(manager.num_used_blocks(), 3, "b still holds the shared prefix");
    manager.free(&mut b).unwrap();
    assert_eq!(manager.num_used_blocks(), 0);
    assert_eq!(manager.num_cached_blocks(), 2);
}

#[test]
fn the_same_prefix_computed_twice_at_once_is_kept_once() {
    let mut manager = manager(8);
    let mut a = seq(&manager, 1, &tokens(0..9));
    let mut b = seq(&manager, 2, &tokens(0..9));
    // Both admitted before either computed anything: no hits.
    assert_eq!(manager.allocate(&mut a), 0);
    assert_eq!(manager.allocate(&mut b), 0);
    compute(&mut manager, &mut a, 9);
    compute(&mut manager, &mut b, 9);
    assert_eq!(b.block_table[..2], a.block_table[..2], "b switched to a's published blocks");
    assert_eq!(b.num_cached_blocks, 2);
    assert_eq!(manager.num_used_blocks(), 4, "b's own copies went back to the free queue");
}

#[test]
fn free_cached_blocks_are_evicted_least_recently_freed_first() {
    let mut manager = manager(4);
    let mut a = seq(&manager, 1, &tokens(0..5));
    let mut b = seq(&manager, 2, &tokens(10..15));
    admit_and_prefill(&mut manager, &mut a);
    admit_and_prefill(&mut manager, &mut b);
    manager.free(&mut a).unwrap();
    manager.free(&mut b).unwrap();
    assert_eq!((manager.num_free_blocks(), manager.num_cached_blocks()), (4, 2));

    // Three fresh blocks: a's tail and cached block go first, freed before b's, then b's tail
    // (a sequence's later blocks before its earlier ones).
    let mut c = seq(&manager, 3, &tokens(20..32));
    manager.allocate(&mut c);
    compute(&mut manager, &mut c, 12);
    assert_eq!(manager.num_cached_blocks(), 4, "a's block evicted, b's kept, c's three added");
    manager.free(&mut c).unwrap();

    let mut a_again = seq(&manager, 4, &tokens(0..5));
    assert_eq!(manager.allocate(&mut a_again), 0, "a's prefix was evicted");
    let mut b_again = seq(&manager, 5, &tokens(10..15));
    assert_eq!(manager.allocate(&mut b_again), 4, "b's, freed later, survived");
}

#[test]
fn without_prefix_caching_nothing_is_published_or_hit() {
    let mut manager = BlockManager::new(8, BLOCK_SIZE, false);
    let mut a = seq(&manager, 1, &tokens(0..9));
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    let mut b = seq(&manager, 2, &tokens(0..9));
    assert_eq!(manager.allocate(&mut b), 0);
    assert_eq!(manager.num_cached_blocks(), 0);
    assert_eq!(manager.stats(), PrefixCacheStats::default());
}

#[test]
fn admission_counts_free_cached_hits_and_the_spare_blocks() {
    let mut manager = manager(4);
    let mut a = seq(&manager, 1, &tokens(0..8));
    admit_and_prefill(&mut manager, &mut a);
    manager.free(&mut a).unwrap();
    // 12 tokens: two cached (free) blocks to attach plus one new block = 3 of 4 free.
    let b = seq(&manager, 2, &tokens(0..12));
    assert!(manager.can_allocate(&b, 1));
    assert!(!manager.can_allocate(&b, 2));
}

/// In every build, not only with debug assertions: a second release is refused and changes
/// nothing, so the block cannot be queued twice and handed to two sequences.
#[test]
fn a_double_free_is_an_error_and_leaves_the_pool_as_it_was() {
    let mut manager = manager(2);
    let mut a = seq(&manager, 1, &[1]);
    compute(&mut manager, &mut a, 1);
    let table = a.block_table.clone();
    manager.free(&mut a).unwrap();
    let free_before = manager.num_free_blocks();
    a.block_table = table.clone();
    let err = manager.free(&mut a).unwrap_err();
    assert_eq!(err, BlockError::DoubleFree { block: table[0], seq: a.id });
    assert_eq!(manager.num_free_blocks(), free_before);
    assert!(a.block_table.is_empty());
    // Both blocks can still be taken once each.
    let mut b = seq(&manager, 2, &[7, 8, 9, 10, 11]);
    compute(&mut manager, &mut b, 5);
    let mut taken = b.block_table.clone();
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), b.block_table.len(), "a block was handed out twice");
}
