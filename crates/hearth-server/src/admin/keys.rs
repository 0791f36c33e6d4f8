//! `/admin/api-keys`: create, list and revoke client API keys. A created key's secret is in
//! the answer once and never again (only its SHA-256 is stored).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hearth_gateway::keys::{KeyError, NewKey};
use serde_json::{json, Value};

use super::{Admin, AdminError};
use crate::state::AppState;

impl From<KeyError> for AdminError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Invalid(message) => AdminError::BadRequest(message),
            KeyError::NotFound(_) => AdminError::NotFound(error.to_string()),
            KeyError::Declared(_) => AdminError::Conflict(error.to_string()),
            KeyError::Store(e) => AdminError::Internal(e.to_string()),
        }
    }
}

/// `POST /admin/api-keys` with `{"name", "metadata"?, "models"?, "requests_per_minute"?,
/// "tokens_per_minute"?, "spend_per_day"?, "spend_per_month"?}`: 201 with the key and, once,
/// its secret (`key`).
pub(crate) async fn create(
    Admin(_): Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let new: NewKey =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                let path = e.path().to_string();
                AdminError::BadRequest(format!(
                    "invalid key request at `{path}`: {}",
                    e.into_inner()
                ))
            })?;
    let (key, secret) = state.gateway().keys().create(new).await?;
    let mut answer = json!(key);
    answer["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /admin/api-keys`: every key that works now, without secrets.
pub(crate) async fn list(
    Admin(_): Admin,
    State(state): State<AppState>,
) -> Result<Json<Value>, AdminError> {
    let keys = state.gateway().keys().list().await?;
    Ok(Json(json!({ "data": keys })))
}

/// `DELETE /admin/api-keys/{id}`: the key stops working (at once here, within seconds on the
/// other replicas).
pub(crate) async fn revoke(
    Admin(_): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    state.gateway().keys().revoke(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
