//! What the SQL ledgers (SQLite, PostgreSQL) share: the stored forms of costs and times, the
//! usage query, and reading rows back, written once over sqlx's `Row`.

use std::str::FromStr;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    CallerMetadata, GroupBy, LedgerError, LedgerRecord, LedgerStatus, UsageGroup, UsageRow,
};

pub(super) use crate::pricing::{from_nanos, to_nanos};

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn millis(at: &DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The usage query, with `param(n)` writing the n-th placeholder (`?` or `$n`), in buckets of
/// `bucket` when given (the column `t`, each bucket's start in ms). Its parameters are the
/// metadata key (when grouping by one), then the window's start and end in ms.
pub(super) fn usage_sql(
    group_by: &GroupBy,
    bucket: Option<Duration>,
    param: impl Fn(usize) -> String,
) -> String {
    let bucket_ms = bucket.map(|b| i64::try_from(b.as_millis()).unwrap_or(i64::MAX).max(1));
    let (key, join, window) = match group_by {
        GroupBy::Model => ("r.model", String::new(), 1),
        GroupBy::Route => ("r.route", String::new(), 1),
        GroupBy::Metadata(_) => (
            "m.value",
            format!("LEFT JOIN usage_metadata m ON m.run_id = r.run_id AND m.key = {}", param(1)),
            2,
        ),
    };
    // A number, so written into the statement: integer division floors the start to its bucket.
    let (bucket, bucket_key) = match bucket_ms {
        Some(ms) => (format!("(r.started_at_ms / {ms}) * {ms} AS t,"), "t, "),
        None => (String::new(), ""),
    };
    // The CASTs make PostgreSQL's SUM (a NUMERIC over BIGINT) come back as a BIGINT; SQLite's
    // SUM of integers is an integer already.
    format!(
        "SELECT {bucket} {key} AS k,
            COUNT(*) - COUNT(CASE WHEN r.status = 'rejected' THEN 1 END) AS requests,
            COUNT(CASE WHEN r.status = 'rejected' THEN 1 END) AS rejected,
            COUNT(CASE WHEN r.status = 'failed' THEN 1 END) AS failed,
            COUNT(CASE WHEN r.status = 'cancelled' THEN 1 END) AS cancelled,
            COUNT(CASE WHEN r.cached <> 0 THEN 1 END) AS cached,
            CAST(COALESCE(SUM(r.input_tokens), 0) AS BIGINT) AS input_tokens,
            CAST(COALESCE(SUM(r.output_tokens), 0) AS BIGINT) AS output_tokens,
            CAST(COALESCE(SUM(r.cached_input_tokens), 0) AS BIGINT) AS cached_input_tokens,
            CAST(COALESCE(SUM(r.cost_nanos), 0) AS BIGINT) AS cost_nanos
         FROM usage_records r {join}
         WHERE r.started_at_ms >= {} AND r.started_at_ms < {}
         GROUP BY {bucket_key}k ORDER BY {bucket_key}k NULLS FIRST",
        param(window),
        param(window + 1)
    )
}

fn count<R>(row: &R, name: &str) -> Result<u64, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(row.try_get::<i64, _>(name)?.max(0) as u64)
}

/// A row of [`usage_sql`]'s answer; `bucketed` when it was asked for buckets.
pub(super) fn usage_row<R>(row: &R, bucketed: bool) -> Result<UsageRow, LedgerError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let bucket = if bucketed { Some(from_millis(row.try_get("t")?)) } else { None };
    Ok(UsageRow { bucket, group: group_from_row(row)? })
}

fn group_from_row<R>(row: &R) -> Result<UsageGroup, LedgerError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(UsageGroup {
        key: row.try_get("k")?,
        requests: count(row, "requests")?,
        rejected: count(row, "rejected")?,
        failed: count(row, "failed")?,
        cancelled: count(row, "cancelled")?,
        cached: count(row, "cached")?,
        input_tokens: count(row, "input_tokens")?,
        output_tokens: count(row, "output_tokens")?,
        cached_input_tokens: count(row, "cached_input_tokens")?,
        cost: from_nanos(row.try_get("cost_nanos")?),
    })
}

pub(super) fn record_from_row<R>(row: &R) -> Result<LedgerRecord, LedgerError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let run_id: String = row.try_get("run_id")?;
    let corrupt = |message: String| LedgerError::Corrupt { run_id: run_id.clone(), message };
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(LedgerRecord {
        model: row.try_get("model")?,
        route: row.try_get("route")?,
        status: LedgerStatus::from_str(&status).map_err(corrupt)?,
        input_tokens: count(row, "input_tokens")?,
        output_tokens: count(row, "output_tokens")?,
        cached_input_tokens: count(row, "cached_input_tokens")?,
        cost: row.try_get::<Option<i64>, _>("cost_nanos")?.map(from_nanos),
        ttft_ms: row.try_get::<Option<i64>, _>("ttft_ms")?.map(|v| v.max(0) as u64),
        latency_ms: count(row, "latency_ms")?,
        metadata: serde_json::from_str::<CallerMetadata>(&metadata)
            .map_err(|e| corrupt(e.to_string()))?,
        api_key_id: row.try_get("api_key_id")?,
        started_at: from_millis(row.try_get("started_at_ms")?),
        ended_at: from_millis(row.try_get("ended_at_ms")?),
        error: row.try_get("error")?,
        cached: row.try_get::<i64, _>("cached")? != 0,
        run_id,
    })
}
