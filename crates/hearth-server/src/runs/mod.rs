//! Hearth's own API: the unified run endpoint (`POST /v1/run/{model}`, the analog of
//! `AI.run(model, input, options)`), control of runs (status, resume, cancel) and the spend
//! ledger's usage report. A model served by its Python predictor takes its own input
//! (`{"input": {...}}`, see `predict.rs`). Errors: `{"error": {"type", "message", "param", "code"}}`.

mod control;
mod predict;
mod run;
pub(crate) mod usage;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::relay::{decorate, error_type, RelayError};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        // A wildcard, since model ids may contain `/` (`provider/model`).
        .route("/v1/run/{*model}", post(run::run))
        .route("/v1/runs/{id}", get(control::status))
        .route("/v1/runs/{id}/events", get(control::events))
        .route("/v1/runs/{id}/cancel", post(control::cancel))
        .route("/v1/usage", get(usage::usage))
}

/// A failed request of the run API.
#[derive(Debug)]
pub(crate) struct ApiError(RelayError);

impl From<RelayError> for ApiError {
    fn from(err: RelayError) -> Self {
        Self(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = json!({
            "error": {
                "type": error_type(status),
                "message": self.0.to_string(),
                "param": self.0.param(),
                "code": self.0.code(),
            },
        });
        decorate((status, Json(body)).into_response(), &self.0)
    }
}
