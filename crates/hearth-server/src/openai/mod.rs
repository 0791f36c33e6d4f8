//! The OpenAI-compatible API: chat completions, responses, completions, embeddings and the
//! model list.

mod chat;
mod completions;
mod embeddings;
mod error;
mod extract;
mod models;
mod responses;
mod sampling;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub(crate) use responses::ResponseStore;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route("/v1/models", get(models::list))
        // A wildcard, since model ids may contain `/`.
        // The same path carries Replicate's `POST /v1/models/{owner}/{name}/predictions`.
        .route(
            "/v1/models/{*model}",
            get(models::retrieve).post(crate::cog::replicate::create_for_model),
        )
}
