//! The OpenAI-compatible API: chat completions, completions and the model list.

mod chat;
mod completions;
mod embeddings;
mod error;
mod extract;
mod models;
mod response;
mod sampling;
mod stream;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hearth_engine::GenerationStream;

pub(crate) use error::OpenAiError;
use response::Encoder;
use sampling::CommonFields;

use crate::generation::Generation;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list))
        // A wildcard, since model ids may contain `/`.
        .route("/v1/models/{*model}", get(models::retrieve))
}

/// Answers a submitted request as a stream or as one response, as the caller asked. Shutdown's
/// deadline cancels it like any other in-flight request.
async fn answer(
    state: &AppState,
    events: GenerationStream,
    encoder: Encoder,
    common: &CommonFields,
) -> Result<Response, OpenAiError> {
    let generation = Generation::new(events, state.cancel_all().clone());
    if common.is_stream() {
        let keep_alive = state.config().sse_keep_alive;
        Ok(stream::stream(generation, encoder, common.include_usage(), keep_alive))
    } else {
        Ok(stream::complete(generation, encoder).await?.into_response())
    }
}
