//! `GET /v1/usage?group_by=model|route|metadata.<key>&since=…&until=…`: spend from the ledger,
//! one row per group: requests (and of them failed, cancelled and cached ones), rejected
//! requests, input/output/cached tokens and cost. Times are RFC 3339.

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use hearth_gateway::{GroupBy, UsageQuery};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;
use crate::relay::RelayError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

pub(crate) async fn usage(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = Query::<UsageParams>::try_from_uri(&uri)
        .map_err(|e| RelayError::Query { param: "query", message: e.body_text() })?;
    let group_by: GroupBy = params
        .group_by
        .as_deref()
        .unwrap_or("model")
        .parse()
        .map_err(|message| RelayError::Query { param: "group_by", message })?;
    let query = UsageQuery {
        group_by,
        since: time(params.since.as_deref(), "since")?,
        until: time(params.until.as_deref(), "until")?,
    };
    let groups = state.gateway().usage(&query).await.map_err(RelayError::from)?;
    Ok(Json(json!({
        "object": "list",
        "group_by": params.group_by.as_deref().unwrap_or("model"),
        "since": query.since,
        "until": query.until,
        "data": groups,
    })))
}

fn time(value: Option<&str>, param: &'static str) -> Result<Option<DateTime<Utc>>, RelayError> {
    parse_time(value).map_err(|message| RelayError::Query { param, message })
}

/// An RFC 3339 time, or why the text is not one.
pub(crate) fn parse_time(value: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    value
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("`{text}` is not an RFC 3339 time ({e})"))
        })
        .transpose()
}
