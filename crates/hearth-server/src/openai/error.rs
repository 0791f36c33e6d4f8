//! Every way an OpenAI-compatible request can fail, and the one place each maps to a status and
//! OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::body::{BodyError, FieldError};
use crate::relay::status::{add_retry_after, RETRY_AFTER_SECS};
use crate::relay::{decorate, RelayError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenAiError {
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    #[error("The model `{0}` does not exist")]
    ModelNotFound(String),
    /// A stored object (a response) that does not exist, or no longer does.
    #[error("{0}")]
    NotFound(String),
    #[error("The model `{model}` failed to load: {reason}")]
    ModelUnavailable { model: String, reason: String },
    #[error("{0}")]
    Body(#[from] BodyError),
    #[error("The model is overloaded: {num_waiting} requests are already waiting. Retry after {RETRY_AFTER_SECS} s.")]
    Overloaded { num_waiting: usize },
    #[error("The server is shutting down")]
    ShuttingDown,
    #[error("Generation failed: {0}")]
    Generation(String),
    /// A request through the gateway failed; the relay knows its status.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl OpenAiError {
    pub(crate) fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param.to_owned()) }
    }
}

impl OpenAiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Body(e) => e.status(),
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::ModelUnavailable { .. } | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            // The same answer to overload as every other surface.
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Generation(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Relay(e) => e.status(),
        }
    }

    /// `(type, param, code)` of the error body.
    fn parts(&self) -> (&'static str, Option<&str>, Option<&str>) {
        match self {
            Self::InvalidRequest { param, .. } => ("invalid_request_error", param.as_deref(), None),
            Self::ModelNotFound(_) => {
                ("invalid_request_error", Some("model"), Some("model_not_found"))
            }
            Self::NotFound(_) => ("invalid_request_error", None, Some("not_found")),
            Self::ModelUnavailable { .. } => {
                ("server_error", Some("model"), Some("model_unavailable"))
            }
            Self::Body(BodyError::TooLarge { .. }) => {
                ("invalid_request_error", None, Some("request_too_large"))
            }
            Self::Body(BodyError::Stalled) => ("invalid_request_error", None, Some("timeout")),
            Self::Body(_) => ("invalid_request_error", None, Some("invalid_json")),
            Self::Overloaded { .. } => ("server_error", None, Some("overloaded")),
            Self::ShuttingDown => ("server_error", None, Some("shutting_down")),
            Self::Generation(_) => ("server_error", None, None),
            Self::Relay(e) => {
                let kind = match e.status().as_u16() {
                    429 => "rate_limit_error",
                    400..=499 => "invalid_request_error",
                    _ => "server_error",
                };
                (kind, e.param(), e.code())
            }
        }
    }

    /// The error object, also sent as the last chunk of a stream that failed.
    pub(crate) fn body(&self) -> Value {
        let (kind, param, code) = self.parts();
        json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }
}

impl From<FieldError> for OpenAiError {
    fn from(err: FieldError) -> Self {
        // serde names a missing field only in its message ("missing field `model`").
        let param = err.path.or_else(|| {
            let rest = err.message.strip_prefix("missing field `")?;
            rest.split('`').next().map(str::to_owned)
        });
        let message = match &param {
            Some(param) => format!("Invalid value for `{param}`: {}", err.message),
            None => format!("Invalid request: {}", err.message),
        };
        Self::InvalidRequest { message, param }
    }
}

impl From<hearth_protocol::ValidationError> for OpenAiError {
    fn from(err: hearth_protocol::ValidationError) -> Self {
        Self::invalid(&err.field, err.to_string())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Self::Relay(relay) = &self {
            return decorate(response, relay);
        }
        add_retry_after(&mut response);
        response
    }
}
