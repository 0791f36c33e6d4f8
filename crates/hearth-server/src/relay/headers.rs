//! Hearth's own headers: the caller's metadata in, the run's id and route out.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hearth_gateway::ledger::CallerMetadata;
use hearth_gateway::Caller;
use serde_json::Value;

use super::RelayError;
use crate::auth::Authenticated;

/// A JSON object of at most five string, number or boolean entries; the ledger groups spend by
/// them. It wins over a `metadata` field in the body.
pub(crate) const METADATA: &str = "x-hearth-metadata";
pub(crate) const RUN_ID: HeaderName = HeaderName::from_static("x-hearth-run-id");
/// The route that serves the run: `provider/model` or `local/<package>`.
pub(crate) const ROUTE: HeaderName = HeaderName::from_static("x-hearth-route");

/// The caller as its headers describe it. Bad metadata is refused here, naming the header, so a
/// caller never wonders which of header and body was wrong.
pub(crate) fn caller(
    headers: &HeaderMap,
    key: Option<&Authenticated>,
) -> Result<Caller, RelayError> {
    let keyed = Caller {
        api_key_id: key.map(|k| k.0.id.clone()),
        key: key.map(|k| k.0.clone()),
        ..Caller::default()
    };
    let Some(raw) = headers.get(METADATA) else {
        return Ok(keyed);
    };
    let bad = |message: String| RelayError::Header { name: METADATA, message };
    // Header values may carry UTF-8 (obs-text); only its JSON matters.
    let text = std::str::from_utf8(raw.as_bytes())
        .map_err(|_| bad("must be UTF-8 JSON text".to_owned()))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
    CallerMetadata::from_json(&value).map_err(|e| bad(e.to_string()))?;
    Ok(Caller { metadata: Some(value), ..keyed })
}

/// Sets `x-hearth-run-id` and, once a route has committed, `x-hearth-route`. A route the caller
/// named with characters a header cannot carry is left out rather than failing the answer.
pub(crate) fn set_run_headers(headers: &mut HeaderMap, run_id: &str, route: Option<&str>) {
    if let Ok(value) = HeaderValue::from_str(run_id) {
        headers.insert(RUN_ID, value);
    }
    if let Some(value) = route.and_then(|r| HeaderValue::from_str(r).ok()) {
        headers.insert(ROUTE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_metadata(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(METADATA, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn metadata_is_validated_and_named() {
        let caller = caller(&with_metadata(r#"{"team": "red", "n": 2}"#), None).unwrap();
        assert_eq!(caller.metadata, Some(serde_json::json!({"team": "red", "n": 2})));
        assert!(super::caller(&HeaderMap::new(), None).unwrap().metadata.is_none());
        for bad in ["{", "[1]", r#"{"a": {"b": 1}}"#, r#"{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1}"#] {
            let err = super::caller(&with_metadata(bad), None).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
            assert!(err.to_string().starts_with("header `x-hearth-metadata`"), "{err}");
        }
    }
}
