//! How admin calls fail: one status per variant, and a JSON body `{"error": message, "code"}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_package::archive::ArchiveError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The upload broke off before the archive ended (the client went away, most likely).
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    /// The archive unpacked, but the package in it was refused.
    #[error("the package was refused: {0}")]
    Refused(String),
    /// The archive unpacked, but the LoRA adapter in it does not fit its base model.
    #[error("the adapter was refused: {0}")]
    AdapterRefused(String),
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Interrupted(_) => (StatusCode::BAD_REQUEST, "upload_interrupted"),
            Self::Archive(err) => archive_status(err),
            Self::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "package_refused"),
            Self::AdapterRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "adapter_refused"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

fn archive_status(err: &ArchiveError) -> (StatusCode, &'static str) {
    match err {
        ArchiveError::Unsafe { .. } => (StatusCode::BAD_REQUEST, "unsafe_entry"),
        ArchiveError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_archive"),
        ArchiveError::EntryTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "entry_too_large"),
        ArchiveError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large"),
        ArchiveError::TooManyEntries { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_entries"),
        // Reading the upload is told apart before this (`Interrupted`); what is left is the
        // daemon's own disk.
        ArchiveError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "staging_failed"),
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::error!(%message, code, "admin call failed");
        } else {
            tracing::warn!(%message, code, status = status.as_u16(), "admin call refused");
        }
        let body = Json(json!({ "error": message, "code": code }));
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}
