//! Replicate's HTTP API, as a facade over the same predictions the Cog routes run:
//! `POST /v1/predictions` (`version` or `model`), `POST /v1/models/{owner}/{name}/predictions`
//! (mounted beside OpenAI's `GET /v1/models/{model}`, which holds that path),
//! `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`, and the SSE stream at
//! `urls.stream` (`GET /v1/predictions/{id}/stream`).
//!
//! A model is named `owner/name` (or `owner/name:version`, the version ignored: a daemon serves
//! one version of each package); the name finds the package (`owner/name` itself when a model
//! has that id). Every prediction runs in the background, owned by a task as an async Cog
//! prediction is (webhooks included); `Prefer: wait[=n]` holds the answer up to `n` seconds
//! (60 by default) for it to finish. The stream speaks Replicate's events: `output` (text, or
//! JSON for other outputs), `logs`, `error`, then `done`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use hearth_gateway::logging::LogOptions;
use serde_json::{json, Value};

use super::begin::{self, Begin, Begun, Claimed};
use super::error::{CogError, Detail};
use super::predict;
use super::prediction::Prediction;
use super::registry::PredictionEntry;
use super::request::PredictionRequest;
use crate::relay;
use crate::state::AppState;

/// Registry namespace of Replicate-API predictions: their ids are the daemon's own, unique.
const NAMESPACE: &str = "\u{0}replicate";
/// How long `Prefer: wait` holds the answer when it names no time (Replicate's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(60);

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/predictions", post(create))
        .route("/v1/predictions/{id}", get(fetch))
        .route("/v1/predictions/{id}/cancel", post(cancel))
        .route("/v1/predictions/{id}/stream", get(stream_events))
}

async fn create(State(state): State<AppState>, request: Request) -> Result<Response, CogError> {
    let headers = request.headers().clone();
    let mut body = PredictionRequest::from_request(request, &state).await?;
    let reference = body
        .extra
        .remove("version")
        .or_else(|| body.extra.remove("model"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or_else(|| CogError::Invalid(vec![Detail::missing(&["body", "version"])]))?;
    start(state, &headers, reference, body).await
}

/// `POST /v1/models/{owner}/{name}/predictions`. Mounted by the OpenAI routes, whose
/// `/v1/models/{*model}` holds the same path.
pub(crate) async fn create_for_model(
    State(state): State<AppState>,
    Path(path): Path<String>,
    request: Request,
) -> Result<Response, CogError> {
    let Some(reference) = path.strip_suffix("/predictions").filter(|r| r.contains('/')) else {
        let message = format!("no route for POST /v1/models/{path}");
        return Err(CogError::UnknownModel { message, models: Vec::new() });
    };
    let headers = request.headers().clone();
    let body = PredictionRequest::from_request(request, &state).await?;
    start(state, &headers, reference.to_owned(), body).await
}

/// The package a Replicate reference names: the whole `owner/name` when a model has that id,
/// else its `name`.
fn resolve(state: &AppState, reference: &str) -> Result<String, CogError> {
    let model = reference.split(':').next().unwrap_or(reference);
    let catalog = state.catalog();
    let known = |name: &str| catalog.python(name).is_some() || catalog.get(name).is_some();
    let name = model.rsplit('/').next().unwrap_or(model);
    [model, name].into_iter().find(|n| known(n)).map(str::to_owned).ok_or_else(|| {
        let models = catalog
            .python_models()
            .map(|(n, _)| n.clone())
            .chain(catalog.ready().map(|(n, _)| n.clone()))
            .collect();
        CogError::UnknownModel { message: format!("model `{reference}` does not exist"), models }
    })
}

async fn start(
    state: AppState,
    headers: &HeaderMap,
    reference: String,
    mut body: PredictionRequest,
) -> Result<Response, CogError> {
    let name = resolve(&state, &reference)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let Begun { run, run_id, route, .. } =
        start_run(&state, &name, &reference, id, begin::log_options(headers)?, body.input.take())
            .await?;
    let entry = run.entry().clone();
    predict::spawn_async(&state, run, body.webhook);
    if let Some(wait) = wait_time(headers) {
        let mut changes = entry.subscribe();
        let done = async {
            while !entry.is_terminal() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(wait, done).await;
    }
    let mut response =
        (StatusCode::CREATED, Json(view(headers, &entry.snapshot()))).into_response();
    relay::set_run_headers(response.headers_mut(), &run_id, Some(&route));
    Ok(response)
}

/// Starts the prediction on the package's Python worker, or on the engine for a native model.
async fn start_run(
    state: &AppState,
    name: &str,
    reference: &str,
    id: String,
    log: LogOptions,
    input: Option<Value>,
) -> Result<Begun, CogError> {
    let catalog = state.catalog();
    let at = Claimed { namespace: NAMESPACE, id, label: Some(reference.to_owned()), log };
    let begun = match (catalog.python(name), catalog.get(name)) {
        (Some(model), _) => {
            let schema = begin::schema_of(model)?;
            begin::python(state, at, name, &schema, input).await?
        }
        (None, Some(model)) => begin::native(state, at, name, model, input).await?,
        (None, None) => return Err(CogError::Internal(format!("`{name}` vanished"))),
    };
    match begun {
        Begin::Started(begun) => Ok(*begun),
        // Ids are fresh uuids; a clash would be a bug, not a repeat.
        Begin::Existing(_) => Err(CogError::Internal("prediction id clash".into())),
    }
}

/// `Prefer: wait` (the default time) or `Prefer: wait=n` seconds; `None` without it.
fn wait_time(headers: &HeaderMap) -> Option<Duration> {
    let prefer = headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok());
    let wait = prefer.flat_map(|v| v.split(',')).map(str::trim).find(|p| p.starts_with("wait"))?;
    let seconds = wait.strip_prefix("wait=").and_then(|n| n.trim().parse::<u64>().ok());
    Some(seconds.map_or(DEFAULT_WAIT, Duration::from_secs).min(MAX_WAIT))
}

/// The prediction as Replicate's API shows it: Cog's object plus `model`, `version` and `urls`.
fn view(headers: &HeaderMap, prediction: &Prediction) -> Value {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let base = format!("http://{host}/v1/predictions/{}", prediction.id);
    let mut value = serde_json::to_value(prediction).unwrap_or_default();
    value["model"] = json!(prediction.model);
    value["version"] = json!("hearth");
    value["urls"] = json!({
        "get": base,
        "cancel": format!("{base}/cancel"),
        "stream": format!("{base}/stream"),
    });
    value
}

fn find(state: &AppState, id: &str) -> Result<Arc<PredictionEntry>, CogError> {
    state.predictions().get(NAMESPACE, id).ok_or_else(|| CogError::UnknownPrediction(id.to_owned()))
}

async fn fetch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, CogError> {
    Ok(Json(view(&headers, &find(&state, &id)?.snapshot())))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, CogError> {
    let entry = find(&state, &id)?;
    entry.cancel_token().cancel();
    Ok(Json(view(&headers, &entry.snapshot())))
}

/// Replicate's stream: what is there so far, then new output and logs as they come, then
/// `error` (for a failed prediction) and `done`. Every event carries an id, which the official
/// client requires.
async fn stream_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, CogError> {
    let entry = find(&state, &id)?;
    let changes = entry.subscribe();
    let events =
        stream::unfold(Some((entry, changes, 0usize, 0usize, 0u64)), |follow| async move {
            let (entry, mut changes, sent_chunks, sent_logs, mut next_id) = follow?;
            loop {
                let prediction = entry.snapshot();
                let mut events = Vec::new();
                let mut event = |name: &str, data: String| {
                    next_id += 1;
                    events.push(Event::default().event(name).id(next_id.to_string()).data(data));
                };
                let chunks = match &prediction.output {
                    Some(Value::Array(items)) => items.as_slice(),
                    _ => &[],
                };
                for chunk in chunks.iter().skip(sent_chunks) {
                    event(
                        "output",
                        chunk.as_str().map_or_else(|| chunk.to_string(), str::to_owned),
                    );
                }
                if prediction.logs.len() > sent_logs {
                    event("logs", prediction.logs[sent_logs..].trim_end_matches('\n').to_owned());
                }
                let terminal = prediction.status.is_terminal();
                if terminal {
                    if let Some(error) = &prediction.error {
                        event("error", json!({ "detail": error }).to_string());
                    }
                    event(
                        "done",
                        if prediction.status == super::prediction::Status::Canceled {
                            json!({ "reason": "canceled" }).to_string()
                        } else {
                            "{}".to_owned()
                        },
                    );
                }
                let next = (!terminal).then_some((
                    entry.clone(),
                    changes.clone(),
                    chunks.len(),
                    prediction.logs.len(),
                    next_id,
                ));
                if !events.is_empty() {
                    return Some((stream::iter(events.into_iter().map(Ok::<_, Infallible>)), next));
                }
                // The sender lives in the entry we hold, so this cannot fail; end cleanly if it does.
                changes.changed().await.ok()?;
            }
        })
        .flatten();
    let keep_alive = KeepAlive::new().interval(state.config().sse_keep_alive);
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}
