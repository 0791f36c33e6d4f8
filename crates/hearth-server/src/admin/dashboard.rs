//! `GET /dashboard`: the dashboard's page, scripts and styles, embedded in the binary (plain
//! files in `dashboard/`, no build step). The page holds no data: everything it shows comes
//! from the admin API ([`super::observe`]), called with the admin token the person types once
//! (kept in the tab's `sessionStorage`). So the shell is served to anyone who may reach the
//! admin API: everyone when a token is configured (the data still needs it), loopback clients
//! otherwise.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{check_loopback, enabled, AdminError};
use crate::state::AppState;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const PARTS: &str = include_str!("dashboard/parts.js");
const STYLES: &str = include_str!("dashboard/app.css");

/// Scripts, styles and calls only from the daemon itself; never framed.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Someone allowed to load the dashboard's shell.
pub(crate) struct Viewer;

impl FromRequestParts<AppState> for Viewer {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        if enabled(state)?.settings.token.is_none() {
            check_loopback(parts)?;
        }
        Ok(Viewer)
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

pub(crate) async fn page(_: Viewer) -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn script(_: Viewer) -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The building blocks `app.js` imports (formatting, DOM builders, charts).
pub(crate) async fn parts(_: Viewer) -> Response {
    asset("text/javascript; charset=utf-8", PARTS)
}

pub(crate) async fn styles(_: Viewer) -> Response {
    asset("text/css; charset=utf-8", STYLES)
}

/// What the page must know before it calls the admin API: whether it needs a token (so that a
/// first visit asks for one instead of making a call that is refused).
pub(crate) async fn config(_: Viewer, State(state): State<AppState>) -> Response {
    let token_required = state.admin().is_some_and(|admin| admin.settings.token.is_some());
    let mut response = Json(json!({ "token_required": token_required })).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Browsers ask every site for an icon; answering "none" keeps their consoles clean.
pub(crate) async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}
