//! `POST /v1/completions`.

use axum::extract::State;
use axum::response::Response;
use hearth_engine::{GenerateRequest, Prompt};
use serde::Deserialize;
use serde_json::Value;

use super::answer;
use super::error::OpenAiError;
use super::extract::OpenAiJson;
use super::response::{Encoder, Header};
use super::sampling::{find_model, CommonFields};
use crate::state::AppState;

/// The completions-only fields; the shared ones are in [`CommonFields`].
#[derive(Debug, Deserialize)]
struct CompletionFields {
    prompt: Value,
    /// Here `logprobs` is a count of alternatives per token, not a flag.
    logprobs: Option<u64>,
    echo: Option<bool>,
    best_of: Option<u64>,
    suffix: Option<String>,
}

impl CompletionFields {
    fn check_supported(&self) -> Result<(), OpenAiError> {
        if self.logprobs.is_some() {
            return Err(OpenAiError::invalid("logprobs", "logprobs are not supported"));
        }
        if self.echo == Some(true) {
            return Err(OpenAiError::invalid("echo", "echo is not supported"));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(OpenAiError::invalid("best_of", "only best_of=1 is supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(OpenAiError::invalid("suffix", "suffix is not supported"));
        }
        Ok(())
    }

    /// One prompt: a string, a list of one string, a list of token ids, or a list of one list
    /// of token ids. Batches of prompts are refused: send one request per prompt.
    fn prompt(&self) -> Result<Prompt, OpenAiError> {
        let batch_error =
            || OpenAiError::invalid("prompt", "only one prompt per request is supported");
        match &self.prompt {
            Value::String(text) => Ok(Prompt::Text(text.clone())),
            Value::Array(items) => match items.as_slice() {
                [] => Err(OpenAiError::invalid("prompt", "must not be empty")),
                [Value::String(text)] => Ok(Prompt::Text(text.clone())),
                [Value::Array(ids)] => token_ids(ids).map(Prompt::Tokens),
                [Value::Number(_), ..] => token_ids(items).map(Prompt::Tokens),
                [Value::String(_) | Value::Array(_), ..] => Err(batch_error()),
                _ => Err(prompt_type_error()),
            },
            _ => Err(prompt_type_error()),
        }
    }
}

fn prompt_type_error() -> OpenAiError {
    OpenAiError::invalid("prompt", "must be a string, a list of one string, or a list of token ids")
}

fn token_ids(items: &[Value]) -> Result<Vec<u32>, OpenAiError> {
    items
        .iter()
        .map(|item| item.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| {
            OpenAiError::invalid("prompt", "token ids must be non-negative 32-bit integers")
        })
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    body: OpenAiJson,
) -> Result<Response, OpenAiError> {
    let common: CommonFields = body.parse()?;
    let fields: CompletionFields = body.parse()?;
    let model = find_model(&state, &common.model)?;
    fields.check_supported()?;
    let engine = &model.engine;
    let sampling = common.sampling(engine.info().context_length)?;
    let request = GenerateRequest { prompt: fields.prompt()?, sampling };
    let stream = engine
        .submit_async(request)
        .await
        .map_err(|err| OpenAiError::from_submit(err, "prompt"))?;
    let encoder = Encoder { header: Header::new("cmpl", &common.model) };
    answer(&state, stream, encoder, &common).await
}
