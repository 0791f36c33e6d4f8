//! `PUT /admin/models/{name}/adapters/{adapter}` and `DELETE` of the same: LoRA adapters pushed
//! on their own to a running base model, served as `{name}:{adapter}` once the push answers.
//!
//! The body is a tar stream of the adapter's directory (`adapter_config.json` +
//! `adapter_model.safetensors`), unpacked into the staging area as a package push is, under the
//! same limits. The adapter is read once and checked against the base (every target module
//! must be one of its projections, every shape must fit) before anything is installed; a
//! refused adapter leaves nothing behind and the base serves on, its running requests
//! untouched.
//!
//! Pushed adapters are kept under `<models>/.hearth-adapters/<name>/<adapter>/` (hidden, so
//! package discovery skips it): the daemon registers them again when it starts
//! ([`restore_adapters`]) and when the base package is pushed again, and deletes them with the
//! base. The package's own adapters (`hearth.yaml`) are not replaced or removed this way.

use std::fs;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::{AdapterLookupError, Catalog, Engine};
use serde_json::json;

use super::install::{new_adapter_trash, Staging};
use super::push::{answer_upload, check_declared_size, receive};
use super::{Admin, AdminError, AdminState, Phase};
use crate::state::AppState;

/// Pushed adapters, by base model, under the models directory.
pub(crate) const ADAPTERS_DIR: &str = ".hearth-adapters";

/// Where `base`'s pushed adapters are kept.
pub(crate) fn adapters_of(models_dir: &FsPath, base: &str) -> PathBuf {
    models_dir.join(ADAPTERS_DIR).join(base)
}

pub(crate) async fn push_adapter(
    admin: Result<Admin, AdminError>,
    State(state): State<AppState>,
    Path((base, adapter)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let prepare = |admin| prepare(&state, admin, base, adapter, &headers);
    answer_upload(&state, admin, body, prepare, AdapterPush::run).await
}

fn check_names(base: &str, adapter: &str) -> Result<(), AdminError> {
    if !hearth_package::is_valid_name(base) {
        return Err(AdminError::BadRequest(format!(
            "`{base}` is not a valid model name: {}",
            hearth_package::NAME_PATTERN
        )));
    }
    if !hearth_package::is_valid_adapter_name(adapter) {
        return Err(AdminError::BadRequest(format!(
            "`{adapter}` is not a valid adapter name: {}",
            hearth_package::ADAPTER_NAME_PATTERN
        )));
    }
    Ok(())
}

/// The engine serving `base`: 404 when no model has that name, 409 when it is not a native
/// generative model (only those take LoRA adapters).
fn base_engine(catalog: &Catalog, base: &str) -> Result<Engine, AdminError> {
    if let Some(model) = catalog.get(base) {
        return Ok(model.engine.clone());
    }
    let known = catalog.entry(base).is_some()
        || catalog.embedders().any(|(name, _)| name == base)
        || catalog.python(base).is_some();
    if known {
        return Err(AdminError::Conflict(format!(
            "model `{base}` is not a ready native text-generation model, so it cannot serve a \
             LoRA adapter"
        )));
    }
    Err(AdminError::NotFound(format!("model `{base}` does not exist; push the base model first")))
}

/// Everything checked before a byte of the body is read.
fn prepare(
    state: &AppState,
    admin: Arc<AdminState>,
    base: String,
    adapter: String,
    headers: &HeaderMap,
) -> Result<AdapterPush, AdminError> {
    check_names(&base, &adapter)?;
    let models_dir = admin.models_dir()?.to_path_buf();
    check_declared_size(headers, &admin.settings.limits)?;
    // One operation per base at a time: a push of the base itself would otherwise restore the
    // stored adapters before this one is stored.
    let busy = admin.claim(&base, Phase::AddingAdapter)?;
    let engine = base_engine(&state.catalog(), &base)?;
    Ok(AdapterPush { admin, base, adapter, models_dir, engine, _busy: busy })
}

struct AdapterPush {
    admin: Arc<AdminState>,
    base: String,
    adapter: String,
    models_dir: PathBuf,
    engine: Engine,
    _busy: super::BusyGuard,
}

impl AdapterPush {
    async fn run(self, body: Body) -> Result<Response, AdminError> {
        let staging = Staging::create(&self.models_dir, &self.adapter)?;
        let limits = self.admin.settings.limits;
        let unpacked = receive(body, staging.package_dir().to_path_buf(), limits).await?;
        let replaced = tokio::task::spawn_blocking(move || self.install(staging))
            .await
            .map_err(|e| AdminError::Internal(format!("installing the adapter failed: {e}")))??;
        let status = if replaced.replaced { StatusCode::OK } else { StatusCode::CREATED };
        let body = json!({
            "id": replaced.id,
            "parent": replaced.base,
            "adapter": replaced.adapter,
            "replaced": replaced.replaced,
            "files": unpacked.files,
            "bytes": unpacked.bytes,
        });
        Ok((status, Json(body)).into_response())
    }

    /// Checks the staged adapter against the base, moves it into the store (setting aside the
    /// one it replaces, put back if the move fails) and serves it. Blocking: it reads the
    /// adapter's tensors, once.
    fn install(self, staging: Staging) -> Result<Installed, AdminError> {
        let staged = staging.package_dir();
        self.engine.check_adapter(&self.adapter, staged).map_err(refusal)?;
        let store = adapters_of(&self.models_dir, &self.base);
        fs::create_dir_all(&store).map_err(|e| io_error(&store, "creating", e))?;
        let target = store.join(&self.adapter);
        let trash = new_adapter_trash(&self.models_dir)?;
        let set_aside = trash.path().join(&self.base).join(&self.adapter);
        let replaced = target.exists();
        if replaced {
            fs::create_dir_all(trash.path().join(&self.base))
                .and_then(|()| fs::rename(&target, &set_aside))
                .map_err(|e| io_error(&target, "setting aside", e))?;
        }
        if let Err(err) = fs::rename(staged, &target) {
            if replaced {
                if let Err(back) = fs::rename(&set_aside, &target) {
                    tracing::error!(path = %target.display(), error = %back, "could not put the previous adapter back");
                }
            }
            return Err(io_error(&target, "installing", err));
        }
        // The engine reads it again on its first request (it was checked from these files).
        self.engine.declare_adapter(&self.adapter, target);
        drop(trash);
        let id = format!("{}:{}", self.base, self.adapter);
        tracing::info!(adapter = %id, replaced, "LoRA adapter pushed and serving");
        Ok(Installed { id, base: self.base, adapter: self.adapter, replaced })
    }
}

struct Installed {
    id: String,
    base: String,
    adapter: String,
    replaced: bool,
}

fn refusal(err: AdapterLookupError) -> AdminError {
    match err {
        AdapterLookupError::Packaged { .. } => AdminError::Conflict(err.to_string()),
        AdapterLookupError::Unknown { .. } => AdminError::NotFound(err.to_string()),
        AdapterLookupError::Load(_) => AdminError::AdapterRefused(err.to_string()),
    }
}

fn io_error(path: &FsPath, doing: &str, err: std::io::Error) -> AdminError {
    AdminError::Internal(format!("{doing} {}: {err}", path.display()))
}

/// Stops serving a pushed adapter and deletes it.
pub(crate) async fn remove_adapter(
    Admin(admin): Admin,
    State(state): State<AppState>,
    Path((base, adapter)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, AdminError> {
    check_names(&base, &adapter)?;
    let models_dir = admin.models_dir()?.to_path_buf();
    let _busy = admin.claim(&base, Phase::RemovingAdapter)?;
    let unloaded = match state.catalog().get(&base) {
        Some(model) => match model.engine.remove_adapter(&adapter) {
            Ok(()) => true,
            Err(AdapterLookupError::Unknown { .. }) => false,
            Err(err) => return Err(refusal(err)),
        },
        None => false,
    };
    let (name, owner) = (adapter.clone(), base.clone());
    let stored = tokio::task::spawn_blocking(move || delete_stored(&models_dir, &owner, &name))
        .await
        .map_err(|e| AdminError::Internal(format!("removing the adapter failed: {e}")))??;
    if !unloaded && !stored {
        return Err(AdminError::NotFound(format!(
            "model `{base}` has no pushed adapter `{adapter}`"
        )));
    }
    tracing::info!(model = %base, adapter = %adapter, "LoRA adapter removed");
    Ok(Json(json!({ "id": format!("{base}:{adapter}"), "removed": true })))
}

/// Deletes `base`'s stored adapter `adapter`; false when there is none.
fn delete_stored(models_dir: &FsPath, base: &str, adapter: &str) -> Result<bool, AdminError> {
    let dir = adapters_of(models_dir, base).join(adapter);
    if !dir.is_dir() {
        return Ok(false);
    }
    let trash = new_adapter_trash(models_dir)?;
    fs::create_dir_all(trash.path().join(base))
        .and_then(|()| fs::rename(&dir, trash.path().join(base).join(adapter)))
        .map_err(|e| io_error(&dir, "removing", e))?;
    Ok(true)
}

/// Deletes every adapter pushed to `base` (the base is being removed); false when there were
/// none.
pub(crate) fn delete_store(models_dir: &FsPath, base: &str) -> Result<bool, AdminError> {
    let store = adapters_of(models_dir, base);
    if !store.is_dir() {
        return Ok(false);
    }
    let trash = new_adapter_trash(models_dir)?;
    fs::rename(&store, trash.path().join(base)).map_err(|e| io_error(&store, "removing", e))?;
    Ok(true)
}

/// Registers with `engine` every adapter pushed to `base` before, and returns their names; one
/// that no longer fits (the base was replaced by a different model) is logged and left on
/// disk, so that deleting it stays the operator's call.
pub fn restore_adapters(models_dir: &FsPath, base: &str, engine: &Engine) -> Vec<String> {
    let Ok(entries) = fs::read_dir(adapters_of(models_dir, base)) else { return Vec::new() };
    let mut restored = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !entry.path().is_dir() || !hearth_package::is_valid_adapter_name(&name) {
            continue;
        }
        match engine.register_adapter(&name, entry.path()) {
            Ok(()) => restored.push(name),
            Err(err @ AdapterLookupError::Packaged { .. }) => {
                tracing::warn!(model = base, adapter = %name, error = %err, "a pushed adapter is shadowed by the package's own adapter of that name; not serving it")
            }
            Err(err) => {
                tracing::warn!(model = base, adapter = %name, error = %err, "a pushed adapter does not fit its model any more; not serving it")
            }
        }
    }
    restored.sort();
    if !restored.is_empty() {
        tracing::info!(model = base, adapters = ?restored, "pushed LoRA adapters restored");
    }
    restored
}

/// [`restore_adapters`] for every native generative model in `catalog` (at start-up).
pub fn restore_all_adapters(models_dir: &FsPath, catalog: &Catalog) {
    for (name, model) in catalog.ready() {
        restore_adapters(models_dir, name, &model.engine);
    }
}
