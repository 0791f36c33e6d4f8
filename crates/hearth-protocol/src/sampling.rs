use serde::{Deserialize, Serialize};

/// A request field that failed validation. `field` is the name the caller used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// How to pick tokens and when to stop. Surfaces fill this from their own field names and call
/// [`SamplingParams::validate`] before a request reaches an engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// 0.0 means no min-p cut.
    pub min_p: f32,
    /// 1.0 means none; > 1 discourages tokens already seen in prompt or output.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Same seed and same input give the same output, batched or not.
    pub seed: Option<u64>,
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; the match is not returned.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Most stop sequences one request may carry.
pub const MAX_STOP_SEQUENCES: usize = 16;

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every field's range. Field names are the canonical ones; surfaces that use other
    /// names map the error's `field` back to theirs.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let finite_in = |field: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(ValidationError::new(field, format!("must be between {lo} and {hi}, got {v}")))
            }
        };
        finite_in("temperature", self.temperature, 0.0, 100.0)?;
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ValidationError::new(
                "top_p",
                format!("must be > 0 and <= 1, got {}", self.top_p),
            ));
        }
        finite_in("min_p", self.min_p, 0.0, 1.0)?;
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(ValidationError::new(
                "repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            ));
        }
        finite_in("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        finite_in("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.max_tokens == 0 {
            return Err(ValidationError::new("max_tokens", "must be at least 1"));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return Err(ValidationError::new(
                "stop",
                format!("may hold at most {MAX_STOP_SEQUENCES} sequences"),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(ValidationError::new("stop", "must not contain empty strings"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_greedy() {
        let p = SamplingParams::default();
        assert!(p.validate().is_ok());
        assert!(p.is_greedy());
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingParams { min_p: 2.0, ..Default::default() }, "min_p"),
            (
                SamplingParams { repetition_penalty: 0.0, ..Default::default() },
                "repetition_penalty",
            ),
            (SamplingParams { presence_penalty: 3.0, ..Default::default() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: -3.0, ..Default::default() }, "frequency_penalty"),
            (SamplingParams { max_tokens: 0, ..Default::default() }, "max_tokens"),
            (SamplingParams { stop: vec![String::new()], ..Default::default() }, "stop"),
        ];
        for (params, field) in cases {
            let err = params.validate().expect_err(field);
            assert_eq!(err.field, field);
        }
    }
}
