//! Every way a request through the gateway can fail, and the one place each maps to an HTTP
//! status, a parameter name and a `Retry-After`. Each surface renders a [`RelayError`] in its
//! own error shape (OpenAI, Anthropic, the run API) and decorates it with [`decorate`].

use axum::http::StatusCode;
use axum::response::Response;
use hearth_gateway::ledger::LedgerError;
use hearth_gateway::{CatalogError, PredictRunError, RunError, StartError};
use hearth_protocol::{StreamError, ValidationError};

use super::headers::set_run_headers;
use super::status;
use crate::body::{BodyError, FieldError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("Invalid value for `{}`: {}", .0.path.as_deref().unwrap_or("body"), .0.message)]
    Field(FieldError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("header `{name}`: {message}")]
    Header { name: &'static str, message: String },
    #[error("query parameter `{param}`: {message}")]
    Query { param: &'static str, message: String },
    /// The gateway refused the request, or no route answered.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The run broke off after its route committed, for a caller waiting for one whole answer.
    #[error("the run failed: {error}")]
    Failed { run_id: String, route: String, error: Box<StreamError> },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("usage query failed: {0}")]
    Ledger(#[from] LedgerError),
    /// A Python predictor refused a prediction, or was not ready for it.
    #[error(transparent)]
    Predict(#[from] PredictRunError),
}

impl From<FieldError> for RelayError {
    fn from(err: FieldError) -> Self {
        // serde names a missing field only in its message ("missing field `model`").
        let path = err.path.clone().or_else(|| {
            let rest = err.message.strip_prefix("missing field `")?;
            rest.split('`').next().map(str::to_owned)
        });
        Self::Field(FieldError { path, message: err.message })
    }
}

impl RelayError {
    /// The same error, naming the field `to` where it named the canonical field `from`: a
    /// surface whose wire format calls a field otherwise reports it by its own name.
    pub(crate) fn rename_field(mut self, from: &str, to: &str) -> Self {
        if let Self::Invalid(e) | Self::Start(StartError::Invalid(e)) = &mut self {
            if e.field == from {
                e.field = to.to_owned();
            }
        }
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Body(e) => e.status(),
            Self::Field(_) | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Header { .. } | Self::Query { .. } => StatusCode::BAD_REQUEST,
            Self::Start(e) => status::of_start(e),
            Self::Failed { error, .. } => status::of_kind(error.kind),
            Self::Run(e) => status::of_run(e),
            Self::Ledger(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Predict(PredictRunError::Start(e)) => status::of_start(e),
            Self::Predict(PredictRunError::Invalid { .. }) => StatusCode::BAD_REQUEST,
            Self::Predict(PredictRunError::Busy) => StatusCode::TOO_MANY_REQUESTS,
            Self::Predict(PredictRunError::NotReady(_)) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The request field, header or query parameter at fault, when one is.
    pub(crate) fn param(&self) -> Option<&str> {
        match self {
            Self::Field(e) => e.path.as_deref(),
            Self::Invalid(e) | Self::Start(StartError::Invalid(e)) => Some(&e.field),
            Self::Header { name, .. } => Some(name),
            Self::Query { param, .. } => Some(param),
            Self::Start(StartError::Model(_)) => Some("model"),
            Self::Predict(PredictRunError::Invalid { field, .. }) => field.as_deref(),
            Self::Predict(PredictRunError::Start(StartError::Model(_))) => Some("model"),
            Self::Start(StartError::Metadata(_)) => Some("metadata"),
            Self::Start(StartError::KeyForbidsModel { .. }) => Some("model"),
            Self::Start(StartError::Failed { error, .. }) => error.param.as_deref(),
            Self::Failed { error, .. } => error.param.as_deref(),
            _ => None,
        }
    }

    /// A machine-readable code for the errors callers act on.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            Self::Start(StartError::Failed { error, .. }) if error.code.is_some() => {
                error.code.as_deref()
            }
            Self::Failed { error, .. } if error.code.is_some() => error.code.as_deref(),
            Self::Body(BodyError::TooLarge { .. }) => Some("request_too_large"),
            Self::Body(BodyError::Stalled) => Some("timeout"),
            Self::Body(_) => Some("invalid_json"),
            Self::Start(StartError::Model(
                CatalogError::NotFound(_) | CatalogError::NoAdapter { .. },
            )) => Some("model_not_found"),
            Self::Start(StartError::Model(CatalogError::Unavailable { .. })) => {
                Some("model_unavailable")
            }
            Self::Run(RunError::NotFound(_)) => Some("run_not_found"),
            Self::Run(RunError::BadCursor { .. }) => Some("bad_cursor"),
            Self::Start(StartError::Limited(_)) if self.status().as_u16() == 429 => {
                Some("limit_exceeded")
            }
            _ => match self.status().as_u16() {
                429 => Some("rate_limit_exceeded"),
                503 => Some("overloaded"),
                504 => Some("timeout"),
                _ => None,
            },
        }
    }

    fn run(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Self::Start(e) => e.run_id().map(|id| (id, None)),
            Self::Failed { run_id, route, .. } => Some((run_id, Some(route))),
            _ => None,
        }
    }
}

/// Anthropic's error type names, which also serve the run API: they say what happened without
/// naming a vendor.
pub(crate) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        499 => "cancelled_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// What every surface's error response carries besides its body: `Retry-After` on 429 and 503,
/// and the run's headers when the run exists.
pub(crate) fn decorate(mut response: Response, error: &RelayError) -> Response {
    status::add_retry_after(&mut response);
    // A limit knows when it frees up; every other refusal gets the fixed hint.
    if let RelayError::Start(StartError::Limited(limited)) = error {
        let value = axum::http::HeaderValue::from(limited.retry_after_secs());
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
    }
    if let Some((run_id, route)) = error.run() {
        set_run_headers(response.headers_mut(), run_id, route);
    }
    response
}
