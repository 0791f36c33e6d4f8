//! Every way a Cog request can fail, and the one place each maps to a status and a body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::{LimitError, RunError, StartError};
use hearth_protocol::ErrorKind;

use crate::relay::status::add_retry_after;
use serde::Serialize;
use serde_json::json;

use crate::body::BodyError;

/// One entry of a 422 answer, in the shape FastAPI/pydantic (and so Cog) uses.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Detail {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl Detail {
    /// A problem with one input field: `loc` is `["body", "input", field]`.
    pub(crate) fn input(field: &str, msg: impl Into<String>) -> Self {
        Self::at(&["body", "input", field], msg)
    }

    /// A required field that is absent: pydantic's (and so Cog's) `value_error.missing`.
    pub(crate) fn missing(loc: &[&str]) -> Self {
        Self { kind: "value_error.missing", ..Self::at(loc, "field required") }
    }

    pub(crate) fn at(loc: &[&str], msg: impl Into<String>) -> Self {
        Self {
            loc: loc.iter().map(|s| (*s).to_owned()).collect(),
            msg: msg.into(),
            kind: "value_error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CogError {
    #[error("invalid request")]
    Invalid(Vec<Detail>),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("At capacity - all prediction slots busy")]
    AtCapacity,
    #[error("no prediction with id `{0}` is known to this server")]
    UnknownPrediction(String),
    #[error("the prediction id in the path is not valid percent-encoded UTF-8")]
    BadPredictionId,
    #[error("{message}")]
    UnknownModel { message: String, models: Vec<String> },
    #[error("model `{model}` failed to load: {reason}")]
    ModelFailed { model: String, reason: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A Python model whose setup has not finished, failed, or whose worker restarts.
    #[error("{0}")]
    NotReady(String),
    #[error("This model does not stream its output (a Python predictor streams when `@cog.streaming` marks an iterator `predict`); send the request without `Accept: text/event-stream`")]
    NotStreaming,
    #[error("shutdown over HTTP is disabled in this server's configuration")]
    ShutdownDisabled,
    /// The caller's API key may not use the model.
    #[error("{0}")]
    Forbidden(String),
    /// A `[[limits]]` entry refused the prediction (429), or its counters cannot be checked (503).
    #[error("{0}")]
    Limited(LimitError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CogError {
    pub(crate) fn input(field: &str, msg: impl Into<String>) -> Self {
        Self::Invalid(vec![Detail::input(field, msg)])
    }

    fn status(&self) -> StatusCode {
        match self {
            CogError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // Cog's server answers a body that is not JSON with 400, one that is JSON but not
            // an object fails its schema: 422.
            CogError::Body(BodyError::NotAnObject) => StatusCode::UNPROCESSABLE_ENTITY,
            CogError::Body(e) => e.status(),
            // The same answer to overload as every other surface: 429 with `Retry-After`.
            CogError::AtCapacity => StatusCode::TOO_MANY_REQUESTS,
            CogError::UnknownPrediction(_) | CogError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            CogError::BadPredictionId => StatusCode::BAD_REQUEST,
            CogError::NotStreaming => StatusCode::NOT_ACCEPTABLE,
            CogError::ModelFailed { .. } | CogError::ShuttingDown | CogError::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CogError::ShutdownDisabled | CogError::Forbidden(_) => StatusCode::FORBIDDEN,
            CogError::Limited(LimitError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            CogError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            CogError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for CogError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            CogError::Invalid(details) => json!({ "detail": details }),
            CogError::Body(err) => json!({ "detail": [Detail::at(&["body"], err.to_string())] }),
            // FastAPI's (and so Cog's) shape for a 404 or 400 about the path.
            CogError::UnknownPrediction(_) | CogError::BadPredictionId => {
                json!({ "detail": self.to_string() })
            }
            CogError::UnknownModel { models, .. } => {
                json!({ "error": self.to_string(), "models": models })
            }
            _ => json!({ "error": self.to_string(), "status": "failed" }),
        };
        let mut response = (status, Json(body)).into_response();
        add_retry_after(&mut response);
        if let CogError::Limited(limited) = &self {
            let value = axum::http::HeaderValue::from(limited.retry_after_secs());
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<StartError> for CogError {
    fn from(err: StartError) -> Self {
        match err {
            StartError::Invalid(invalid) => {
                CogError::input(cog_field(&invalid.field), invalid.message)
            }
            StartError::Runs(RunError::Full { .. }) => CogError::AtCapacity,
            StartError::Failed { error, .. } => match error.kind {
                ErrorKind::InvalidRequest => {
                    let field = error.param.as_deref().unwrap_or("prompt");
                    CogError::input(cog_field(field), error.message)
                }
                ErrorKind::Overloaded => CogError::AtCapacity,
                ErrorKind::Cancelled => CogError::ShuttingDown,
                ErrorKind::Upstream | ErrorKind::Timeout | ErrorKind::Internal => {
                    CogError::Internal(error.message)
                }
            },
            StartError::KeyForbidsModel { .. } => CogError::Forbidden(err.to_string()),
            StartError::Limited(limited) => CogError::Limited(limited),
            other => CogError::Internal(other.to_string()),
        }
    }
}

/// The Cog input name of a canonical sampling field.
pub(crate) fn cog_field(canonical: &str) -> &str {
    match canonical {
        "stop" => "stop_sequences",
        other => other,
    }
}
