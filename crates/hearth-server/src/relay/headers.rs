//! Hearth's own headers: the caller's metadata in, the run's id and route out.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hearth_gateway::ledger::CallerMetadata;
use std::time::Duration;

use hearth_gateway::cache::{CacheOptions, CacheStatus, MAX_TTL};
use hearth_gateway::logging::LogOptions;
use hearth_gateway::Caller;
use serde_json::Value;

use super::RelayError;

/// A JSON object of at most five string, number or boolean entries; the ledger groups spend by
/// them. It wins over a `metadata` field in the body.
pub(crate) const METADATA: &str = "x-hearth-metadata";
pub(crate) const RUN_ID: HeaderName = HeaderName::from_static("x-hearth-run-id");
/// The route that serves the run: `provider/model` or `local/<package>`.
pub(crate) const ROUTE: HeaderName = HeaderName::from_static("x-hearth-route");

/// The caller as its headers describe it. Bad metadata is refused here, naming the header, so a
/// caller never wonders which of header and body was wrong.
pub(crate) fn caller(headers: &HeaderMap) -> Result<Caller, RelayError> {
    let keyed = Caller {
        cache: cache_options(headers)?,
        session: session(headers)?,
        log: log_options(headers)?,
        ..crate::auth::keyed_caller()
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

/// Keep this answer for this many seconds (at most a day), and answer from a kept one.
pub(crate) const CACHE_TTL: &str = "x-hearth-cache-ttl";
/// `true`: do not answer from a kept answer (a fresh one is still kept when a TTL is given).
pub(crate) const SKIP_CACHE: &str = "x-hearth-skip-cache";
/// The caller's own cache key, instead of one computed from the request.
pub(crate) const CACHE_KEY: &str = "x-hearth-cache-key";
/// `HIT` or `MISS` on answers to requests that used the cache.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("x-hearth-cache-status");

/// `false`: keep nothing of this request beyond its ledger record.
pub(crate) const COLLECT_LOG: &str = "x-hearth-collect-log";
/// `true` or `false`: store this request's payloads (or not), whatever `[logging]` says.
pub(crate) const COLLECT_LOG_PAYLOAD: &str = "x-hearth-collect-log-payload";

/// The logging headers, each refused by name unless it is `true` or `false`.
pub(crate) fn log_options(headers: &HeaderMap) -> Result<LogOptions, RelayError> {
    let flag = |name: &'static str| match headers.get(name).map(|v| v.to_str().map(str::trim)) {
        None => Ok(None),
        Some(Ok("true")) => Ok(Some(true)),
        Some(Ok("false")) => Ok(Some(false)),
        Some(_) => Err(RelayError::Header { name, message: "must be true or false".into() }),
    };
    Ok(LogOptions { collect: flag(COLLECT_LOG)?, payload: flag(COLLECT_LOG_PAYLOAD)? })
}

/// A conversation's id, so a route over several engine replicas keeps it on one.
pub(crate) const SESSION_AFFINITY: &str = "x-session-affinity";

fn session(headers: &HeaderMap) -> Result<Option<String>, RelayError> {
    let Some(value) = headers.get(SESSION_AFFINITY) else { return Ok(None) };
    match value.to_str() {
        Ok(text) if !text.trim().is_empty() && text.len() <= 256 => {
            Ok(Some(text.trim().to_owned()))
        }
        _ => Err(RelayError::Header {
            name: SESSION_AFFINITY,
            message: "must be 1 to 256 characters of text".into(),
        }),
    }
}

/// The response-cache headers, each refused by name when it cannot be read.
fn cache_options(headers: &HeaderMap) -> Result<CacheOptions, RelayError> {
    let text = |name: &'static str| -> Result<Option<&str>, RelayError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map_err(|_| RelayError::Header { name, message: "must be text".into() })
            })
            .transpose()
    };
    let ttl = match text(CACHE_TTL)? {
        None => None,
        Some(value) => match value.trim().parse::<u64>() {
            Ok(secs) if (1..=MAX_TTL.as_secs()).contains(&secs) => Some(Duration::from_secs(secs)),
            _ => {
                let message =
                    format!("must be a whole number of seconds from 1 to {}", MAX_TTL.as_secs());
                return Err(RelayError::Header { name: CACHE_TTL, message });
            }
        },
    };
    let skip = match text(SKIP_CACHE)?.map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(RelayError::Header {
                name: SKIP_CACHE,
                message: "must be true or false".into(),
            })
        }
    };
    let key = match text(CACHE_KEY)? {
        Some(key) if key.is_empty() || key.len() > 256 => {
            let message = "must be 1 to 256 characters".into();
            return Err(RelayError::Header { name: CACHE_KEY, message });
        }
        key => key.map(str::to_owned),
    };
    Ok(CacheOptions { ttl, skip, key })
}

/// Sets `x-hearth-cache-status` on the answer of a request that used the cache.
pub(crate) fn set_cache_status(headers: &mut HeaderMap, status: Option<CacheStatus>) {
    if let Some(status) = status {
        headers.insert(CACHE_STATUS, HeaderValue::from_static(status.as_str()));
    }
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
        let caller = caller(&with_metadata(r#"{"team": "red", "n": 2}"#)).unwrap();
        assert_eq!(caller.metadata, Some(serde_json::json!({"team": "red", "n": 2})));
        assert!(super::caller(&HeaderMap::new()).unwrap().metadata.is_none());
        for bad in ["{", "[1]", r#"{"a": {"b": 1}}"#, r#"{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1}"#] {
            let err = super::caller(&with_metadata(bad)).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
            assert!(err.to_string().starts_with("header `x-hearth-metadata`"), "{err}");
        }
    }
}
