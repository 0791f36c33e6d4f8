//! The scheduler's limits and knobs, validated once when the engine loads its settings.

/// Limits of one scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running (holding KV blocks) at once.
    pub max_num_seqs: usize,
    /// Most new tokens computed in one step, over all sequences.
    pub max_batch_tokens: usize,
    /// Most prompt tokens of one sequence computed in one step.
    pub max_prefill_chunk: usize,
    /// Most prompt tokens, over all sequences, in a step that also decodes: a step's time grows
    /// with its prefill rows, and every running stream waits for the step, so this bounds the
    /// gap between their tokens. A step with nothing to decode takes whole chunks, so an idle
    /// engine answers a new prompt as fast as before.
    pub max_prefill_tokens_while_decoding: usize,
    /// A prompt that has waited this many steps since it arrived without completing its prefill
    /// gets its next chunk before decodes take the budget.
    pub max_prefill_wait_steps: u64,
    /// Most sequences waiting to be admitted for the first time; more is answered with
    /// [`AdmitError::QueueFull`](super::AdmitError::QueueFull).
    pub max_waiting: usize,
    /// Percent of the KV blocks an admission must leave free while other sequences run, so that
    /// running sequences can grow for a while before one has to be preempted. Waived when
    /// nothing runs, so that any sequence that fits the cache can start.
    pub kv_watermark_percent: usize,
}

impl Default for SchedulerConfig {
    /// Sized for a CPU: a few hundred tokens per step keep one step well under a second on a
    /// small model, and the chunk leaves half the budget to decodes.
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            max_batch_tokens: 512,
            max_prefill_chunk: 256,
            max_prefill_tokens_while_decoding: 128,
            max_prefill_wait_steps: 8,
            max_waiting: 256,
            kv_watermark_percent: 1,
        }
    }
}

impl SchedulerConfig {
    /// Rejects limits that would stop every sequence from making progress.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_prefill_chunk", self.max_prefill_chunk),
            ("max_prefill_tokens_while_decoding", self.max_prefill_tokens_while_decoding),
        ];
        for (field, value) in counts {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.kv_watermark_percent > 100 {
            return Err(ConfigError::NotAPercent {
                field: "kv_watermark_percent",
                value: self.kv_watermark_percent,
            });
        }
        Ok(())
    }
}

/// A [`SchedulerConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("scheduler setting `{field}` must be at least 1")]
    Zero { field: &'static str },
    #[error("scheduler setting `{field}` is a percentage (0 to 100), got {value}")]
    NotAPercent { field: &'static str, value: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_and_bad_percentages_are_rejected() {
        assert_eq!(SchedulerConfig::default().validate(), Ok(()));
        let config = SchedulerConfig { max_prefill_chunk: 0, ..SchedulerConfig::default() };
        assert_eq!(config.validate(), Err(ConfigError::Zero { field: "max_prefill_chunk" }));
        let config = SchedulerConfig { kv_watermark_percent: 101, ..SchedulerConfig::default() };
        assert_eq!(
            config.validate(),
            Err(ConfigError::NotAPercent { field: "kv_watermark_percent", value: 101 })
        );
    }
}
