//! `POST /predictions`, `PUT /predictions/{id}` and `POST /predictions/{id}/cancel`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::begin::{self, Begin, Begun, Claimed};
use super::error::{CogError, Detail};
use super::prediction::Prediction;
use super::registry::PredictionEntry;
use super::request::{Mode, PredictionRequest};
use super::run::{AnyRun, Update};
use super::sse;
use super::target::{path_param, CogModel};
use super::webhook::{WebhookSender, WebhookTarget};
use crate::relay;
use crate::state::AppState;

/// The `{id}` of `/predictions/{id}/…`.
pub(crate) struct PredictionId(String);

impl FromRequestParts<AppState> for PredictionId {
    type Rejection = CogError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, CogError> {
        // The routes that use this extractor all have `{id}`, so a miss is an id that does not
        // decode.
        path_param(parts, state, "id").await.map(PredictionId).ok_or(CogError::BadPredictionId)
    }
}

pub(crate) async fn create(
    State(state): State<AppState>,
    target: CogModel,
    headers: HeaderMap,
    request: PredictionRequest,
) -> Result<Response, CogError> {
    predict(state, target, &headers, request).await
}

/// Idempotent create: the same id again answers with that prediction instead of a new one.
pub(crate) async fn create_idempotent(
    State(state): State<AppState>,
    target: CogModel,
    PredictionId(id): PredictionId,
    headers: HeaderMap,
    mut request: PredictionRequest,
) -> Result<Response, CogError> {
    if request.id.as_ref().is_some_and(|body_id| *body_id != id) {
        let msg = format!("prediction ID must match the ID supplied in the URL (`{id}`)");
        return Err(CogError::Invalid(vec![Detail::at(&["body", "id"], msg)]));
    }
    request.id = Some(id);
    predict(state, target, &headers, request).await
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    target: CogModel,
    PredictionId(id): PredictionId,
) -> Result<Json<serde_json::Value>, CogError> {
    let entry = state
        .predictions()
        .get(&target.name, &id)
        .ok_or_else(|| CogError::UnknownPrediction(id.clone()))?;
    entry.cancel_token().cancel();
    Ok(Json(json!({})))
}

async fn predict(
    state: AppState,
    target: CogModel,
    headers: &HeaderMap,
    request: PredictionRequest,
) -> Result<Response, CogError> {
    let (mode, log) = (Mode::from_headers(headers), begin::log_options(headers)?);
    let id = request.id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let at = Claimed { namespace: &target.name, id, label: None, log };
    let begun = begin::native(&state, at, &target.name, &target.model, request.input).await?;
    Ok(answer(&state, begun, mode, request.webhook).await)
}

/// Answers a prediction [`begin`] started (or found), as the caller asked.
pub(super) async fn answer(
    state: &AppState,
    begun: Begin,
    mode: Mode,
    webhook: Option<WebhookTarget>,
) -> Response {
    let Begun { run, run_id, route, accepted } = match begun {
        Begin::Started(begun) => *begun,
        Begin::Existing(entry) => return existing(state, entry, mode),
    };
    let mut response = respond(state, run, mode, accepted, webhook).await;
    relay::set_run_headers(response.headers_mut(), &run_id, Some(&route));
    response
}

/// Answers a prediction that started, as the caller asked: the finished prediction, a stream
/// of server-sent events, or 202 with the prediction as accepted (progress goes to webhooks).
async fn respond(
    state: &AppState,
    run: AnyRun,
    mode: Mode,
    accepted: Prediction,
    webhook: Option<WebhookTarget>,
) -> Response {
    match mode {
        Mode::Sync => run_to_end(run).await.into_response(),
        Mode::Stream => sse::respond(sse::live(run), state.config().sse_keep_alive),
        Mode::Async => {
            spawn_async(state, run, webhook);
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
    }
}

/// A prediction with this id already exists: report it rather than run it twice.
fn existing(state: &AppState, entry: Arc<PredictionEntry>, mode: Mode) -> Response {
    if mode == Mode::Stream {
        return sse::respond(sse::follow(entry), state.config().sse_keep_alive);
    }
    let prediction = entry.snapshot();
    let status =
        if prediction.status.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    (status, Json(prediction)).into_response()
}

async fn run_to_end(mut run: AnyRun) -> Json<Prediction> {
    while let Some(update) = run.next().await {
        if let Update::Done(prediction) = update {
            return Json(*prediction);
        }
    }
    Json(run.entry().snapshot())
}

/// Runs an async prediction in the background, sending webhooks as it goes. The task owns the
/// run, so cancelling the prediction or the shutdown deadline ends it.
pub(super) fn spawn_async(state: &AppState, mut run: AnyRun, webhook: Option<WebhookTarget>) {
    let mut webhooks = webhook.map(|target| {
        let stop = state.cancel_all().clone();
        WebhookSender::spawn(
            state.webhooks().clone(),
            target,
            state.config().webhook.clone(),
            state.tasks(),
            stop,
        )
    });
    state.tasks().spawn(async move {
        if let Some(hooks) = webhooks.as_mut() {
            hooks.start(run.entry().snapshot());
        }
        while let Some(update) = run.next().await {
            let Some(hooks) = webhooks.as_mut() else { continue };
            match update {
                Update::Output { .. } => hooks.output(|| run.entry().snapshot()),
                Update::Log { .. } => hooks.logs(|| run.entry().snapshot()),
                Update::Done(prediction) => {
                    if let Some(hooks) = webhooks.take() {
                        hooks.completed(*prediction).await;
                    }
                }
            }
        }
    });
}
