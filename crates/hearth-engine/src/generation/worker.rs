//! The engine thread: schedule → run → postprocess, one step at a time.
//!
//! The worker owns everything that touches the device (model, KV cache) and the scheduler. It
//! never blocks on a caller: events go out through unbounded per-request channels, which stay
//! bounded in practice because a request emits at most `max_tokens + 1` events.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use hearth_protocol::{FinishReason, GenerationEvent, SamplingParams, Usage};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::generation::block_manager::BlockManager;
use crate::generation::constraint::{self, TokenConstraint, TokenMask};
use crate::generation::detokenizer::{IncrementalDetokenizer, StopMatcher};
use crate::generation::kv_cache::KvCache;
use crate::generation::metrics::RequestTimer;
use crate::generation::phases::Phases;
use crate::generation::runner;
use crate::generation::sampler::Sampler;
use crate::generation::scheduler::{AdmitError, ScheduledSeq, Scheduler, SchedulerConfig};
use crate::generation::sequence::{SeqId, Sequence};
use crate::generation::shared::Shared;
use crate::models::llama::lora::LoraAdapter;
use crate::models::llama::Llama;

/// What a handle sends to the worker.
pub(crate) enum Command {
    Submit(Box<Submission>),
    /// Wakes an idle worker so it sees the shutdown flag.
    Wake,
}

pub(crate) struct Submission {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    /// The grammar the output must match, compiled.
    pub constraint: Option<TokenConstraint>,
    /// The LoRA adapter the request runs with.
    pub adapter: Option<Arc<LoraAdapter>>,
    pub events: mpsc::UnboundedSender<GenerationEvent>,
    /// When `Engine::submit` was called: the start of the request's latencies.
    pub submitted_at: Instant,
    /// The request's phases as trace spans (queue, then prefill, then decode).
    pub phases: Phases,
}

/// A step's token masks, by sequence: what each constrained sequence may draw, or why its
/// grammar failed.
type Masks = HashMap<SeqId, Result<TokenMask, String>>;

/// Per-request state that is not the scheduler's business.
struct Active {
    events: mpsc::UnboundedSender<GenerationEvent>,
    sampler: Sampler,
    detokenizer: IncrementalDetokenizer,
    stop: StopMatcher,
    sampling: SamplingParams,
    constraint: Option<TokenConstraint>,
    adapter: Option<Arc<LoraAdapter>>,
    /// Still counted in `Shared::num_queued` (no prefill chunk scheduled yet).
    queued: bool,
    /// Metrics: TTFT, inter-token and end-to-end latency.
    timer: RequestTimer,
    phases: Phases,
}

/// Everything the worker needs, gathered by `Engine::start`.
pub(crate) struct WorkerParts {
    pub model: Llama,
    pub kv: KvCache,
    pub scheduler: SchedulerConfig,
    pub num_blocks: usize,
    pub block_size: usize,
    pub prefix_caching: bool,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_token_ids: Vec<u32>,
    pub device: Device,
    pub shared: Arc<Shared>,
}

pub(crate) struct Worker {
    model: Llama,
    kv: KvCache,
    scheduler: Scheduler,
    block_size: usize,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    device: Device,
    shared: Arc<Shared>,
    active: HashMap<SeqId, Active>,
    /// The current step's plan; kept between steps so its buffer is reused.
    scheduled: Vec<ScheduledSeq>,
    next_id: SeqId,
    num_steps: u64,
}

impl Worker {
    pub fn new(parts: WorkerParts) -> Self {
        Self {
            scheduler: Scheduler::new(
                parts.scheduler,
                BlockManager::new(parts.num_blocks, parts.block_size, parts.prefix_caching),
            ),
            model: parts.model,
            kv: parts.kv,
            block_size: parts.block_size,
            tokenizer: parts.tokenizer,
            eos_token_ids: parts.eos_token_ids,
            device: parts.device,
            shared: parts.shared,
            active: HashMap::new(),
            scheduled: Vec::new(),
            next_id: 0,
            num_steps: 0,
        }
    }

    /// Runs until shutdown is requested and every admitted request has ended.
    pub fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        loop {
            if self.active.is_empty() {
                if self.shared.shutting_down.load(Ordering::Acquire) {
                    break;
                }
                // Idle: sleep until something arrives.
                match inbox.blocking_recv() {
                    Some(command) => self.handle(command),
                    None => break,
                }
            }
            while let Ok(command) = inbox.try_recv() {
                self.handle(command);
            }
            self.step_guarded();
        }
        tracing::info!(steps = self.num_steps, "engine stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(submission) => self.admit(*submission),
            Command::Wake => {}
        }
    }

    fn admit(&mut self, submission: Submission) {
        let Submission { prompt_ids, sampling, constraint, adapter, events, submitted_at, phases } =
            submission;
        let id = self.next_id;
        self.next_id += 1;
        let active = Active {
            sampler: Sampler::new(&sampling, &prompt_ids),
            detokenizer: IncrementalDetokenizer::new(self.tokenizer.clone(), &prompt_ids),
            stop: StopMatcher::new(sampling.stop.clone()),
            sampling,
            constraint,
            // A prefix computed under one adapter (or none) is never reused under another.
            adapter: adapter.clone(),
            events,
            queued: true,
            timer: RequestTimer::new(submitted_at),
            phases,
        };
        let mut seq = Sequence::new(id, prompt_ids, active.sampling.max_tokens, self.num_steps);
        seq.cache_salt = adapter.map(|a| a.id());
        match self.scheduler.add(seq) {
            Ok(()) => {
                self.active.insert(id, active);
            }
            Err(err) => {
                self.shared.num_queued.fetch_sub(1, Ordering::AcqRel);
                let message = match err {
                    AdmitError::QueueFull { .. } => {
                        "the model is overloaded; retry later".to_string()
                    }
                    other => other.to_string(),
                };
                let failed = GenerationEvent::Failed { message };
                active.timer.on_end(&self.shared.metrics, &failed); // metrics
                let _ = active.events.send(failed);
            }
        }
    }

    /// A panic inside a step (a bug, or a device error that panics) must not leave callers
    /// waiting forever: every in-flight request fails with an error and the worker goes on.
    fn step_guarded(&mut self) {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.step()));
        let message = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(err)) => format!("inference failed: {err}"),
            Err(_) => "inference failed: the engine hit an internal error".to_string(),
        };
        tracing::error!(%message, "engine step failed; failing in-flight requests");
        let ids: Vec<SeqId> = self.active.keys().copied().collect();
        for id in ids {
            self.end(id, GenerationEvent::Failed { message: message.clone() });
        }
    }

    fn step(&mut self) -> candle_core::Result<()> {
        self.reap_cancelled();
        // Taken out of `self` for the step so that `on_logits` can borrow `self` mutably.
        let mut scheduled = std::mem::take(&mut self.scheduled);
        let outcome = self.run_scheduled(&mut scheduled);
        self.scheduled = scheduled;
        self.publish_stats();
        outcome
    }

    fn run_scheduled(&mut self, scheduled: &mut Vec<ScheduledSeq>) -> candle_core::Result<()> {
        self.scheduler.schedule_into(scheduled);
        if scheduled.is_empty() {
            return Ok(());
        }
        self.num_steps += 1;
        self.mark_started(scheduled);
        self.kv.copy_blocks(self.scheduler.block_copies())?;
        self.scheduler.on_block_copies_done();
        let (logits, mut masks) = self.forward_and_masks(scheduled);
        let mut logits = logits?;
        self.scheduler.on_step_done(scheduled);
        let sampled = scheduled.iter().filter(|s| s.samples);
        for (s, row) in sampled.zip(logits.iter_mut()) {
            let mask = masks.remove(&s.seq_id);
            self.on_logits(s.seq_id, row, mask);
        }
        Ok(())
    }

    /// The step's forward pass and, on a helper thread meanwhile, the token masks of the
    /// constrained sequences that sample in it: computing a mask needs only the tokens drawn so
    /// far, so it costs the step nothing while the forward pass is the longer of the two.
    fn forward_and_masks(
        &mut self,
        scheduled: &[ScheduledSeq],
    ) -> (candle_core::Result<Vec<Vec<f32>>>, Masks) {
        let Worker { model, kv, scheduler, active, device, block_size, .. } = self;
        let adapters: Vec<_> = scheduled
            .iter()
            .map(|s| active.get(&s.seq_id).and_then(|a| a.adapter.clone()))
            .collect();
        // Constrained requests first: a step with none (the common case) scans nothing more.
        let constrained: Vec<(SeqId, &mut TokenConstraint)> = active
            .iter_mut()
            .filter_map(|(&id, a)| a.constraint.as_mut().map(|c| (id, c)))
            .filter(|(id, _)| scheduled.iter().any(|s| s.samples && s.seq_id == *id))
            .collect();
        let mut forward =
            || runner::run_step(model, kv, scheduler, scheduled, &adapters, device, *block_size);
        if constrained.is_empty() {
            return (forward(), HashMap::new());
        }
        let compute = |constrained: Vec<(SeqId, &mut TokenConstraint)>| -> Masks {
            constrained.into_iter().map(|(id, c)| (id, c.mask())).collect()
        };
        std::thread::scope(|scope| {
            // Without a thread to spare (the OS refused one), the masks are computed here.
            let (tx, rx) = std::sync::mpsc::channel();
            let helper = std::thread::Builder::new()
                .name("grammar-masks".into())
                .spawn_scoped(scope, move || compute(rx.recv().unwrap_or_default()));
            match helper {
                Ok(helper) => {
                    let _ = tx.send(constrained);
                    let logits = forward();
                    // A panic in the grammar engine fails those requests (no mask for them).
                    (logits, helper.join().unwrap_or_default())
                }
                Err(_) => {
                    let masks = compute(constrained);
                    (forward(), masks)
                }
            }
        })
    }

    /// A caller that dropped its stream has cancelled; free its KV memory now.
    fn reap_cancelled(&mut self) {
        let gone: Vec<SeqId> =
            self.active.iter().filter(|(_, a)| a.events.is_closed()).map(|(&id, _)| id).collect();
        if gone.is_empty() {
            return;
        }
        for &id in &gone {
            self.end(
                id,
                GenerationEvent::Finished {
                    reason: FinishReason::Cancelled,
                    usage: Usage::default(),
                },
            );
        }
        // Publish before logging, so whoever sees the log also sees the memory freed.
        self.publish_stats();
        for id in gone {
            tracing::info!(seq = id, "request cancelled by its caller");
        }
    }

    fn mark_started(&mut self, scheduled: &[ScheduledSeq]) {
        for s in scheduled {
            if let Some(active) = self.active.get_mut(&s.seq_id) {
                if active.queued {
                    active.queued = false;
                    self.shared.num_queued.fetch_sub(1, Ordering::AcqRel);
                    let cached =
                        self.scheduler.get(s.seq_id).map_or(0, |seq| seq.num_cached_prompt_tokens);
                    active.phases.scheduled(cached);
                }
            }
        }
    }

    fn on_logits(
        &mut self,
        id: SeqId,
        logits: &mut [f32],
        mask: Option<Result<TokenMask, String>>,
    ) {
        let (Some(seq), Some(active)) = (self.scheduler.get(id), self.active.get_mut(&id)) else {
            return;
        };
        if active.constraint.is_some() {
            match mask.unwrap_or_else(|| Err("no token mask was computed".to_owned())) {
                Ok(mask) => constraint::apply(&mask, logits),
                Err(why) => {
                    let message = format!("constrained decoding failed: {why}");
                    self.end(id, GenerationEvent::Failed { message });
                    return;
                }
            }
        }
        let token = active.sampler.sample(logits, &seq.token_ids[seq.num_prompt_tokens..]);
        if let Some(grammar) = &mut active.constraint {
            if let Err(why) = grammar.consume(token) {
                let message = format!("constrained decoding failed: {why}");
                self.end(id, GenerationEvent::Failed { message });
                return;
            }
        }
        self.scheduler.append_token(id, token);
        let Some(seq) = self.scheduler.get(id) else { return };
        let num_generated = seq.num_generated();
        if num_generated == 1 {
            active.phases.first_token();
        }
        let usage = Usage {
            prompt_tokens: seq.num_prompt_tokens,
            completion_tokens: num_generated,
            cached_tokens: seq.num_cached_prompt_tokens,
        };

        // A constrained request ends where its grammar does: on end-of-sequence (which the
        // mask allows only once the grammar is complete), or when nothing more can follow.
        let constrained = active.constraint.as_ref();
        let is_eos = (!active.sampling.ignore_eos || constrained.is_some())
            && self.eos_token_ids.contains(&token);
        let grammar_done = constrained.is_some_and(TokenConstraint::is_finished);
        let mut finish = if is_eos || grammar_done {
            Some(FinishReason::Stop)
        } else if num_generated >= active.sampling.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        let mut text = String::new();
        if !is_eos {
            match active.detokenizer.push(token) {
                Ok(piece) => text = piece,
                Err(err) => {
                    let message = format!("could not decode token {token}: {err}");
                    self.end(id, GenerationEvent::Failed { message });
                    return;
                }
            }
        }
        if finish.is_some() {
            text.push_str(&active.detokenizer.flush());
        }
        let outcome = active.stop.push(&text);
        let mut emit = outcome.emit;
        if outcome.stopped {
            finish = Some(FinishReason::Stop);
        } else if finish.is_some() {
            emit.push_str(&active.stop.flush());
        }
        if !emit.is_empty() {
            // Metrics: the request's TTFT or an inter-token gap.
            active.timer.on_text(&self.shared.metrics);
            // A failed send means the caller has gone; the next step's reap cancels it.
            let _ = active
                .events
                .send(GenerationEvent::Text { text: emit, completion_tokens: num_generated });
        }
        if let Some(reason) = finish {
            self.end(id, GenerationEvent::Finished { reason, usage });
        }
    }

    /// Ends a request: sends its terminal event and frees its sequence at once.
    fn end(&mut self, id: SeqId, terminal: GenerationEvent) {
        let generated = self.scheduler.get(id).map_or(0, |seq| seq.num_generated());
        self.scheduler.finish(id);
        if let Some(active) = self.active.remove(&id) {
            active.phases.end(generated);
            if active.queued {
                self.shared.num_queued.fetch_sub(1, Ordering::AcqRel);
            }
            active.timer.on_end(&self.shared.metrics, &terminal); // metrics
            let _ = active.events.send(terminal);
        }
    }

    fn publish_stats(&self) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            let blocks = self.scheduler.block_manager();
            let prefix_cache = blocks.stats();
            let counts = self.scheduler.stats();
            stats.num_running = self.scheduler.num_running();
            stats.num_waiting = self.scheduler.num_waiting();
            stats.kv_blocks_used = blocks.num_used_blocks();
            stats.kv_blocks_total = blocks.num_total_blocks();
            stats.kv_blocks_cached = blocks.num_cached_blocks();
            stats.num_prefix_queried_tokens = prefix_cache.num_queried_tokens;
            stats.num_prefix_hit_tokens = prefix_cache.num_hit_tokens;
            stats.num_preemptions = counts.num_preemptions;
            stats.num_prompt_tokens = counts.num_prompt_tokens;
            stats.num_generated_tokens = counts.num_generated_tokens;
        }
    }
}
