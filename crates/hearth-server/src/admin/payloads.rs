//! A run's stored payload (its request and answer), kept only when logging asked for it
//! (`[logging] payloads`, `x-hearth-collect-log-payload`): read it, or delete it before its
//! retention would.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/runs/{id}/payload` | `{run_id, stored_at, request, response}`; 404 when none is stored |
//! | `DELETE /admin/runs/{id}/payload` | deletes it: 204, or 404 when none is stored |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hearth_gateway::RunPayload;

use super::{Admin, AdminError};
use crate::state::AppState;

fn none_stored(run_id: &str, logging_on: bool) -> AdminError {
    let why = if logging_on {
        "the request asked that it not be kept, it was deleted, or the run is still going"
    } else {
        "payloads are stored only when `[logging] payloads = true` or the request sends \
         `x-hearth-collect-log-payload: true`"
    };
    AdminError::NotFound(format!("run `{run_id}` has no stored payload: {why}"))
}

pub(crate) async fn get(
    Admin(_): Admin,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<RunPayload>, AdminError> {
    let gateway = state.gateway();
    match gateway.payload(&run_id).await {
        Ok(Some(payload)) => Ok(Json(payload)),
        Ok(None) => Err(none_stored(&run_id, gateway.logs_payloads())),
        Err(error) => Err(AdminError::Internal(error.to_string())),
    }
}

pub(crate) async fn delete(
    Admin(_): Admin,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let gateway = state.gateway();
    match gateway.delete_payload(&run_id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(none_stored(&run_id, gateway.logs_payloads())),
        Err(error) => Err(AdminError::Internal(error.to_string())),
    }
}
