use super::*;

/// Tokens per block in every test here.
const BLOCK_SIZE: usize = 4;

fn config(max_batch_tokens: usize, max_prefill_chunk: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 8,
        max_batch_tokens,
        max_prefill_chunk,
        // No cap unless a test sets one: the budget alone bounds a step.
        max_prefill_tokens_while_decoding: max_batch_tokens,
        max_prefill_wait_steps: 1_000,
        max_waiting: 64,
        kv_watermark_percent: 0,
    }
}

fn scheduler(config: SchedulerConfig, num_blocks: usize) -> Scheduler {
    Scheduler::new(config, BlockManager::new(num_blocks, BLOCK_SIZE, true))
}

/// Token ids of its own for every sequence, so prompts share no prefix unless a test says so.
fn prompt(id: SeqId, num_tokens: usize) -> Vec<u32> {
    (0..num_tokens as u32).map(|i| id as u32 * 1_000 + i).collect()
}

fn seq(id: SeqId, num_prompt_tokens: usize, max_tokens: usize) -> Sequence {
    Sequence::new(id, prompt(id, num_prompt_tokens), max_tokens, 0)
}

/// What the engine loop does: schedule, run, record, sample, finish at max_tokens. Checks on
/// the way that no sequence is scheduled twice and every chunk has its blocks.
fn step(scheduler: &mut Scheduler) -> Vec<ScheduledSeq> {
    let batch = scheduler.schedule();
    for (i, item) in batch.iter().enumerate() {
        assert!(batch[..i].iter().all(|other| other.seq_id != item.seq_id), "scheduled twice");
        let seq = scheduler.running.iter().find(|seq| seq.id == item.seq_id).expect("running");
        assert!(seq.block_table.len() * BLOCK_SIZE >= item.start + item.num_tokens);
    }
    scheduler.on_step_done(&batch);
    for item in batch.iter().filter(|item| item.samples) {
        let token = item.seq_id as u32 * 1_000 + 500;
        let done = scheduler
            .append_token(item.seq_id, token)
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

fn waiting_ids(scheduler: &Scheduler) -> Vec<SeqId> {
    scheduler.waiting.iter().map(|seq| seq.id).collect()
}

/// Steps until nothing is left, failing after `max_steps`.
fn drain(scheduler: &mut Scheduler, max_steps: usize) {
    for _ in 0..max_steps {
        if !scheduler.has_work() {
            return;
        }
        step(scheduler);
    }
    panic!("the workload did not drain in {max_steps} steps");
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
        assert_eq!(find(&rest, 99).map(|item| (item.num_tokens, item.samples)), Some((2, true)));
    }
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
    assert!(scheduler.append_token(1, 8).is_none(), "its budget is spent");
}

#[test]
fn blocks_grow_as_tokens_are_computed() {
    let mut scheduler = scheduler(config(16, 16), 16);
    scheduler.add(seq(1, 3, 10)).expect("admitted");
    while scheduler.has_work() {
        let batch = step(&mut scheduler);
        let Some(seq) = scheduler.get(1) else { break };
        assert_eq!(seq.block_table.len(), seq.num_computed_tokens.div_ceil(BLOCK_SIZE));
        assert_eq!(scheduler.block_manager().num_used_blocks(), seq.block_table.len());
        assert!(find(&batch, 1).is_some());
    }
    assert_eq!(scheduler.block_manager().num_free_blocks(), 16);
}

#[test]
fn admission_needs_blocks_for_the_prompt_only() {
    // 4 blocks of 4 tokens. Both budgets (8 + 8 tokens each) overfill the cache together, but
    // each prompt takes one block, so both start at once.
    let mut scheduler = scheduler(config(16, 16), 4);
    scheduler.add(seq(1, 4, 8)).expect("admitted");
    scheduler.add(seq(2, 4, 8)).expect("admitted");
    scheduler.add(seq(3, 12, 1)).expect("admitted");
    let batch = step(&mut scheduler);
    assert!(find(&batch, 1).is_some() && find(&batch, 2).is_some());
    assert!(find(&batch, 3).is_none(), "three more blocks are not free");
    assert_eq!(scheduler.block_manager().num_free_blocks(), 2);
    scheduler.finish(1).expect("running");
    scheduler.finish(2).expect("running");
    let batch = step(&mut scheduler);
    assert_eq!(find(&batch, 3).map(|item| item.num_tokens), Some(12));
}

#[test]
fn admission_leaves_the_watermark_free_unless_nothing_runs() {
    // 8 blocks, 25 % watermark: 2 blocks.
    let config = SchedulerConfig { kv_watermark_percent: 25, ..config(64, 64) };
    let mut scheduler = scheduler(config.clone(), 8);
    scheduler.add(seq(1, 8, 4)).expect("admitted");
    scheduler.add(seq(2, 17, 4)).expect("admitted");
    step(&mut scheduler);
    // 6 free; seq 2 needs 5 and would leave 1 < 2.
    assert_eq!(waiting_ids(&scheduler), [2]);

    let mut alone = self::scheduler(config, 8);
    alone.add(seq(3, 30, 2)).expect("32 tokens fit 8 blocks");
    assert!(find(&step(&mut alone), 3).is_some(), "the only sequence may use every block");
    drain(&mut alone, 10);
}

#[test]
fn preemption_requeues_the_latest_at_the_front_and_it_resumes() {
    // 4 blocks of 4 tokens; two sequences of 4 + 8 tokens need 6 together.
    let config = SchedulerConfig { max_num_seqs: 2, max_waiting: 2, ..config(16, 16) };
    let mut scheduler = scheduler(config, 4);
    scheduler.add(seq(1, 4, 8)).expect("admitted");
    scheduler.add(seq(2, 4, 8)).expect("admitted");
    step(&mut scheduler);
    scheduler.add(seq(3, 4, 2)).expect("admitted");
    for _ in 0..20 {
        step(&mut scheduler);
        if scheduler.stats().num_preemptions > 0 {
            break;
        }
    }
    assert_eq!(scheduler.stats().num_preemptions, 1);
    assert_eq!(waiting_ids(&scheduler), [2, 3], "the latest admitted, back at the front");
    let preempted = scheduler.get(2).expect("waiting");
    let num_generated = preempted.num_generated();
    assert!(num_generated > 0, "generated tokens are kept");
    assert!(preempted.block_table.is_empty() && preempted.num_computed_tokens == 0);
    // A preempted sequence does not count against the queue bound for new arrivals.
    scheduler.add(seq(4, 1, 1)).expect("one fresh sequence waits, one more fits");
    assert_eq!(scheduler.add(seq(5, 1, 1)), Err(AdmitError::QueueFull { num_waiting: 2 }));

    // Once it is back, one chunk recomputes everything up to its last token and samples.
    let resumed = (0..20)
        .find_map(|_| find(&step(&mut scheduler), 2))
        .expect("the preempted sequence resumes");
    assert_eq!(resumed.start + resumed.num_tokens, 4 + num_generated);
    assert!(resumed.samples);
    assert_eq!(scheduler.get(2).map(Sequence::num_generated), Some(num_generated + 1));

    drain(&mut scheduler, 40);
    assert_eq!(scheduler.stats().num_generated_tokens, 8 + 8 + 2 + 1, "nothing lost or repeated");
    assert_eq!(scheduler.block_manager().num_free_blocks(), 4);
}

#[test]
fn the_oldest_sequence_is_never_preempted_for_a_younger_one() {
    let mut scheduler = scheduler(config(16, 16), 6);
    for id in 1..=3 {
        scheduler.add(seq(id, 4, 16)).expect("admitted");
    }
    let mut num_oldest_decodes = 0;
    while scheduler.get(1).is_some() {
        if find(&step(&mut scheduler), 1).is_some() {
            num_oldest_decodes += 1;
        }
        assert!(num_oldest_decodes < 40, "runaway");
    }
    assert_eq!(num_oldest_decodes, 16, "one prefill and 15 decodes, never recomputed");
    assert!(scheduler.stats().num_preemptions > 0);
    drain(&mut scheduler, 200);
}

#[test]
fn cancelling_frees_or_unrefs_blocks_at_once() {
    let mut scheduler = scheduler(config(16, 16), 8);
    scheduler.add(seq(1, 8, 8)).expect("admitted");
    step(&mut scheduler);
    // Shares seq 1's two prompt blocks.
    let shared = Sequence::new(2, [prompt(1, 8), vec![5, 6]].concat(), 8, 0);
    scheduler.add(shared).expect("admitted");
    scheduler.add(seq(3, 4, 4)).expect("admitted");
    let batch = step(&mut scheduler);
    assert_eq!(find(&batch, 2).map(|item| (item.start, item.num_tokens)), Some((8, 2)));
    assert_eq!(scheduler.get(2).map(|seq| seq.num_cached_prompt_tokens), Some(8));
    // seq 1: 2 shared + 1; seq 2: 2 shared + 1; seq 3: 1.
    assert_eq!(scheduler.block_manager().num_used_blocks(), 5);

    let cancelled = scheduler.finish(1).expect("running");
    assert!(cancelled.block_table.is_empty());
    assert!(scheduler.get(1).is_none());
    assert_eq!(scheduler.block_manager().num_used_blocks(), 4, "the shared blocks stay held");
    scheduler.finish(2).expect("running");
    assert_eq!(scheduler.block_manager().num_used_blocks(), 1);

    scheduler.add(seq(4, 4, 4)).expect("admitted");
    scheduler.finish(4).expect("waiting");
    assert_eq!(scheduler.block_manager().num_used_blocks(), 1, "waiting sequences hold none");
    assert!(scheduler.finish(4).is_none());
}

#[test]
fn workloads_that_overfill_the_cache_drain_with_every_token_once() {
    let (mut num_preemptions, mut num_hit_tokens) = (0, 0);
    for seed in 0..20u64 {
        let config =
            SchedulerConfig { max_num_seqs: 6, max_prefill_wait_steps: seed % 4, ..config(12, 5) };
        let mut scheduler = scheduler(config, 10);
        let mut rng = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next = |bound: u64| {
            rng =
                rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) % bound
        };
        let mut num_expected = 0;
        for id in 0..10 {
            let (num_prompt, max_tokens) = (1 + next(20) as usize, 1 + next(15) as usize);
            // Every other prompt starts with seq 0's tokens, so prefixes are shared.
            let mut tokens = prompt(id, num_prompt);
            if id % 2 == 1 {
                tokens[..num_prompt.min(8)].copy_from_slice(&prompt(0, 8)[..num_prompt.min(8)]);
            }
            scheduler.add(Sequence::new(id, tokens, max_tokens, 0)).expect("fits");
            num_expected += max_tokens as u64;
        }
        drain(&mut scheduler, 500);
        assert_eq!(scheduler.stats().num_generated_tokens, num_expected, "seed {seed}");
        assert_eq!(scheduler.block_manager().num_free_blocks(), 10, "seed {seed}");
        num_preemptions += scheduler.stats().num_preemptions;
        num_hit_tokens += scheduler.block_manager().stats().num_hit_tokens;
    }
    assert!(num_preemptions > 0 && num_hit_tokens > 0, "the workloads exercise both");
}

#[test]
fn prompts_take_small_chunks_while_others_decode_and_whole_ones_alone() {
    let config = SchedulerConfig { max_prefill_tokens_while_decoding: 8, ..config(64, 32) };
    let mut s = scheduler(config, 64);
    // Alone, a prompt takes the whole chunk.
    s.add(seq(1, 40, 10)).unwrap();
    assert_eq!(find(&step(&mut s), 1).unwrap().num_tokens, 32);
    assert_eq!(find(&step(&mut s), 1).unwrap().num_tokens, 8, "the rest of its prompt");
    // Now 1 decodes: a new prompt gets 8 tokens a step, beside 1's decode token.
    s.add(seq(2, 20, 10)).unwrap();
    for want in [8, 8, 4] {
        let batch = step(&mut s);
        assert_eq!(find(&batch, 1).unwrap().num_tokens, 1, "1 keeps decoding every step");
        assert_eq!(find(&batch, 2).unwrap().num_tokens, want);
    }
    // Two prompts share the 8 tokens; both decoders keep going.
    s.add(seq(3, 12, 10)).unwrap();
    s.add(seq(4, 12, 10)).unwrap();
    let batch = step(&mut s);
    let prefill: usize =
        [3, 4].iter().filter_map(|&id| find(&batch, id)).map(|i| i.num_tokens).sum();
    assert_eq!(prefill, 8);
    assert!(find(&batch, 1).is_some() && find(&batch, 2).is_some());
}
