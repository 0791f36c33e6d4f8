//! Reading JSON request bodies without axum's plain-text rejections.
//!
//! Both surfaces read the body as bytes, parse it here, and turn a [`BodyError`] or
//! [`FieldError`] into their own error shape, so a client always gets JSON that says what is
//! wrong and where.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    Unreadable(String),
    #[error("the request body stopped arriving for longer than the server waits")]
    Stalled,
    #[error(
        "the request body is declared as `{0}`; send JSON with `Content-Type: application/json`"
    )]
    NotJson(String),
    #[error("the request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("the request body must be a JSON object")]
    NotAnObject,
}

impl BodyError {
    /// The status every surface answers this with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Stalled => StatusCode::REQUEST_TIMEOUT,
            Self::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unreadable(_) | Self::Malformed(_) | Self::NotAnObject => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads the whole body (bounded by the router's body limit) as a JSON object. A body declared
/// as something else than JSON is refused before it is read; one with no `Content-Type` is
/// taken as JSON, as the OpenAI and Cog servers do.
pub(crate) async fn read_object<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
) -> Result<Map<String, Value>, BodyError> {
    check_json_content_type(req.headers())?;
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            BodyError::TooLarge { limit }
        } else if stalled(&rejection) {
            BodyError::Stalled
        } else {
            BodyError::Unreadable(rejection.body_text())
        }
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BodyError::NotAnObject),
        Err(err) => Err(BodyError::Malformed(err.to_string())),
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), BodyError> {
    let Some(declared) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let declared = String::from_utf8_lossy(declared.as_bytes()).into_owned();
    let essence = declared.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(BodyError::NotJson(declared))
    }
}

/// Whether the body broke off because the router's body-read timeout fired.
fn stalled(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A field whose value has the wrong type or shape. `path` is the field's JSON path, such as
/// `messages[0].content`; it is `None` for a problem with the whole object (a missing field).
#[derive(Debug)]
pub(crate) struct FieldError {
    pub path: Option<String>,
    pub message: String,
}

/// Deserializes `value` (a `Value`, or a `&Value` read in place) into `T`, keeping the path of
/// the field that failed.
pub(crate) fn typed<'de, T, D>(value: D) -> Result<T, FieldError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        FieldError { path: (path != ".").then_some(path), message }
    })
}
