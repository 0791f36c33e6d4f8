//! `GET /health`: the daemon's own view of every model, for operators and tests.
//!
//! It always answers 200 while the daemon serves; each model reports whether it loaded and, when
//! it did, its engine's load and KV-cache use (tests read `kv_blocks_used` to see a cancelled
//! request's memory come back). Embedding models are listed too, with `"kind": "embedding"`
//! and their vector size in place of the engine's load; Python predictors with `"kind":
//! "python"`, their worker's state (`starting`, `ready`, `failed` with the setup's error,
//! `restarting` with why) and slots. `state` says where runs, spend and limit counters live
//! (`memory`/`redis`, `sqlite`/`postgresql`) and what limits do while Redis is unreachable.
//!
//! `GET /health/ready` is the readiness probe: 200 once every model has loaded and every
//! Python predictor's setup has finished, 503 naming the models that are not ready yet (a model
//! that failed to load is listed too: the daemon serves the others, but an orchestrator should
//! not count it as whole).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hearth_gateway::{CatalogEntry, WorkerStatus};
use serde::Serialize;
use serde_json::Map;

use crate::state::AppState;

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum ModelState {
    Ready,
    Failed,
}

#[derive(Serialize)]
struct ModelHealth {
    state: ModelState,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    running: usize,
    waiting: usize,
    kv_blocks_used: usize,
    kv_blocks_total: usize,
}

#[derive(Serialize)]
struct EmbedderHealth {
    state: ModelState,
    kind: &'static str,
    dimension: usize,
    max_input_tokens: usize,
}

pub(crate) async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let catalog = state.catalog();
    let mut models = Map::new();
    for (name, entry) in catalog.entries() {
        let health = match entry {
            CatalogEntry::Ready(model) => {
                let stats = model.engine.stats();
                ModelHealth {
                    state: ModelState::Ready,
                    reason: None,
                    running: stats.num_running,
                    waiting: stats.num_waiting,
                    kv_blocks_used: stats.kv_blocks_used,
                    kv_blocks_total: stats.kv_blocks_total,
                }
            }
            CatalogEntry::Failed { reason } => ModelHealth {
                state: ModelState::Failed,
                reason: Some(reason.clone()),
                running: 0,
                waiting: 0,
                kv_blocks_used: 0,
                kv_blocks_total: 0,
            },
        };
        models.insert(name.clone(), serde_json::json!(health));
    }
    for (name, model) in catalog.embedders() {
        let info = model.embedder.info();
        let health = EmbedderHealth {
            state: ModelState::Ready,
            kind: "embedding",
            dimension: info.dimension,
            max_input_tokens: info.max_input_tokens,
        };
        models.insert(name.clone(), serde_json::json!(health));
    }
    for (name, model) in catalog.python_models() {
        let worker = &model.worker;
        let (state, reason) = match worker.status() {
            WorkerStatus::Starting => ("starting", None),
            WorkerStatus::Ready => ("ready", None),
            WorkerStatus::SetupFailed { error } => ("failed", Some(error)),
            WorkerStatus::Restarting { reason } => ("restarting", Some(reason)),
            WorkerStatus::Stopped => ("stopped", None),
        };
        let mut health = serde_json::json!({
            "state": state,
            "kind": "python",
            "slots": worker.slots(),
            "busy_slots": worker.busy_slots(),
        });
        if let Some(reason) = reason {
            health["reason"] = reason.into();
        }
        models.insert(name.clone(), health);
    }
    // Where runs, spend and limit counters live, and what limits do when Redis is unreachable.
    let state_backends = serde_json::json!(state.gateway().backends());
    Json(serde_json::json!({ "status": "ok", "models": models, "state": state_backends }))
}

/// `GET /health/ready`: 200 when every model is ready, else 503 with the ones that are not.
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let catalog = state.catalog();
    let mut waiting: Vec<String> = catalog
        .entries()
        .filter(|(_, entry)| !matches!(entry, CatalogEntry::Ready(_)))
        .map(|(name, _)| name.clone())
        .collect();
    waiting.extend(
        catalog
            .python_models()
            .filter(|(_, model)| model.worker.status() != WorkerStatus::Ready)
            .map(|(name, _)| name.clone()),
    );
    if waiting.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        let body = serde_json::json!({"status": "not_ready", "models": waiting});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}
