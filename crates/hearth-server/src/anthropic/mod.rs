//! The Anthropic-compatible API: `POST /v1/messages`, whole or streamed, for local and upstream
//! models alike. Errors use Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.

mod messages;

use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::relay::{decorate, error_type, RelayError};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/messages", post(messages::create))
}

/// A failed request, in Anthropic's error shape.
#[derive(Debug)]
pub(crate) struct AnthropicError(RelayError);

impl From<RelayError> for AnthropicError {
    fn from(err: RelayError) -> Self {
        // Canonical validation names canonical fields; the caller wrote Anthropic's.
        Self(err.rename_field("stop", "stop_sequences"))
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = json!({
            "type": "error",
            "error": { "type": error_type(status), "message": self.0.to_string() },
        });
        decorate((status, Json(body)).into_response(), &self.0)
    }
}
