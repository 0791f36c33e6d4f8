//! A stored response after `POST`: `GET /v1/responses/{id}` (whole, or its events again with
//! `stream=true&starting_after=N`), `POST /v1/responses/{id}/cancel` and `DELETE`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use hearth_gateway::{RunError, RunEvent};
use hearth_protocol::wire::responses::{ResponseObject, StreamEncoder};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store::StoredResponse;
use super::{read_to_end, sse, OpenAiError};
use crate::relay::RelayError;
use crate::state::AppState;

/// How long a cancel waits for the run to stop before answering with the response as it is.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct RetrieveQuery {
    stream: Option<bool>,
    starting_after: Option<u64>,
}

pub(crate) async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, OpenAiError> {
    let query = Query::<RetrieveQuery>::try_from_uri(&uri)
        .map_err(|e| OpenAiError::invalid("stream", e.body_text()))?;
    let stored = find(&state, &id)?;
    if query.stream == Some(true) {
        return replay(&state, &stored, query.starting_after).await;
    }
    if query.starting_after.is_some() {
        return Err(OpenAiError::invalid("starting_after", "is read only with `stream=true`"));
    }
    let object = match &stored.finished {
        Some(finished) => finished.clone(),
        None => so_far(&state, &stored).await?,
    };
    Ok(Json(object).into_response())
}

/// Only a background response can be cancelled (as on OpenAI); one that has ended is answered
/// as it is.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResponseObject>, OpenAiError> {
    let stored = find(&state, &id)?;
    if !stored.background {
        return Err(OpenAiError::invalid(
            "response_id",
            "Only responses created with `background: true` can be cancelled.",
        ));
    }
    if let Some(finished) = &stored.finished {
        return Ok(Json(finished.clone()));
    }
    let gateway = state.gateway();
    gateway.cancel(&stored.run_id).await.map_err(run_error(&id))?;
    let events = gateway.subscribe(&stored.run_id, 0).await.map_err(run_error(&id))?;
    let object =
        match tokio::time::timeout(CANCEL_WAIT, read_to_end(stored.header.clone(), events)).await {
            Ok((object, _)) => {
                state.responses().finish(&id, object.clone());
                object
            }
            Err(_) => so_far(&state, &stored).await?,
        };
    Ok(Json(object))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    if !state.responses().remove(&id) {
        return Err(not_found(&id));
    }
    Ok(Json(json!({ "id": id, "object": "response.deleted", "deleted": true })))
}

fn find(state: &AppState, id: &str) -> Result<Arc<StoredResponse>, OpenAiError> {
    state.responses().get(id).ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> OpenAiError {
    OpenAiError::NotFound(format!("Response with id '{id}' not found."))
}

/// A run that expired took the response's events with it.
fn run_error(id: &str) -> impl FnOnce(RunError) -> OpenAiError + '_ {
    move |err| match err {
        RunError::NotFound(_) => OpenAiError::NotFound(format!(
            "The events of response '{id}' are no longer kept; retrieve it without `stream=true`."
        )),
        err => RelayError::from(err).into(),
    }
}

/// The response as the events buffered so far build it (status `in_progress`).
async fn so_far(state: &AppState, stored: &StoredResponse) -> Result<ResponseObject, OpenAiError> {
    let gateway = state.gateway();
    let id = &stored.header.id;
    let info = gateway.status(&stored.run_id).await.map_err(run_error(id))?;
    let events = gateway.subscribe(&stored.run_id, 0).await.map_err(run_error(id))?;
    let mut encoder = StreamEncoder::new(stored.header.clone());
    let mut head = events.take(usize::try_from(info.num_events).unwrap_or(usize::MAX));
    while let Some(RunEvent { event, .. }) = head.next().await {
        encoder.encode(&event);
    }
    Ok(encoder.into_response())
}

/// The response's events again, from the run's buffer, re-encoded from its first event so
/// that every event has the sequence number it had; those up to `starting_after` are left out.
async fn replay(
    state: &AppState,
    stored: &StoredResponse,
    starting_after: Option<u64>,
) -> Result<Response, OpenAiError> {
    let gateway = state.gateway();
    let events =
        gateway.subscribe(&stored.run_id, 0).await.map_err(run_error(&stored.header.id))?;
    Ok(sse(state, stored.header.clone(), events, starting_after))
}
