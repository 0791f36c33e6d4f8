//! The whole application: every surface's routes, the body limit, and JSON answers for the
//! requests no route takes.

use std::any::Any;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, MakeSpan, TraceLayer};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::state::AppState;
use crate::{admin, anthropic, auth, cog, health, metrics, openai, runs};

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().max_body_bytes;
    let request_span = RequestSpan { traces: state.config().traces };
    Router::new()
        .route("/health", get(health::health))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .merge(openai::routes())
        .merge(anthropic::routes())
        .merge(runs::routes())
        .merge(admin::routes())
        .merge(cog::model_routes())
        .merge(cog::routes())
        .merge(cog::replicate::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), cog::embeddings::hook))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cog::python::hook))
        // Outside the Cog hooks, so Python and embedding predictors are behind keys too.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(state.config().body_read_timeout))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// The span of one HTTP request (DEBUG, as tower-http makes it: free unless logs or traces
/// want it). When spans are exported, the caller's W3C `traceparent` becomes its parent, so
/// the request, its run and the run's upstream attempts join the caller's own trace.
#[derive(Clone, Copy)]
struct RequestSpan {
    traces: bool,
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        if !self.traces {
            return DefaultMakeSpan::new().make_span(request);
        }
        let (method, path) = (request.method(), request.uri().path());
        let span = tracing::debug_span!(
            "request",
            otel.name = %format!("{method} {path}"),
            otel.kind = "server",
            http.request.method = %method,
            url.path = %path,
        );
        let headers = opentelemetry_http::HeaderExtractor(request.headers());
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&headers)
        });
        // An absent or malformed `traceparent` leaves an empty context: the span starts a trace.
        let _ = span.set_parent(parent);
        span
    }
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    let message = format!("no route for {} {path}", request.method());
    // OpenAI clients read `error.message`; everyone else gets the plain shape Cog uses.
    let body = if path.starts_with("/v1/") {
        json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": "unknown_url" } })
    } else {
        json!({ "error": message })
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    let message = format!("{} is not allowed on {}", request.method(), request.uri().path());
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({ "error": message }))).into_response()
}

/// A handler panic is a bug; answer 500 JSON and keep serving instead of dropping the connection.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": "internal server error" })))
        .into_response()
}
