//! `POST /v1/completions`: a raw prompt (text or token ids) run through the gateway like a
//! chat request, so it has a run id, a ledger record and a resumable stream. Only local models
//! take raw prompts.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::RunOpening;
use hearth_protocol::wire::openai;
use hearth_protocol::{CanonicalRequest, CanonicalResponse, RawPrompt};
use serde::Deserialize;
use serde_json::Value;

use super::error::OpenAiError;
use super::extract::OpenAiJson;
use super::sampling::{find_model, CommonFields};
use crate::relay::{self, OpenAiChat, StreamFormat};
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
    fn prompt(&self) -> Result<RawPrompt, OpenAiError> {
        let batch_error =
            || OpenAiError::invalid("prompt", "only one prompt per request is supported");
        match &self.prompt {
            Value::String(text) => Ok(RawPrompt::Text(text.clone())),
            Value::Array(items) => match items.as_slice() {
                [] => Err(OpenAiError::invalid("prompt", "must not be empty")),
                [Value::String(text)] => Ok(RawPrompt::Text(text.clone())),
                [Value::Array(ids)] => token_ids(ids).map(RawPrompt::Tokens),
                [Value::Number(_), ..] => token_ids(items).map(RawPrompt::Tokens),
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
    headers: HeaderMap,
    body: OpenAiJson,
) -> Result<Response, OpenAiError> {
    let common: CommonFields = body.parse()?;
    let fields: CompletionFields = body.parse()?;
    fields.check_supported()?;
    // A raw prompt runs on a local model only; its context sets the default `max_tokens`.
    let model = find_model(&state, &common.model)?;
    let context_length = model.engine.info().context_length;
    let (sampling, max_tokens, stop) = common.canonical(context_length)?;
    let request = CanonicalRequest {
        model: common.model.clone(),
        prompt: Some(fields.prompt()?),
        sampling,
        max_tokens: Some(max_tokens),
        stop,
        stream: common.is_stream(),
        ..CanonicalRequest::default()
    };
    let caller = relay::caller(&headers)?;
    let opening = RunOpening::new();
    let completion = OpenAiChat::completion(&opening.run_id, &common.model, common.include_usage());
    let format = StreamFormat::OpenAiCompletion(completion.clone());
    let run = relay::start(&state, caller, request, opening, &format).await?;
    let whole = move |answer| whole(&completion, answer);
    Ok(relay::answer(&state, run, format, common.is_stream(), whole).await?)
}

fn whole(format: &OpenAiChat, answer: CanonicalResponse) -> Response {
    let body =
        openai::completion_from_canonical(&answer, &format.id, &format.model, format.created);
    Json(body).into_response()
}
