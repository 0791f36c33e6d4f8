//! The request fields the chat and completions endpoints share: sampling, limits, streaming.

use hearth_gateway::{CatalogEntry, LocalModel, StartError};
use hearth_protocol::{SamplingOptions, SamplingParams};
use serde::Deserialize;

use super::error::OpenAiError;
use crate::defaults;
use crate::relay::RelayError;
use crate::state::AppState;

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints take. Every field is optional; `null` means "not given".
#[derive(Debug, Deserialize)]
pub(crate) struct CommonFields {
    pub model: String,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Extension (vLLM): -1 or 0 means no top-k cut.
    top_k: Option<i64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    /// Extension (vLLM): keep generating past end-of-sequence tokens.
    ignore_eos: Option<bool>,
    n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

impl CommonFields {
    pub(crate) fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// Sampling parameters, validated. Defaults follow OpenAI: temperature 1, top_p 1, and
    /// generation up to the end of the context when no token limit is given.
    pub(crate) fn sampling(&self, context_length: usize) -> Result<SamplingParams, OpenAiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(OpenAiError::invalid("n", "Only n=1 is supported"));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => context_length,
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(k) => {
                return Err(OpenAiError::invalid(
                    "top_k",
                    format!("must be -1, 0 or positive, got {k}"),
                ))
            }
        };
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults::OPENAI_TEMPERATURE),
            top_k,
            top_p: self.top_p.unwrap_or(defaults::OPENAI_TOP_P),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            // OpenAI seeds are signed 64-bit; keep every bit so each seed stays distinct.
            seed: self.seed.map(|s| s as u64),
            max_tokens,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(list)) => list.clone(),
            },
            ignore_eos: self.ignore_eos.unwrap_or(false),
        };
        params.validate().map_err(|err| {
            let param = if err.field == "max_tokens" && self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                err.field.as_str()
            };
            OpenAiError::invalid(param, err.to_string())
        })?;
        Ok(params)
    }
}

impl CommonFields {
    /// The sampling options, `max_tokens` and stop sequences of a canonical request, validated
    /// as [`CommonFields::sampling`] does (errors name OpenAI's fields).
    pub(crate) fn canonical(
        &self,
        context_length: usize,
    ) -> Result<(SamplingOptions, u32, Vec<String>), OpenAiError> {
        let params = self.sampling(context_length)?;
        let options = SamplingOptions {
            temperature: Some(params.temperature),
            top_p: Some(params.top_p),
            top_k: (params.top_k > 0).then(|| u32::try_from(params.top_k).unwrap_or(u32::MAX)),
            seed: params.seed,
            presence_penalty: Some(params.presence_penalty),
            frequency_penalty: Some(params.frequency_penalty),
            min_p: Some(params.min_p),
            repetition_penalty: Some(params.repetition_penalty),
            ignore_eos: Some(params.ignore_eos),
        };
        let max_tokens = u32::try_from(params.max_tokens).unwrap_or(u32::MAX);
        Ok((options, max_tokens, params.stop))
    }
}

/// The ready model called `name`.
pub(crate) fn find_model(state: &AppState, name: &str) -> Result<LocalModel, OpenAiError> {
    let catalog = state.catalog();
    match catalog.entry(name) {
        Some(CatalogEntry::Ready(model)) => Ok(model.clone()),
        Some(CatalogEntry::Failed { reason }) => {
            Err(OpenAiError::ModelUnavailable { model: name.to_owned(), reason: reason.clone() })
        }
        // `PACKAGE:ADAPTER` runs on the package's engine.
        None => match catalog.adapter_base(name) {
            Ok(Some((model, _))) => Ok(model.clone()),
            Ok(None) => Err(OpenAiError::ModelNotFound(name.to_owned())),
            Err(err) => Err(RelayError::Start(StartError::Model(err)).into()),
        },
    }
}
