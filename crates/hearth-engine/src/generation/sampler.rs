//! Picks the next token of one sequence from its logits.
//!
//! The order follows Hugging Face and vLLM: repetition penalty (prompt and output), presence and
//! frequency penalties (output), temperature, top-k, top-p, min-p, then a draw. Temperature 0 (or
//! top-k 1) is greedy: the argmax, ties going to the lowest token id.
//!
//! Every sequence owns its own RNG, seeded from `SamplingParams::seed` (or the OS when there is
//! none), so the stream of draws of one sequence does not depend on which other sequences share
//! its batch: the same seed and the same logits give the same tokens.

use std::cmp::Ordering;
use std::collections::HashMap;

use hearth_protocol::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling state of one sequence.
#[derive(Debug)]
pub struct Sampler {
    greedy: bool,
    truncation: Truncation,
    penalties: Penalties,
    rng: ChaCha8Rng,
    /// Penalised logits, reused across tokens (sized to the vocabulary on first use).
    logits: Vec<f32>,
    /// Token ids still in the running after each cut, reused across tokens.
    candidates: Vec<u32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, prompt_ids: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Self {
            greedy: params.is_greedy(),
            truncation: Truncation {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
                min_p: params.min_p,
            },
            penalties: Penalties::new(params, prompt_ids),
            rng,
            logits: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// The next token, given this step's logits and every token generated so far. `generated`
    /// must only grow between calls (the sampler counts the new tail of it each time).
    pub fn sample(&mut self, logits: &[f32], generated: &[u32]) -> u32 {
        self.penalties.count(generated);
        if self.greedy && !self.penalties.is_active() {
            return argmax(logits);
        }
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.penalties.apply(&mut self.logits);
        if self.greedy {
            return argmax(&self.logits);
        }
        self.truncation.draw(&mut self.logits, &mut self.candidates, &mut self.rng)
    }
}

/// The index of the largest logit, the lowest on ties. NaN never wins; if every logit is NaN or
/// -inf the answer is token 0, since any token is as (im)possible as another.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (id, &logit) in logits.iter().enumerate() {
        if logit > best_logit {
            best = id;
            best_logit = logit;
        }
    }
    token_id(best)
}

fn token_id(index: usize) -> u32 {
    // Vocabularies are far below u32::MAX; saturate rather than wrap should one not be.
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Repetition, presence and frequency penalties with the token counts they need.
#[derive(Debug)]
struct Penalties {
    repetition: f32,
    presence: f32,
    frequency: f32,
    /// Distinct prompt tokens, sorted; empty when the repetition penalty is off.
    prompt_tokens: Vec<u32>,
    /// Occurrences of each generated token, kept up to date incrementally so a step costs only
    /// its new tokens, not the whole output.
    generated_counts: HashMap<u32, u32>,
    num_counted: usize,
}

impl Penalties {
    fn new(params: &SamplingParams, prompt_ids: &[u32]) -> Self {
        let repetition = params.repetition_penalty;
        let mut prompt_tokens = Vec::new();
        if repetition != 1.0 {
            prompt_tokens.extend_from_slice(prompt_ids);
            prompt_tokens.sort_unstable();
            prompt_tokens.dedup();
        }
        Self {
            repetition,
            presence: params.presence_penalty,
            frequency: params.frequency_penalty,
            prompt_tokens,
            generated_counts: HashMap::new(),
            num_counted: 0,
        }
    }

    fn is_active(&self) -> bool {
        self.repetition != 1.0 || self.presence != 0.0 || self.frequency != 0.0
    }

    fn count(&mut self, generated: &[u32]) {
        if generated.len() < self.num_counted {
            // Not the history we counted; start over rather than keep stale counts.
            self.generated_counts.clear();
            self.num_counted = 0;
        }
        for &token in &generated[self.num_counted..] {
            *self.generated_counts.entry(token).or_insert(0) += 1;
        }
        self.num_counted = generated.len();
    }

    fn apply(&self, logits: &mut [f32]) {
        if self.repetition != 1.0 {
            let from_output = self
                .generated_counts
                .keys()
                .filter(|token| self.prompt_tokens.binary_search(token).is_err());
            // Each distinct token once, whether it was seen in the prompt, the output or both.
            for &token in self.prompt_tokens.iter().chain(from_output) {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit = penalize_repetition(*logit, self.repetition);
                }
            }
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            for (&token, &count) in &self.generated_counts {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit -= self.presence + self.frequency * count as f32;
                }
            }
        }
    }
}

/// Dividing a negative logit would raise it, so negative logits are multiplied instead (as in
/// the CTRL paper and Hugging Face).
fn penalize_repetition(logit: f32, penalty: f32) -> f32 {
    if logit > 0.0 {
        logit / penalty
    } else {
        logit * penalty
    }
}

/// How many of the most likely tokens top-p sorts first (see `Truncation::cut_top_p`).
const TOP_P_FIRST_GUESS: usize = 64;

/// Temperature and the cuts that narrow the support before a draw.
#[derive(Debug, Clone, Copy)]
struct Truncation {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
}

impl Truncation {
    fn draw(self, logits: &mut [f32], candidates: &mut Vec<u32>, rng: &mut ChaCha8Rng) -> u32 {
        let inverse_temperature = 1.0 / self.temperature;
        logits.iter_mut().for_each(|logit| *logit *= inverse_temperature);
        candidates.clear();
        // `>` drops -inf and NaN: they can never be drawn.
        let possible = logits.iter().enumerate().filter(|(_, &logit)| logit > f32::NEG_INFINITY);
        candidates.extend(possible.map(|(id, _)| token_id(id)));
        if candidates.is_empty() {
            return argmax(logits);
        }
        self.cut_top_k(logits, candidates);
        let max_logit = candidates.iter().map(|&id| logits[id as usize]).fold(f32::MIN, f32::max);
        self.cut_top_p(logits, candidates, max_logit);
        self.cut_min_p(logits, candidates, max_logit);
        draw_one(logits, candidates, max_logit, rng)
    }

    fn cut_top_k(self, logits: &[f32], candidates: &mut Vec<u32>) {
        if self.top_k == 0 || self.top_k >= candidates.len() {
            return;
        }
        // Partial selection: the top k in O(n), unsorted, instead of sorting the vocabulary.
        candidates.select_nth_unstable_by(self.top_k - 1, |&a, &b| by_logit_desc(logits, a, b));
        candidates.truncate(self.top_k);
    }

    fn cut_top_p(self, logits: &[f32], candidates: &mut Vec<u32>, max_logit: f32) {
        if self.top_p >= 1.0 {
            return;
        }
        let weight = |id: u32| f64::from(logits[id as usize] - max_logit).exp();
        let total: f64 = candidates.iter().map(|&id| weight(id)).sum();
        let target = f64::from(self.top_p) * total;
        // The kept set is a prefix of the candidates sorted by logit, and usually a short one:
        // sort only the top `k` (partial selection, then a sort of those), widening k until
        // their mass reaches the target. Sorting the whole vocabulary took 1.6 ms a token.
        let mut k = TOP_P_FIRST_GUESS.min(candidates.len());
        loop {
            if k < candidates.len() {
                candidates.select_nth_unstable_by(k - 1, |&a, &b| by_logit_desc(logits, a, b));
            }
            candidates[..k].sort_unstable_by(|&a, &b| by_logit_desc(logits, a, b));
            let mut cumulative = 0.0;
            // The smallest prefix whose mass reaches top_p; the most likely token always stays.
            let reached = candidates[..k].iter().position(|&id| {
                cumulative += weight(id);
                cumulative >= target
            });
            match reached {
                Some(index) => return candidates.truncate(index + 1),
                None if k == candidates.len() => return,
                None => k = (k * 4).min(candidates.len()),
            }
        }
    }

    /// Keeps tokens at least `min_p` times as likely as the most likely one. Comparing logits
    /// with `max + ln(min_p)` is the same test without computing probabilities.
    fn cut_min_p(self, logits: &[f32], candidates: &mut Vec<u32>, max_logit: f32) {
        if self.min_p <= 0.0 {
            return;
        }
        let threshold = max_logit + self.min_p.ln();
        candidates.retain(|&id| logits[id as usize] >= threshold);
    }
}

/// Descending logit, then ascending id, so every ordering is total and reproducible.
fn by_logit_desc(logits: &[f32], a: u32, b: u32) -> Ordering {
    logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b))
}

/// Draws one candidate with probability proportional to `exp(logit - max_logit)`.
fn draw_one(logits: &[f32], candidates: &[u32], max_logit: f32, rng: &mut ChaCha8Rng) -> u32 {
    let weight = |id: u32| f64::from(logits[id as usize] - max_logit).exp();
    let total: f64 = candidates.iter().map(|&id| weight(id)).sum();
    let mut remaining = rng.random::<f64>() * total;
    for &id in candidates {
        remaining -= weight(id);
        if remaining < 0.0 {
            return id;
        }
    }
    // Rounding can leave a sliver of mass unassigned; it belongs to the last candidate.
    candidates.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn params(edit: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut params = SamplingParams { seed: Some(7), ..SamplingParams::default() };
        edit(&mut params);
        params
    }

    /// Logits whose softmax is exactly `probs`.
    fn logits_for(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn support(params: &SamplingParams, logits: &[f32]) -> BTreeSet<u32> {
        let mut sampler = Sampler::new(params, &[]);
        (0..2_000).map(|_| sampler.sample(logits, &[])).collect()
    }

    fn greedy_pick(params: &SamplingParams, prompt: &[u32], logits: &[f32], out: &[u32]) -> u32 {
        Sampler::new(params, prompt).sample(logits, out)
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
        let greedy = params(|_| {});
        assert_eq!(greedy_pick(&greedy, &[], &[0.1, 3.0, -2.0, 3.0], &[]), 1);
        assert_eq!(greedy_pick(&greedy, &[], &[f32::NAN, 0.5, 0.5], &[]), 1);
        let top1 = params(|p| {
            p.temperature = 1.0;
            p.top_k = 1;
        });
        assert_eq!(greedy_pick(&top1, &[], &[0.0, 0.0, 4.0], &[]), 2);
    }

    #[test]
    fn top_k_top_p_and_min_p_restrict_the_support() {
        let logits = logits_for(&[0.05, 0.5, 0.15, 0.3]);
        let sampled = |edit: fn(&mut SamplingParams)| {
            support(
                &params(|p| {
                    p.temperature = 1.0;
                    edit(p);
                }),
                &logits,
            )
        };
        assert_eq!(sampled(|_| {}), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(sampled(|p| p.top_k = 2), BTreeSet::from([1, 3]));
        // 0.5 + 0.3 reaches 0.7; the 0.15 token is outside the nucleus.
        assert_eq!(sampled(|p| p.top_p = 0.7), BTreeSet::from([1, 3]));
        assert_eq!(sampled(|p| p.top_p = 0.9), BTreeSet::from([1, 2, 3]));
        // min_p 0.5: at least half as likely as 0.5.
        assert_eq!(sampled(|p| p.min_p = 0.5), BTreeSet::from([1, 3]));
        assert_eq!(sampled(|p| p.min_p = 0.25), BTreeSet::from([1, 2, 3]));
        assert_eq!(sampled(|p| p.top_k = 3), BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn impossible_tokens_are_never_drawn() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NAN, 0.0];
        let any = params(|p| p.temperature = 1.0);
        assert_eq!(support(&any, &logits), BTreeSet::from([1, 3]));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let penalized = params(|p| p.repetition_penalty = 1.5);
        // 2.0 / 1.5 < 1.9: the prompt token loses its lead.
        assert_eq!(greedy_pick(&penalized, &[0], &[2.0, 1.9], &[]), 1);
        // -1.0 * 1.5 < -1.2: a negative logit is pushed further down, not up.
        assert_eq!(greedy_pick(&penalized, &[0], &[-1.0, -1.2], &[]), 1);
        // Generated tokens count too, and a token seen in both is penalised once.
        assert_eq!(greedy_pick(&penalized, &[5], &[2.0, 1.9], &[0]), 1);
        assert_eq!(greedy_pick(&penalized, &[0], &[2.0, 1.0, 1.2], &[0, 0]), 0);
    }

    #[test]
    fn presence_and_frequency_penalties_apply_to_generated_tokens_only() {
        let presence = params(|p| p.presence_penalty = 0.5);
        assert_eq!(greedy_pick(&presence, &[0], &[2.0, 1.8], &[]), 0, "prompt is not penalised");
        assert_eq!(greedy_pick(&presence, &[], &[2.0, 1.8], &[0]), 1);
        let frequency = params(|p| p.frequency_penalty = 0.1);
        assert_eq!(greedy_pick(&frequency, &[], &[2.0, 1.8], &[0]), 0, "1.9 still leads");
        assert_eq!(greedy_pick(&frequency, &[], &[2.0, 1.8], &[0, 0, 0]), 1, "1.7 does not");
    }

    #[test]
    fn counts_follow_a_growing_output() {
        let mut sampler = Sampler::new(&params(|p| p.frequency_penalty = 0.1), &[]);
        let logits = [2.0, 1.8];
        assert_eq!(sampler.sample(&logits, &[]), 0);
        assert_eq!(sampler.sample(&logits, &[0]), 0);
        assert_eq!(sampler.sample(&logits, &[0, 0]), 0);
        assert_eq!(sampler.sample(&logits, &[0, 0, 0]), 1);
    }

    #[test]
    fn same_seed_gives_the_same_tokens() {
        let logits = vec![0.0; 50];
        let draws = |seed: u64| {
            let mut sampler = Sampler::new(
                &params(|p| {
                    p.temperature = 0.8;
                    p.seed = Some(seed);
                }),
                &[],
            );
            (0..64).map(|_| sampler.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
    }

    #[test]
    fn low_temperature_sharpens_the_distribution() {
        let logits = [1.0, 0.0];
        let count_top = |temperature: f32| {
            let mut sampler = Sampler::new(&params(|p| p.temperature = temperature), &[]);
            (0..1_000).filter(|_| sampler.sample(&logits, &[]) == 0).count()
        };
        assert!(count_top(0.1) > 990);
        assert!((600..850).contains(&count_top(1.0)));
    }
}
