//! The one table of HTTP statuses: every error kind the lower crates report (the canonical
//! [`ErrorKind`], the gateway's start, run and catalog errors) is mapped to a status here, at
//! the edge, and only here. The lower crates carry kinds and know nothing of HTTP.

use axum::http::StatusCode;
use hearth_gateway::{CatalogError, LimitError, RunError, StartError};
use hearth_protocol::ErrorKind;

/// Seconds a caller is told to wait after a 429 or 503, on every surface. The gateway does not
/// pass an upstream's own `Retry-After` through (it already waited out the short ones before
/// failing over), so this is a fixed, short hint.
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

/// Sets `Retry-After` on a 429 or 503, whichever surface wrote the answer: every overloaded
/// or unavailable answer tells the caller when to come back, in one place.
pub(crate) fn add_retry_after(response: &mut axum::response::Response) {
    if matches!(response.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
    {
        let value = axum::http::HeaderValue::from(RETRY_AFTER_SECS);
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
    }
}

/// The status an edge answers with for an error of `kind`, had no byte of the answer been sent.
pub(crate) fn of_kind(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        // Every route busy or rate-limited, local queue full included.
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        // nginx's "client closed request": the caller (or an operator) cancelled the run.
        ErrorKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn of_catalog(error: &CatalogError) -> StatusCode {
    match error {
        CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
        CatalogError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        CatalogError::EmbeddingOnly(_) => StatusCode::BAD_REQUEST,
        CatalogError::NoAdapter { .. } => StatusCode::NOT_FOUND,
    }
}

pub(crate) fn of_run(error: &RunError) -> StatusCode {
    match error {
        RunError::NotFound(_) => StatusCode::NOT_FOUND,
        RunError::AlreadyExists(_) | RunError::Ended(_) => StatusCode::CONFLICT,
        RunError::BadCursor { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        RunError::Full { .. } | RunError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub(crate) fn of_start(error: &StartError) -> StatusCode {
    match error {
        StartError::Invalid(_) | StartError::Metadata(_) => StatusCode::BAD_REQUEST,
        StartError::Model(e) => of_catalog(e),
        StartError::Runs(e) => of_run(e),
        StartError::Failed { error, .. } => of_kind(error.kind),
        StartError::Limited(LimitError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        StartError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
        StartError::KeyForbidsModel { .. } => StatusCode::FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status() {
        let statuses: Vec<u16> = [
            ErrorKind::InvalidRequest,
            ErrorKind::Upstream,
            ErrorKind::Timeout,
            ErrorKind::Overloaded,
            ErrorKind::Cancelled,
            ErrorKind::Internal,
        ]
        .into_iter()
        .map(|kind| of_kind(kind).as_u16())
        .collect();
        assert_eq!(statuses, [400, 502, 504, 429, 499, 500]);
        assert_eq!(of_catalog(&CatalogError::NotFound("m".into())), StatusCode::NOT_FOUND);
        let unavailable = CatalogError::Unavailable { model: "m".into(), reason: "r".into() };
        assert_eq!(of_catalog(&unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(of_run(&RunError::NotFound("r".into())), StatusCode::NOT_FOUND);
        let cursor = RunError::BadCursor { run_id: "r".into(), from: 9, num_events: 2 };
        assert_eq!(of_run(&cursor), StatusCode::RANGE_NOT_SATISFIABLE);
    }
}
