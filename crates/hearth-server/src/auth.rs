//! Client API keys at the edge: once any key exists (declared in `hearth.toml` or created
//! through the admin API), every model request needs `Authorization: Bearer <key>` or
//! `x-api-key: <key>`. The key found is in scope for the rest of the request's handling
//! ([`current_key`], a task-local the middleware sets), so every surface that builds a
//! [`Caller`] hands it to the gateway, with no surface able to forget it. Health, metrics and
//! the admin API (which has its own token) are not behind keys.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::keys::{ApiKey, AuthError};
use hearth_gateway::Caller;
use serde_json::json;

use crate::state::AppState;

tokio::task_local! {
    /// The key the request being handled authenticated with.
    static KEY: Arc<ApiKey>;
}

/// The key the request being handled authenticated with; `None` when keys are not required.
pub(crate) fn current_key() -> Option<Arc<ApiKey>> {
    KEY.try_with(Arc::clone).ok()
}

/// A caller carrying the request's key (its id, metadata, models and limits).
pub(crate) fn keyed_caller() -> Caller {
    let key = current_key();
    Caller { api_key_id: key.as_ref().map(|k| k.id.clone()), key, ..Caller::default() }
}

fn exempt(path: &str) -> bool {
    matches!(path, "/health" | "/health/ready" | "/metrics" | "/favicon.ico" | "/dashboard")
        || path.starts_with("/admin/")
        || path.starts_with("/dashboard/")
}

/// The secret a request carries: `Authorization: Bearer …`, else `x-api-key`.
fn secret(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

pub(crate) async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let keys = state.gateway().keys();
    let checked = match keys.required().await {
        Ok(false) => return next.run(request).await,
        Ok(true) => match secret(request.headers()) {
            Some(secret) if !secret.is_empty() => keys.authenticate(secret).await,
            _ => Err(AuthError::Missing),
        },
        Err(error) => Err(error),
    };
    match checked {
        Ok(key) => KEY.scope(key, next.run(request)).await,
        Err(error) => refusal(&error),
    }
}

/// 401 for a missing or wrong key, 503 when keys cannot be checked; OpenAI's error shape,
/// which every client library reads.
fn refusal(error: &AuthError) -> Response {
    let (status, kind, code) = match error {
        AuthError::Missing => (StatusCode::UNAUTHORIZED, "authentication_error", "missing_api_key"),
        AuthError::Invalid => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
        AuthError::Unavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "api_error", "keys_unavailable")
        }
    };
    let body =
        json!({"error": {"message": error.to_string(), "type": kind, "param": null, "code": code}});
    let mut response = (status, Json(body)).into_response();
    crate::relay::status::add_retry_after(&mut response);
    response
}
