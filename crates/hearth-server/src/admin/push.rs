//! `PUT /admin/models/{name}`: receive a package, validate it, install it, serve it.
//!
//! The body is unpacked as it arrives into a staging directory (never held in memory), then the
//! package is loaded exactly as at start-up (`hf://` weights, `Package::load`, engine start). Only
//! a package that loaded is renamed into the models directory and swapped into the catalog; any
//! failure before that deletes the staging directory and leaves the model served before, if any,
//! untouched.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use futures::{Stream, StreamExt, TryStreamExt};
use hearth_package::archive::{self, ArchiveError, ArchiveLimits, Unpacked};
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::adapters::restore_adapters;
use super::install::{install, Staging, Trash};
use super::state::Steps;
use super::{predict_url, Admin, AdminError, AdminState, BusyGuard, LoadedModel, Phase};
use crate::state::AppState;

/// Of a refused upload, the bytes read and thrown away so that a client still sending reads
/// the answer instead of a reset connection; an unauthenticated client gets less.
const DRAIN_BYTES: usize = 256 << 20;
const DRAIN_BYTES_UNAUTHENTICATED: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(30);

pub(crate) async fn push(
    admin: Result<Admin, AdminError>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let prepare = |admin| prepare(&state, admin, name, &headers);
    let run = |job: Push, body| async move {
        job.run(body).await.map(|pushed| pushed.into_response(host.as_deref()))
    };
    answer_upload(&state, admin, body, prepare, run).await
}

/// How an upload is answered: the caller authenticated, then the job prepared from what the
/// request says (a refusal at either step drains the body, so that a client still sending reads
/// the answer), then run as a detached task, so that a client leaving mid-way cannot stop it
/// between its steps: the task either finishes the install or cleans up after itself.
pub(crate) async fn answer_upload<J, F>(
    state: &AppState,
    admin: Result<Admin, AdminError>,
    body: Body,
    prepare: impl FnOnce(Arc<AdminState>) -> Result<J, AdminError>,
    run: impl FnOnce(J, Body) -> F,
) -> Response
where
    F: Future<Output = Result<Response, AdminError>> + Send + 'static,
{
    let admin = match admin {
        Ok(Admin(admin)) => admin,
        Err(err) => return refuse(err, body, DRAIN_BYTES_UNAUTHENTICATED),
    };
    let job = match prepare(admin) {
        Ok(job) => job,
        Err(err) => return refuse(err, body, DRAIN_BYTES),
    };
    match state.tasks().spawn(run(job, body)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => err.into_response(),
        Err(err) => AdminError::Internal(format!("the push task failed: {err}")).into_response(),
    }
}

/// Everything checked before a byte of the body is read.
fn prepare(
    state: &AppState,
    admin: Arc<AdminState>,
    name: String,
    headers: &HeaderMap,
) -> Result<Push, AdminError> {
    if !hearth_package::is_valid_name(&name) {
        return Err(AdminError::BadRequest(format!(
            "`{name}` is not a valid model name: {}",
            hearth_package::NAME_PATTERN
        )));
    }
    let models_dir = admin.models_dir()?.to_path_buf();
    check_declared_size(headers, &admin.settings.limits)?;
    let busy = admin.claim(&name, Phase::Receiving)?;
    Ok(Push { state: state.clone(), admin, name, models_dir, busy })
}

fn refuse(err: AdminError, body: Body, drain_bytes: usize) -> Response {
    drain(body.into_data_stream(), drain_bytes);
    err.into_response()
}

/// Reads and discards what is left of a request body, in the background, up to `limit` bytes
/// and [`DRAIN_TIME`]: the answer goes out meanwhile, and the connection then closes cleanly.
fn drain<S, E>(mut stream: S, limit: usize)
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let mut left = limit;
        let discard = async {
            while let Some(Ok(chunk)) = stream.next().await {
                left = left.saturating_sub(chunk.len());
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
    });
}

/// A `Content-Length` over the limit is refused before a byte is read.
pub(crate) fn check_declared_size(
    headers: &HeaderMap,
    limits: &ArchiveLimits,
) -> Result<(), AdminError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > limits.max_archive_bytes => {
            Err(ArchiveError::TooLarge { limit: limits.max_archive_bytes }.into())
        }
        _ => Ok(()),
    }
}

struct Push {
    state: AppState,
    admin: Arc<AdminState>,
    name: String,
    models_dir: PathBuf,
    busy: BusyGuard,
}

struct Pushed {
    name: String,
    kind: &'static str,
    replaced: bool,
    unpacked: Unpacked,
    /// The steps of the load, so a client that polled too rarely still sees them.
    steps: Steps,
}

impl Push {
    async fn run(self, body: Body) -> Result<Pushed, AdminError> {
        let started = Instant::now();
        let staging = Staging::create(&self.models_dir, &self.name)?;
        let limits = self.admin.settings.limits;
        let unpacked = receive(body, staging.package_dir().to_path_buf(), limits).await?;
        tracing::info!(model = %self.name, files = unpacked.files, bytes = unpacked.bytes, "package received; loading it");
        self.busy.set(Phase::Loading);
        let (staging, model) = self.load(staging).await?;
        let kind = match model {
            LoadedModel::Generative(_) => "generative",
            LoadedModel::Embedding(_) => "embedding",
            LoadedModel::Python(_) => "python",
        };
        let trash = self.install(staging).await?;
        match &model {
            LoadedModel::Python(python) => python.worker.relocate(self.models_dir.join(&self.name)),
            LoadedModel::Generative(local) => self.restore_adapters(&local.engine).await,
            LoadedModel::Embedding(_) => {}
        }
        let replaced = self.swap(model);
        // The set-aside package may be large; delete it off the async threads.
        tokio::task::spawn_blocking(move || drop(trash));
        tracing::info!(
            model = %self.name,
            kind,
            replaced,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "package pushed and serving"
        );
        let steps = self.busy.steps();
        Ok(Pushed { name: self.name, kind, replaced, unpacked, steps })
    }

    /// Loads the staged package; the staging directory comes back so it lives until install.
    async fn load(&self, staging: Staging) -> Result<(Staging, LoadedModel), AdminError> {
        let loader = self.admin.loader.clone();
        let dir = staging.package_dir().to_path_buf();
        let step = self.busy.step_sink();
        let loaded = tokio::task::spawn_blocking(move || loader.load(&dir, &step))
            .await
            .map_err(|e| AdminError::Internal(format!("loading the package failed: {e}")))?;
        let (loaded_name, model) = loaded.map_err(AdminError::Refused)?;
        if loaded_name != self.name {
            // `model` drops here, and with it the engine just started.
            return Err(AdminError::Refused(format!(
                "the package calls itself `{loaded_name}` (hearth.yaml `name` or cog.yaml \
                 `model`) but was pushed as `{}`; push it under its own name",
                self.name
            )));
        }
        Ok((staging, model))
    }

    /// Serves the adapters pushed to the previous version on this one too (those that fit).
    async fn restore_adapters(&self, engine: &hearth_gateway::Engine) {
        let (models_dir, name, engine) =
            (self.models_dir.clone(), self.name.clone(), engine.clone());
        let restore = move || restore_adapters(&models_dir, &name, &engine);
        if let Err(err) = tokio::task::spawn_blocking(restore).await {
            tracing::error!(model = %self.name, error = %err, "restoring pushed adapters failed");
        }
    }

    async fn install(&self, staging: Staging) -> Result<Trash, AdminError> {
        let (models_dir, name) = (self.models_dir.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || install(staging, &models_dir, &name))
            .await
            .map_err(|e| AdminError::Internal(format!("installing the package failed: {e}")))?
    }

    /// Serves `model` as the name's current version; true when it replaced one. The old
    /// version's engine stops on its own after its in-flight requests (see the module docs).
    fn swap(&self, model: LoadedModel) -> bool {
        let name = self.name.clone();
        self.state.gateway().update_catalog(move |catalog| {
            let replaced = catalog.remove(&name);
            match model {
                LoadedModel::Generative(model) => catalog.insert_ready(name, model),
                LoadedModel::Embedding(model) => catalog.insert_embedder(name, model),
                LoadedModel::Python(model) => catalog.insert_python(name, model),
            }
            // A daemon without a default model (none loaded, or several) may have one now.
            let has_default = catalog.default_model().is_some()
                || catalog.default_embedder().is_some()
                || catalog.default_python().is_some();
            if !has_default {
                catalog.set_default(None);
            }
            replaced
        })
    }
}

impl Pushed {
    fn into_response(self, host: Option<&str>) -> Response {
        let status = if self.replaced { StatusCode::OK } else { StatusCode::CREATED };
        let body = json!({
            "id": self.name,
            "kind": self.kind,
            "replaced": self.replaced,
            "predict_url": predict_url(host, &self.name),
            "files": self.unpacked.files,
            "bytes": self.unpacked.bytes,
            "steps": self.steps,
        });
        (status, Json(body)).into_response()
    }
}

/// Unpacks the body into `dest` as it streams in, on a blocking thread (the tar reader is
/// synchronous). A body that breaks off is reported as an interrupted upload.
pub(crate) async fn receive(
    body: Body,
    dest: PathBuf,
    limits: ArchiveLimits,
) -> Result<Unpacked, AdminError> {
    let body_error: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = body_error.clone();
    let stream = body.into_data_stream().map_err(move |e| {
        if let Ok(mut slot) = seen.lock() {
            slot.get_or_insert_with(|| e.to_string());
        }
        io::Error::other(e)
    });
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    let (result, reader) =
        tokio::task::spawn_blocking(move || (archive::unpack(&mut reader, &dest, &limits), reader))
            .await
            .map_err(|e| AdminError::Internal(format!("unpacking failed: {e}")))?;
    // After a refusal the client may still be sending; after success, the tar stream's end
    // padding may be unread.
    drain(reader.into_inner().into_inner(), DRAIN_BYTES);
    if let Some(why) = body_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(AdminError::Interrupted(why));
    }
    Ok(result?)
}
