//! Validating a Cog prediction's `input` and turning it into a canonical request.
//!
//! Every problem is reported, not just the first, in pydantic's 422 shape, as Cog does.

use std::collections::HashMap;

use hearth_protocol::{
    CanonicalRequest, Message, MessageRole, RawPrompt, SamplingOptions, SamplingParams,
};
use serde_json::{Map, Value};

use super::error::{cog_field, CogError, Detail};
use super::fields::{self, DefaultValue, Field, Kind, FIELDS};

/// A checked input value.
#[derive(Debug, Clone)]
enum Checked {
    Str(String),
    Int(i64),
    Num(f64),
    Null,
}

/// A validated Cog input, ready to become a canonical request.
#[derive(Debug, Clone)]
pub(crate) struct CogInput {
    pub prompt: String,
    pub system_prompt: String,
    pub sampling: SamplingParams,
}

impl CogInput {
    /// Checks `input` against the input table: unknown fields, types and ranges.
    pub(crate) fn parse(input: Option<&Value>, context_length: usize) -> Result<Self, CogError> {
        let object = match input {
            Some(Value::Object(object)) => object,
            Some(_) => return Err(invalid_at(&["body", "input"], "input must be a JSON object")),
            None => return Err(CogError::Invalid(vec![Detail::missing(&["body", "input"])])),
        };
        let mut details: Vec<Detail> = unknown_fields(object);
        let mut values = HashMap::new();
        for field in FIELDS {
            let value = object.get(field.name);
            if value.is_none() && matches!(field.default, DefaultValue::Required) {
                details.push(Detail::missing(&["body", "input", field.name]));
                continue;
            }
            match check(field, value, context_length) {
                Ok(value) => {
                    values.insert(field.name, value);
                }
                Err(msg) => details.push(Detail::input(field.name, msg)),
            }
        }
        if !details.is_empty() {
            return Err(CogError::Invalid(details));
        }
        Ok(Self::from_checked(&values))
    }

    fn from_checked(values: &HashMap<&str, Checked>) -> Self {
        let text = |name| match values.get(name) {
            Some(Checked::Str(s)) => s.clone(),
            _ => String::new(),
        };
        let int = |name| match values.get(name) {
            Some(Checked::Int(i)) => Some(*i),
            _ => None,
        };
        let num = |name, fallback| match values.get(name) {
            Some(Checked::Num(n)) => *n as f32,
            _ => fallback,
        };
        let defaults = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: num("temperature", defaults.temperature),
            top_p: num("top_p", defaults.top_p),
            top_k: int("top_k").map_or(0, |k| k.max(0) as usize),
            presence_penalty: num("presence_penalty", 0.0),
            frequency_penalty: num("frequency_penalty", 0.0),
            seed: int("seed").map(|s| s as u64),
            max_tokens: int("max_tokens").map_or(defaults.max_tokens, |m| m.max(0) as usize),
            stop: split_stop_sequences(&text("stop_sequences")),
            ..defaults
        };
        Self { prompt: text("prompt"), system_prompt: text("system_prompt"), sampling }
    }

    /// The canonical request for model `model`: with a chat template, `system_prompt` and
    /// `prompt` become a conversation the template formats (as Replicate's language models
    /// do); without one, the text is given to the model raw. Sampling is validated here, so
    /// errors name Cog's fields.
    pub(crate) fn to_canonical(
        &self,
        model: &str,
        has_chat_template: bool,
    ) -> Result<CanonicalRequest, CogError> {
        let s = &self.sampling;
        s.validate().map_err(|err| CogError::input(cog_field(&err.field), err.message))?;
        let mut request = CanonicalRequest {
            model: model.to_owned(),
            sampling: SamplingOptions {
                temperature: Some(s.temperature),
                top_p: Some(s.top_p),
                top_k: (s.top_k > 0).then(|| u32::try_from(s.top_k).unwrap_or(u32::MAX)),
                seed: s.seed,
                presence_penalty: Some(s.presence_penalty),
                frequency_penalty: Some(s.frequency_penalty),
                ..SamplingOptions::default()
            },
            max_tokens: Some(u32::try_from(s.max_tokens).unwrap_or(u32::MAX)),
            stop: s.stop.clone(),
            ..CanonicalRequest::default()
        };
        if has_chat_template {
            request.system = Some(self.system_prompt.clone()).filter(|s| !s.is_empty());
            request.messages = vec![Message::text(MessageRole::User, self.prompt.clone())];
        } else if self.system_prompt.is_empty() {
            request.prompt = Some(RawPrompt::Text(self.prompt.clone()));
        } else {
            let text = format!("{}\n\n{}", self.system_prompt, self.prompt);
            request.prompt = Some(RawPrompt::Text(text));
        }
        Ok(request)
    }
}

fn invalid_at(loc: &[&str], msg: &str) -> CogError {
    CogError::Invalid(vec![Detail::at(loc, msg)])
}

fn unknown_fields(object: &Map<String, Value>) -> Vec<Detail> {
    let known = || FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
    object
        .keys()
        .filter(|key| fields::find(key).is_none())
        .map(|key| {
            Detail::input(key, format!("unexpected input field; this model takes: {}", known()))
        })
        .collect()
}

/// Checks one field's value, or fills in its default.
fn check(field: &Field, value: Option<&Value>, context_length: usize) -> Result<Checked, String> {
    let value = match (value, field.default) {
        // `parse` reports a missing required field before it gets here.
        (None, DefaultValue::Required) => return Err("field required".to_owned()),
        (None, default) | (Some(Value::Null), default @ DefaultValue::Null) => {
            return Ok(match default {
                DefaultValue::Str(s) => Checked::Str(s.to_owned()),
                DefaultValue::Int(i) => Checked::Int(i),
                DefaultValue::Num(n) => Checked::Num(n),
                DefaultValue::Null | DefaultValue::Required => Checked::Null,
            })
        }
        (Some(value), _) => value,
    };
    let checked = match (field.kind, value) {
        (Kind::String, Value::String(s)) => Checked::Str(s.clone()),
        (Kind::Integer, Value::Number(n)) => {
            Checked::Int(as_integer(n).ok_or("value is not a valid integer")?)
        }
        (Kind::Number, Value::Number(n)) => {
            Checked::Num(n.as_f64().ok_or("value is not a valid number")?)
        }
        (kind, _) => return Err(format!("value is not a valid {}", kind.as_str())),
    };
    check_range(field, &checked, context_length)?;
    Ok(checked)
}

/// An integer, or a float with no fractional part (pydantic accepts `5.0` for an int).
fn as_integer(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && f.abs() < i64::MAX as f64).then_some(f as i64)
    })
}

fn check_range(field: &Field, value: &Checked, context_length: usize) -> Result<(), String> {
    let v = match value {
        Checked::Int(i) => *i as f64,
        Checked::Num(n) => *n,
        Checked::Str(_) | Checked::Null => return Ok(()),
    };
    if let Some(min) = field.minimum {
        if field.exclusive_minimum && v <= min {
            return Err(format!("ensure this value is greater than {min}"));
        }
        if v < min {
            return Err(format!("ensure this value is greater than or equal to {min}"));
        }
    }
    if let Some(max) = field.maximum.resolve(context_length) {
        if v > max {
            return Err(format!("ensure this value is less than or equal to {max}"));
        }
    }
    Ok(())
}

/// Replicate's language models take stop sequences as one comma-separated string; empty pieces
/// are dropped and the rest kept exactly, spaces included.
fn split_stop_sequences(text: &str) -> Vec<String> {
    text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields_of(err: CogError) -> Vec<String> {
        match err {
            CogError::Invalid(details) => details.into_iter().map(|d| d.loc.join(".")).collect(),
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn fills_defaults_and_splits_stop_sequences() {
        let input = json!({"prompt": "hi", "stop_sequences": "<end>,,\n\n", "seed": 7});
        let parsed = CogInput::parse(Some(&input), 2048).unwrap();
        assert_eq!(parsed.prompt, "hi");
        assert_eq!(parsed.sampling.max_tokens, 512);
        assert_eq!(parsed.sampling.top_k, 50);
        assert_eq!(parsed.sampling.seed, Some(7));
        assert_eq!(parsed.sampling.stop, vec!["<end>".to_owned(), "\n\n".to_owned()]);
        assert!((parsed.sampling.temperature - 0.7).abs() < 1e-6);
    }

    #[test]
    fn reports_every_bad_field() {
        let input = json!({
            "prompt": 5, "temperature": 9.0, "top_p": 0, "max_tokens": 1.5, "bogus": true,
            "seed": null,
        });
        let mut got = fields_of(CogInput::parse(Some(&input), 2048).unwrap_err());
        got.sort();
        let want = ["max_tokens", "prompt", "temperature", "top_p", "bogus"];
        let mut want: Vec<String> = want.iter().map(|f| format!("body.input.{f}")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn max_tokens_is_bounded_by_the_context() {
        let input = json!({"prompt": "hi", "max_tokens": 4096});
        assert_eq!(
            fields_of(CogInput::parse(Some(&input), 2048).unwrap_err()),
            ["body.input.max_tokens"]
        );
    }

    #[test]
    fn a_missing_field_is_a_missing_value_error_as_in_cog() {
        let CogError::Invalid(details) = CogInput::parse(Some(&json!({})), 64).unwrap_err() else {
            panic!("expected a 422")
        };
        assert_eq!(
            (details[0].kind, details[0].msg.as_str()),
            ("value_error.missing", "field required")
        );
    }

    #[test]
    fn missing_prompt_and_missing_input() {
        assert_eq!(
            fields_of(CogInput::parse(Some(&json!({})), 64).unwrap_err()),
            ["body.input.prompt"]
        );
        assert_eq!(fields_of(CogInput::parse(None, 64).unwrap_err()), ["body.input"]);
    }
}
