//! `POST /v1/chat/completions`, for local and upstream models alike: the body is parsed into the
//! canonical request once, and the gateway routes it (failover, run buffer, ledger).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::RunOpening;
use hearth_protocol::wire::openai::{self, ChatCompletionRequest};
use hearth_protocol::CanonicalResponse;
use serde::Deserialize;

use super::error::OpenAiError;
use super::extract::OpenAiJson;
use crate::defaults;
use crate::relay::{self, OpenAiChat, StreamFormat};
use crate::state::AppState;

/// Fields of OpenAI's API that Hearth does not implement. The wire type ignores unknown fields,
/// as OpenAI-compatible servers do; these are refused instead, since ignoring them would change
/// what the caller gets without telling them.
#[derive(Debug, Deserialize)]
struct Unsupported {
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
    logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Unsupported {
    fn check(&self) -> Result<(), OpenAiError> {
        if self.logprobs == Some(true) || self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(OpenAiError::invalid("logprobs", "logprobs are not supported"));
        }
        if self.logit_bias.as_ref().is_some_and(|bias| !bias.is_empty()) {
            return Err(OpenAiError::invalid("logit_bias", "logit_bias is not supported"));
        }
        Ok(())
    }
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: OpenAiJson,
) -> Result<Response, OpenAiError> {
    body.parse::<Unsupported>()?.check()?;
    let wire: ChatCompletionRequest = body.into_typed()?;
    let include_usage = wire.stream_options.is_some_and(|o| o.include_usage);
    let mut request = openai::to_canonical(wire)?;
    defaults::openai(&mut request);
    let (model, stream) = (request.model.clone(), request.stream);
    let caller = relay::caller(&headers)?;
    let opening = RunOpening::new();
    let chat = OpenAiChat::new(&opening.run_id, &model, include_usage);
    let format = StreamFormat::OpenAiChat(chat.clone());
    let run = relay::start(&state, caller, request, opening, &format).await?;
    let whole = {
        let chat = chat.clone();
        move |answer| whole(&chat, answer)
    };
    Ok(relay::answer(&state, run, format, stream, whole).await?)
}

fn whole(chat: &OpenAiChat, answer: CanonicalResponse) -> Response {
    let mut body = openai::response_from_canonical(&answer, &chat.id, chat.created);
    // The id the caller asked for, as in the stream; the route is in a header.
    body.model.clone_from(&chat.model);
    Json(body).into_response()
}
