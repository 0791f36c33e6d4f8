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

    /// Checks every field's range (the rules are [`check_value`]'s, the same that a canonical
    /// request is checked by). Field names are the canonical ones; surfaces that use other
    /// names map the error's `field` back to theirs.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_value("temperature", self.temperature)?;
        check_value("top_p", self.top_p)?;
        check_value("min_p", self.min_p)?;
        check_value("repetition_penalty", self.repetition_penalty)?;
        check_value("presence_penalty", self.presence_penalty)?;
        check_value("frequency_penalty", self.frequency_penalty)?;
        check_max_tokens(self.max_tokens as u64)?;
        check_stop(&self.stop)
    }
}

/// Sampling parameters that passed [`SamplingParams::validate`]. [`SamplingParams::validated`]
/// is the only way to make one, so whoever is handed one (the engine) need not check again.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling(SamplingParams);

impl SamplingParams {
    pub fn validated(self) -> Result<ValidSampling, ValidationError> {
        self.validate()?;
        Ok(ValidSampling(self))
    }
}

impl ValidSampling {
    pub fn into_inner(self) -> SamplingParams {
        self.0
    }
}

impl std::ops::Deref for ValidSampling {
    type Target = SamplingParams;

    fn deref(&self) -> &SamplingParams {
        &self.0
    }
}

/// The one rule for each sampling value, wherever it is checked: a canonical request at the
/// gateway's door, and the engine's parameters. A surface whose wire format promises a
/// narrower range (OpenAI's temperature up to 2, a Cog schema's maximum) checks that at its
/// edge too.
pub fn check_value(field: &str, v: f32) -> Result<(), ValidationError> {
    let in_range = |lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
    let ok = match field {
        "temperature" => in_range(0.0, MAX_TEMPERATURE),
        "top_p" => v.is_finite() && v > 0.0 && v <= 1.0,
        "min_p" => in_range(0.0, 1.0),
        "repetition_penalty" => v.is_finite() && v > 0.0,
        "presence_penalty" | "frequency_penalty" => in_range(-2.0, 2.0),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    let range = match field {
        "temperature" => format!("between 0 and {MAX_TEMPERATURE}"),
        "top_p" => "> 0 and <= 1".to_owned(),
        "min_p" => "between 0 and 1".to_owned(),
        "repetition_penalty" => "> 0".to_owned(),
        _ => "between -2 and 2".to_owned(),
    };
    Err(ValidationError::new(field, format!("must be {range}, got {v}")))
}

/// The highest temperature any route is asked for: far past any useful value, but finite.
pub const MAX_TEMPERATURE: f32 = 100.0;

pub fn check_max_tokens(max_tokens: u64) -> Result<(), ValidationError> {
    if max_tokens == 0 {
        return Err(ValidationError::new("max_tokens", "must be at least 1"));
    }
    Ok(())
}

pub fn check_stop(stop: &[String]) -> Result<(), ValidationError> {
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ValidationError::new(
            "stop",
            format!("may hold at most {MAX_STOP_SEQUENCES} sequences"),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ValidationError::new("stop", "must not contain empty strings"));
    }
    Ok(())
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
