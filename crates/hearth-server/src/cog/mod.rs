//! The Cog container API, for one model: at `/cog/{model}/…`, and at the root for the catalog's
//! default model.

mod begin;
pub(crate) mod embeddings;
mod error;
mod fields;
mod handlers;
mod input;
mod predict;
mod prediction;
mod predictor_openapi;
pub(crate) mod python;
mod python_run;
pub(crate) mod registry;
pub(crate) mod replicate;
mod request;
mod run;
mod schema;
mod sse;
mod target;
mod webhook;

use axum::routing::{get, post, put};
use axum::Router;

use crate::state::AppState;

/// Every model's Cog API at `/cog/{model}/…`; `/cog/{model}/` is its index too, as Cog
/// answers `/` (nesting alone matches only `/cog/{model}`).
pub(crate) fn model_routes() -> Router<AppState> {
    Router::new().nest("/cog/{model}", routes()).route("/cog/{model}/", get(handlers::index))
}

/// The routes of one model's Cog API, relative to where they are mounted.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(handlers::index))
        .route("/health-check", get(handlers::health_check))
        .route("/openapi.json", get(handlers::openapi))
        .route("/shutdown", post(handlers::shutdown))
        .route("/predictions", post(predict::create))
        .route("/predictions/{id}", put(predict::create_idempotent))
        .route("/predictions/{id}/cancel", post(predict::cancel))
}
