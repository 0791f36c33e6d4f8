//! A run after it started: its status, its events again (resume), and cancelling it.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::relay::{self, FrameId, RelayError, ResumePoint, StreamFormat};
use crate::state::AppState;

/// `GET /v1/runs/{id}`: the run's state, and its ledger record once it has ended.
pub(crate) async fn status(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let gateway = state.gateway();
    let info = gateway.status(&run_id).await.map_err(RelayError::from)?;
    let record = gateway.ledger().get(&run_id).await.map_err(RelayError::from)?;
    let mut body = serde_json::to_value(&info).unwrap_or_default();
    body["ledger"] = serde_json::to_value(&record).unwrap_or_default();
    Ok(Json(body))
}

/// `POST /v1/runs/{id}/cancel`: asks the run to stop. Its stream then ends with an explicit
/// `cancelled` error and its ledger record says `cancelled`; a run that has ended stays as it is.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.gateway().cancel(&run_id).await.map_err(RelayError::from)?;
    Ok(Json(serde_json::to_value(&info).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    from: Option<u64>,
}

/// `GET /v1/runs/{id}/events?from=N`: the run's events from sequence number N (default 0) in the
/// format of the request that started it, then the live tail until the run ends. An SSE client
/// reconnecting with `Last-Event-ID: K` gets the frames after K.
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let resume = resume_point(&headers, &uri)?;
    let from = resume.seq;
    let gateway = state.gateway();
    // Subscribing from `from` first checks the cursor (a finished run refuses one past its end).
    let tail = gateway.subscribe(&run_id, from).await.map_err(RelayError::from)?;
    let info = gateway.status(&run_id).await.map_err(RelayError::from)?;
    let mut encoder = StreamFormat::from_stored(info.format.as_deref()).encoder();
    if from > 0 {
        let head = gateway.subscribe(&run_id, 0).await.map_err(RelayError::from)?;
        relay::prime(&mut encoder, head, from).await;
    }
    let route = info.route;
    let mut response =
        relay::sse(tail, encoder, state.config().sse_keep_alive, resume).into_response();
    relay::set_run_headers(response.headers_mut(), &run_id, route.as_deref());
    Ok(response)
}

/// `?from=N` starts at event N; `Last-Event-ID` starts right after the frame it names (see
/// [`FrameId`]), which may be in the middle of an event's frames.
fn resume_point(headers: &HeaderMap, uri: &Uri) -> Result<ResumePoint, RelayError> {
    let query = Query::<EventsQuery>::try_from_uri(uri)
        .map_err(|e| RelayError::Query { param: "from", message: e.body_text() })?;
    if let Some(from) = query.from {
        return Ok(ResumePoint { seq: from, frames_seen: 0 });
    }
    let Some(last) = headers.get("last-event-id") else {
        return Ok(ResumePoint::default());
    };
    let last: FrameId =
        last.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
            RelayError::Header {
                name: "last-event-id",
                message: "must be the `id` of an event of this run".to_owned(),
            }
        })?;
    Ok(ResumePoint::after(last))
}
