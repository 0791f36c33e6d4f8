//! Cog's informational routes: the index, the health check, the OpenAPI document, and shutdown.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::CogError;
use super::prediction;
use super::schema;
use super::target::{CogModel, CogModelState};
use crate::state::AppState;

/// The Cog HTTP API version these routes follow (coglet's, whose response shapes we match).
pub(crate) const COG_VERSION: &str = "0.21.0";

pub(crate) async fn index(target: CogModel) -> Json<Value> {
    Json(index_body(&target.prefix))
}

/// Cog's index document for a model whose routes sit under `prefix` (generative and embedding
/// models alike).
pub(super) fn index_body(prefix: &str) -> Value {
    let url = |path: &str| format!("{prefix}{path}");
    json!({
        "cog_version": COG_VERSION,
        "docs_url": Value::Null,
        "openapi_url": url("/openapi.json"),
        "shutdown_url": url("/shutdown"),
        "healthcheck_url": url("/health-check"),
        "predictions_url": url("/predictions"),
        "predictions_idempotent_url": url("/predictions/{prediction_id}"),
        "predictions_cancel_url": url("/predictions/{prediction_id}/cancel"),
    })
}

/// Always 200, as Cog's is; the status says whether a prediction would be taken now.
pub(crate) async fn health_check(
    State(state): State<AppState>,
    target: CogModelState,
) -> Json<Value> {
    let (status, setup_status, logs) = match &target {
        CogModelState::Ready(target) => (readiness(target), "succeeded", String::new()),
        CogModelState::Failed { reason } => ("SETUP_FAILED", "failed", reason.clone()),
    };
    Json(health_body(&state, status, setup_status, &logs))
}

/// Cog's health-check document (generative and embedding models alike).
pub(super) fn health_body(state: &AppState, status: &str, setup_status: &str, logs: &str) -> Value {
    json!({
        "status": status,
        "setup": {
            "started_at": prediction::timestamp(state.setup_started_at()),
            "completed_at": prediction::timestamp(state.setup_completed_at()),
            "status": setup_status,
            "logs": logs,
        },
        "version": { "hearth": env!("CARGO_PKG_VERSION"), "cog": COG_VERSION },
    })
}

/// BUSY when every slot is taken: as many requests run as cog.yaml's `concurrency.max`, or
/// requests are already queueing in the engine (which happens only once it is full). Without a
/// `concurrency.max` the engine's own batching decides, so only queueing counts.
fn readiness(target: &CogModel) -> &'static str {
    let stats = target.model.engine.stats();
    let slots_full = target.model.cog.max_concurrency().is_some_and(|max| stats.num_running >= max);
    if slots_full || stats.num_waiting > 0 {
        "BUSY"
    } else {
        "READY"
    }
}

pub(crate) async fn openapi(target: CogModel) -> Json<Value> {
    let context_length = target.model.engine.info().context_length;
    Json(schema::openapi(&target.name, &target.prefix, context_length))
}

/// Starts a graceful shutdown of the whole daemon, when the configuration allows it.
pub(crate) async fn shutdown(State(state): State<AppState>) -> Result<Json<Value>, CogError> {
    if !state.config().allow_shutdown_route {
        return Err(CogError::ShutdownDisabled);
    }
    state.shutdown_requested().cancel();
    Ok(Json(json!({})))
}
