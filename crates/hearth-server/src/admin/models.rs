//! `GET /admin/models` and `DELETE /admin/models/{name}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use hearth_gateway::CatalogEntry;
use serde_json::{json, Value};

use super::adapters::delete_store;
use super::install::{dirs_serving, discard};
use super::{predict_url, Admin, AdminError, Phase};
use crate::state::AppState;

/// Every model the daemon knows, sorted by id: `ready` (a generative one with its LoRA
/// `adapters`), `failed` (with the reason), or `loading` while its first push is in progress. A ready model being replaced says so in
/// `pushing`. A push in progress has the `steps` of its load: `{total, latest: [...]}`, the
/// latest few of `total` in all (`hearth push` shows them as they come).
pub(crate) async fn list(
    Admin(admin): Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Json<Value> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let catalog = state.catalog();
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    for (name, entry) in catalog.entries() {
        let row = match entry {
            CatalogEntry::Ready(model) => {
                let mut row = ready_row(name, "generative", host);
                row["adapters"] = json!(model.engine.adapter_names());
                row
            }
            CatalogEntry::Failed { reason } => {
                json!({ "id": name, "state": "failed", "reason": reason })
            }
        };
        rows.insert(name.clone(), row);
    }
    for (name, _) in catalog.embedders() {
        rows.insert(name.clone(), ready_row(name, "embedding", host));
    }
    for (name, busy) in admin.snapshot() {
        let phase = busy.phase.as_str();
        match rows.get_mut(&name) {
            Some(row) => {
                row["pushing"] = json!(phase);
                row["steps"] = json!(busy.steps);
            }
            None if busy.phase != Phase::Removing => {
                let row =
                    json!({ "id": name, "state": "loading", "phase": phase, "steps": busy.steps });
                rows.insert(name.clone(), row);
            }
            None => {}
        }
    }
    Json(json!({ "models": rows.into_values().collect::<Vec<_>>() }))
}

fn ready_row(name: &str, kind: &str, host: Option<&str>) -> Value {
    json!({ "id": name, "state": "ready", "kind": kind, "predict_url": predict_url(host, name) })
}

/// Unloads `name` (its engine finishes what it has in flight, then stops) and deletes its
/// package directory when it is under the models directory, with the adapters pushed to it.
pub(crate) async fn remove(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let _busy = admin.claim(&name, Phase::Removing)?;
    let unloaded = state.gateway().update_catalog(|catalog| catalog.remove(&name));
    let dirs = match admin.settings.models_dir.clone() {
        Some(models_dir) => {
            let lookup = name.clone();
            tokio::task::spawn_blocking(move || remove_dirs(&models_dir, &lookup))
                .await
                .map_err(|e| AdminError::Internal(format!("removing the package failed: {e}")))??
        }
        None => 0,
    };
    if !unloaded && dirs == 0 {
        return Err(AdminError::NotFound(format!("model `{name}` does not exist")));
    }
    tracing::info!(model = %name, unloaded, directories_deleted = dirs, "model removed");
    Ok(Json(
        json!({ "id": name, "removed": true, "unloaded": unloaded, "directories_deleted": dirs }),
    ))
}

fn remove_dirs(models_dir: &std::path::Path, name: &str) -> Result<usize, AdminError> {
    let dirs = dirs_serving(models_dir, name);
    for dir in &dirs {
        drop(discard(models_dir, dir)?);
    }
    // Counted, so that removing a base whose package is gone but whose adapters remain is not
    // answered 404.
    let adapters = usize::from(delete_store(models_dir, name)?);
    Ok(dirs.len() + adapters)
}
