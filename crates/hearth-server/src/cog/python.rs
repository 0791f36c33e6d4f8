//! The Cog container API of a package served by its Python predictor, at `/cog/{model}/…` and,
//! when it is the default model, at the root.
//!
//! As for embedding models, a middleware in front of the Cog routes ([`hook`]) answers requests
//! for Python models and passes every other request on. Predictions share everything with the
//! native ones past the start: the registry (idempotent `PUT`, cancel), sync / SSE / async
//! answers and webhooks ([`predict::respond`]); only how a prediction starts and what it
//! reports ([`PythonRun`]) differ. `/openapi.json` is built around the `Input` and `Output`
//! schemas Cog's SDK read off the predictor.

use axum::extract::{FromRequest, Request, State};
use axum::http::Method;
#[cfg(test)]
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::{PredictRunError, PythonModel, WorkerStatus, COG_SDK_VERSION};
use serde_json::json;

use super::begin::{self, Claimed};
use super::error::{CogError, Detail};
use super::prediction;
use super::request::{Mode, PredictionRequest};
use super::target::{addressed, Addressed};
use super::{handlers, predict, predictor_openapi};
use crate::state::AppState;

/// A Python model addressed by a Cog route.
type Target = Addressed<PythonModel>;

fn target(state: &AppState, path: &str) -> Option<Target> {
    let catalog = state.catalog();
    addressed(
        path,
        |name| catalog.python(name).cloned(),
        || catalog.default_python().map(|(name, model)| (name.to_owned(), model.clone())),
    )
}

/// Answers the Cog routes of Python models; passes everything else on.
pub(crate) async fn hook(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(target) = target(&state, request.uri().path()) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let route = target.route.as_str();
    let prediction_id = route
        .strip_prefix("/predictions/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned);
    let cancel_id = route
        .strip_prefix("/predictions/")
        .and_then(|rest| rest.strip_suffix("/cancel"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned);
    let answer = match (method, route) {
        (Method::GET, "/") => Ok(Json(handlers::index_body(&target.prefix)).into_response()),
        (Method::GET, "/health-check") => Ok(health_check(&target)),
        (Method::GET, "/openapi.json") => openapi(&target),
        (Method::POST, "/predictions") => start(state, target, None, request).await,
        (Method::PUT, _) if prediction_id.is_some() => {
            start(state, target, prediction_id, request).await
        }
        (Method::POST, _) if cancel_id.is_some() => {
            cancel(&state, &target, cancel_id.unwrap_or_default())
        }
        _ => return next.run(request).await,
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Cog's health check, from the worker: STARTING during setup, SETUP_FAILED with its error and
/// logs, UNHEALTHY while a crashed worker restarts, BUSY when every slot is taken.
fn health_check(target: &Target) -> Response {
    let worker = &target.model.worker;
    let report = worker.setup_report();
    let (status, setup_status) = match worker.status() {
        WorkerStatus::Starting => ("STARTING", "starting"),
        WorkerStatus::Ready if worker.busy_slots() >= worker.slots() => ("BUSY", "succeeded"),
        WorkerStatus::Ready => ("READY", "succeeded"),
        WorkerStatus::SetupFailed { .. } => ("SETUP_FAILED", "failed"),
        WorkerStatus::Restarting { .. } => ("UNHEALTHY", "succeeded"),
        WorkerStatus::Stopped => ("DEFUNCT", "succeeded"),
    };
    let time = |t: Option<std::time::SystemTime>| t.map(|t| prediction::timestamp(t.into()));
    Json(json!({
        "status": status,
        "setup": {
            "started_at": time(report.started_at),
            "completed_at": time(report.completed_at),
            "status": setup_status,
            "logs": report.logs,
        },
        "version": { "hearth": env!("CARGO_PKG_VERSION"), "cog": COG_SDK_VERSION },
    }))
    .into_response()
}

fn openapi(target: &Target) -> Result<Response, CogError> {
    let schema = target.model.worker.schema().ok_or_else(|| not_ready(&target.model))?;
    Ok(Json(predictor_openapi::openapi(&target.prefix, &schema)).into_response())
}

pub(super) fn not_ready(model: &PythonModel) -> CogError {
    CogError::NotReady(model.worker.status().describe())
}

fn cancel(state: &AppState, target: &Target, id: String) -> Result<Response, CogError> {
    let entry =
        state.predictions().get(&target.name, &id).ok_or(CogError::UnknownPrediction(id))?;
    entry.cancel_token().cancel();
    Ok(Json(json!({})).into_response())
}

async fn start(
    state: AppState,
    target: Target,
    url_id: Option<String>,
    request: Request,
) -> Result<Response, CogError> {
    let mode = Mode::from_headers(request.headers());
    let log = begin::log_options(request.headers())?;
    let body = PredictionRequest::from_request(request, &state).await?;
    if let (Some(url_id), Some(body_id)) = (&url_id, &body.id) {
        if url_id != body_id {
            let msg = format!("prediction ID must match the ID supplied in the URL (`{url_id}`)");
            return Err(CogError::Invalid(vec![Detail::at(&["body", "id"], msg)]));
        }
    }
    let schema = begin::schema_of(&target.model)?;
    // As Cog: server-sent events for a predictor marked `@cog.streaming` (other surfaces
    // stream any iterator output).
    if mode == Mode::Stream && !schema.streaming {
        return Err(CogError::NotStreaming);
    }
    let id = url_id.or(body.id).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let at = Claimed { namespace: &target.name, id, label: None, log };
    let begun = begin::python(&state, at, &target.name, &schema, body.input).await?;
    Ok(predict::answer(&state, begun, mode, body.webhook).await)
}

pub(super) fn start_error(err: PredictRunError) -> CogError {
    match err {
        PredictRunError::Start(err) => CogError::from(err),
        PredictRunError::NotReady(reason) => CogError::NotReady(reason),
        PredictRunError::Busy => CogError::AtCapacity,
        PredictRunError::Invalid { field: Some(field), message } => {
            let message =
                message.strip_prefix(&format!("{field}: ")).unwrap_or(&message).to_owned();
            CogError::input(&field, message)
        }
        PredictRunError::Invalid { field: None, message } => {
            CogError::Invalid(vec![Detail::at(&["body", "input"], message)])
        }
    }
}

/// For tests: the status an error answers with.
#[cfg(test)]
fn status_of(err: PredictRunError) -> StatusCode {
    start_error(err).into_response().status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_answer_as_cog_does() {
        assert_eq!(status_of(PredictRunError::Busy), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            status_of(PredictRunError::NotReady("x".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let invalid = PredictRunError::Invalid {
            field: Some("scale".into()),
            message: "scale fails constraint <= 10".into(),
        };
        assert_eq!(status_of(invalid), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
