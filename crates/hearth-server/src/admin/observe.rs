//! What the dashboard reads: the catalog with each model's state, the runs being produced, spend
//! over time, and the local engines' latency histograms. JSON, behind the admin [`Admin`] check.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/catalog` | every model a caller can name (`/v1/models`' fields) with its `state` |
//! | `GET /admin/runs` | the runs this daemon is producing: model, route, tokens so far, age, metadata |
//! | `GET /admin/runs/{id}` | one run: live figures while produced here, its buffer's status, its ledger record and stored payload (`null` when none) once ended |
//! | `POST /admin/runs/{id}/cancel` | asks the run's producer to stop (any replica's run) |
//! | `GET /admin/usage?group_by=…&since=…&until=…&bucket=SECONDS` | `/v1/usage`'s totals, and per time bucket |
//! | `GET /admin/metrics` | each local model's latency histograms and token counters, as `/metrics` |

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use hearth_gateway::{
    CatalogEntry, GroupBy, HistogramSnapshot, RunError, UsageQuery, LATENCY_BUCKETS_SECONDS,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Admin, AdminError};
use crate::runs::usage::parse_time;
use crate::state::AppState;

/// The most buckets one series may have, so a tiny bucket over a long range cannot make the
/// ledger build an answer of millions of rows.
const MAX_BUCKETS: i64 = 10_000;
/// The longest bucket: a year (longer ones would overflow the ledger's millisecond arithmetic).
const MAX_BUCKET_SECS: u64 = 366 * 24 * 3600;

pub(crate) async fn catalog(Admin(admin): Admin, State(state): State<AppState>) -> Json<Value> {
    let catalog = state.catalog();
    let mut data: Vec<Value> = catalog
        .list_models()
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "kind": m.kind, "state": "ready", "reason": null,
                "providers": m.providers, "modality": m.modality,
                "context_length": m.context_length, "prices": m.prices,
            })
        })
        .collect();
    for (name, entry) in catalog.entries() {
        if let CatalogEntry::Failed { reason } = entry {
            // A `[[models]]` entry may name the failed package too: one row, marked failed.
            match data.iter_mut().find(|m| m["id"] == json!(name)) {
                Some(row) => {
                    row["state"] = json!("failed");
                    row["reason"] = json!(reason);
                }
                None => data.push(
                    json!({ "id": name, "kind": "local", "state": "failed", "reason": reason }),
                ),
            }
        }
    }
    for (name, _) in admin.snapshot() {
        if !data.iter().any(|m| m["id"] == json!(name)) {
            data.push(json!({ "id": name, "kind": "local", "state": "loading", "reason": null }));
        }
    }
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "data": data }))
}

pub(crate) async fn runs(Admin(_): Admin, State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "data": state.gateway().live_runs() }))
}

pub(crate) async fn run(
    Admin(_): Admin,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let gateway = state.gateway();
    let live = gateway.live_runs().into_iter().find(|run| run.run_id == run_id);
    let status = match gateway.status(&run_id).await {
        Ok(info) => Some(info),
        Err(RunError::NotFound(_)) => None,
        Err(error) => return Err(AdminError::Internal(error.to_string())),
    };
    let internal = |e: hearth_gateway::ledger::LedgerError| AdminError::Internal(e.to_string());
    let record = gateway.ledger().get(&run_id).await.map_err(internal)?;
    if live.is_none() && status.is_none() && record.is_none() {
        return Err(AdminError::NotFound(format!("run `{run_id}` not found")));
    }
    let payload = gateway.payload(&run_id).await.map_err(internal)?;
    Ok(Json(json!({
        "run_id": run_id, "live": live, "status": status, "record": record, "payload": payload,
    })))
}

pub(crate) async fn cancel(
    Admin(_): Admin,
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    match state.gateway().cancel(&run_id).await {
        Ok(info) => Ok(Json(json!({ "run_id": info.run_id, "status": info.status }))),
        Err(RunError::NotFound(_)) => {
            Err(AdminError::NotFound(format!("run `{run_id}` not found")))
        }
        Err(error) => Err(AdminError::Internal(error.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct UsageParams {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    bucket: Option<u64>,
}

pub(crate) async fn usage(
    Admin(_): Admin,
    State(state): State<AppState>,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(params) = params.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let group_by_text = params.group_by.as_deref().unwrap_or("model");
    let group_by: GroupBy = group_by_text.parse().map_err(AdminError::BadRequest)?;
    let bad =
        |(param, message): (&str, String)| AdminError::BadRequest(format!("{param}: {message}"));
    let query = UsageQuery {
        group_by,
        since: parse_time(params.since.as_deref()).map_err(|m| bad(("since", m)))?,
        until: parse_time(params.until.as_deref()).map_err(|m| bad(("until", m)))?,
    };
    // Checked before any query, so a refused bucket costs the ledger nothing.
    let bucket = params.bucket.map(|secs| checked_bucket(&query, secs)).transpose()?;
    let gateway = state.gateway();
    let totals = gateway.usage(&query).await.map_err(|e| AdminError::Internal(e.to_string()))?;
    let series = match bucket {
        None => None,
        Some(bucket) => {
            let series = gateway.usage_series(&query, bucket).await;
            Some(series.map_err(|e| AdminError::Internal(e.to_string()))?)
        }
    };
    Ok(Json(json!({
        "group_by": group_by_text,
        "since": query.since,
        "until": query.until,
        "bucket_secs": params.bucket,
        "totals": totals,
        "series": series,
    })))
}

/// A bucket of `secs`: at least a second, at most a year, and at most [`MAX_BUCKETS`] of them
/// from `since` (which a series needs) to `until` (now, when unset).
fn checked_bucket(query: &UsageQuery, secs: u64) -> Result<Duration, AdminError> {
    let bad = |message: String| Err(AdminError::BadRequest(format!("bucket: {message}")));
    if secs == 0 || secs > MAX_BUCKET_SECS {
        return bad(format!("{secs} s is not between 1 s and a year ({MAX_BUCKET_SECS} s)"));
    }
    let Some(since) = query.since else {
        return bad("a series needs `since`, the start of its first bucket".into());
    };
    let until = query.until.unwrap_or_else(chrono::Utc::now);
    let span = (until - since).num_seconds().max(0);
    if span / secs as i64 > MAX_BUCKETS {
        return bad(format!(
            "{secs} s cuts {since} to {until} into more than {MAX_BUCKETS} buckets"
        ));
    }
    Ok(Duration::from_secs(secs))
}

pub(crate) async fn metrics(Admin(_): Admin, State(state): State<AppState>) -> Json<Value> {
    let catalog = state.catalog();
    let data: Vec<Value> = catalog
        .ready()
        .map(|(name, model)| {
            let (stats, metrics) = (model.engine.stats(), model.engine.metrics());
            let kv = match stats.kv_blocks_total {
                0 => 0.0,
                total => stats.kv_blocks_used as f64 / total as f64,
            };
            json!({
                "model": name,
                "time_to_first_token": histogram(&metrics.time_to_first_token),
                "inter_token_latency": histogram(&metrics.inter_token_latency),
                "e2e_latency": histogram(&metrics.e2e_latency),
                "generation_tokens_total": stats.num_generated_tokens,
                "prompt_tokens_total": stats.num_prompt_tokens,
                "running": stats.num_running,
                "waiting": stats.num_waiting,
                "kv_cache_usage": kv,
            })
        })
        .collect();
    // Every engine's histograms share these bounds.
    Json(json!({ "bucket_bounds_seconds": LATENCY_BUCKETS_SECONDS, "data": data }))
}

/// A histogram's counts per bucket (not cumulative), the last one for `+Inf`.
fn histogram(snapshot: &HistogramSnapshot) -> Value {
    let mut counts = Vec::new();
    let mut below = 0;
    for (_, cumulative) in snapshot.buckets() {
        counts.push(cumulative.saturating_sub(below));
        below = cumulative;
    }
    counts.push(snapshot.count.saturating_sub(below));
    json!({ "counts": counts, "count": snapshot.count, "sum_seconds": snapshot.sum_seconds })
}
