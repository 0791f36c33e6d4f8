//! Stored payloads: a run's request and answer, kept beside its ledger record only when
//! logging asks for it (see `crate::logging`), and deleted by retention or through the admin
//! API. The SQL, and the code that runs it, is the same for SQLite and PostgreSQL but for the
//! placeholders and the pool type: `payload_queries!` writes it once for both (`sqlite`,
//! `postgres`); a function generic over sqlx's `Database` needs executor bounds longer than
//! the queries themselves.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::rows::millis;
use super::LedgerError;
use crate::logging::PayloadRetention;

/// One run's request and answer, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPayload {
    pub run_id: String,
    pub stored_at: DateTime<Utc>,
    /// The request in Hearth's canonical form (a Python predictor's input, secrets redacted).
    pub request: Value,
    /// The answer as the caller received it, assembled (a Python predictor's output).
    pub response: Value,
}

/// The statements, their placeholders written by `placeholder(n)` (1-based).
struct PayloadSql {
    pub insert: String,
    pub select: String,
    pub delete: String,
    pub older_than: String,
    pub beyond_count: String,
}

impl PayloadSql {
    fn new(placeholder: impl Fn(usize) -> String, all_after_offset: &str) -> Self {
        let p = placeholder;
        PayloadSql {
            insert: format!(
                "INSERT INTO run_payloads (run_id, stored_at_ms, request, response)
                 VALUES ({}, {}, {}, {}) ON CONFLICT (run_id) DO NOTHING",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
            select: format!(
                "SELECT run_id, stored_at_ms, request, response FROM run_payloads
                 WHERE run_id = {}",
                p(1)
            ),
            delete: format!("DELETE FROM run_payloads WHERE run_id = {}", p(1)),
            older_than: format!("DELETE FROM run_payloads WHERE stored_at_ms < {}", p(1)),
            // Everything but the newest N: SQLite needs a LIMIT before an OFFSET (-1: none).
            beyond_count: format!(
                "DELETE FROM run_payloads WHERE run_id IN (SELECT run_id FROM run_payloads
                 ORDER BY stored_at_ms DESC, run_id DESC {all_after_offset} OFFSET {})",
                p(1)
            ),
        }
    }
}

/// The values a payload's row binds, in the insert's order.
fn bound(payload: &RunPayload) -> (&str, i64, String, String) {
    (
        &payload.run_id,
        millis(&payload.stored_at),
        payload.request.to_string(),
        payload.response.to_string(),
    )
}

fn from_row<R: Row>(row: &R) -> Result<RunPayload, LedgerError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let run_id: String = row.try_get("run_id")?;
    let corrupt = |message: String| LedgerError::Corrupt { run_id: run_id.clone(), message };
    let json = |column: &str| -> Result<Value, LedgerError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| corrupt(format!("{column}: {e}")))
    };
    let stored_at_ms: i64 = row.try_get("stored_at_ms")?;
    let stored_at = DateTime::from_timestamp_millis(stored_at_ms)
        .ok_or_else(|| corrupt(format!("stored_at_ms {stored_at_ms} is out of range")))?;
    Ok(RunPayload { stored_at, request: json("request")?, response: json("response")?, run_id })
}

/// The cut-off and count `retention` deletes by at `now`.
pub(super) fn limits(
    retention: PayloadRetention,
    now: DateTime<Utc>,
) -> (Option<i64>, Option<i64>) {
    let cutoff = retention.max_age.map(|age| {
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        now.checked_sub_signed(age).map_or(i64::MIN, |at| millis(&at))
    });
    let count = retention.max_count.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    (cutoff, count)
}

/// The four payload operations for one database, `$db`, whose placeholders `$placeholder`
/// writes and whose "every row after OFFSET" needs `$all_after_offset` (SQLite: `LIMIT -1`).
macro_rules! payload_queries {
    ($db:ty, $placeholder:expr, $all_after_offset:expr) => {
        use std::sync::LazyLock;

        use chrono::{DateTime, Utc};
        use sqlx::Pool;

        use super::{bound, from_row, limits, PayloadSql, RunPayload};
        use crate::ledger::LedgerError;
        use crate::logging::PayloadRetention;

        static SQL: LazyLock<PayloadSql> =
            LazyLock::new(|| PayloadSql::new($placeholder, $all_after_offset));

        pub(crate) async fn store(
            pool: &Pool<$db>,
            stored: &[RunPayload],
        ) -> Result<(), LedgerError> {
            let mut tx = pool.begin().await?;
            for payload in stored {
                let (run_id, at, request, response) = bound(payload);
                sqlx::query(&SQL.insert)
                    .bind(run_id)
                    .bind(at)
                    .bind(request)
                    .bind(response)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(crate) async fn read(
            pool: &Pool<$db>,
            run_id: &str,
        ) -> Result<Option<RunPayload>, LedgerError> {
            let row = sqlx::query(&SQL.select).bind(run_id).fetch_optional(pool).await?;
            row.map(|row| from_row(&row)).transpose()
        }

        pub(crate) async fn delete(pool: &Pool<$db>, run_id: &str) -> Result<bool, LedgerError> {
            let done = sqlx::query(&SQL.delete).bind(run_id).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        }

        pub(crate) async fn prune(
            pool: &Pool<$db>,
            retention: PayloadRetention,
            now: DateTime<Utc>,
        ) -> Result<u64, LedgerError> {
            let (cutoff, count) = limits(retention, now);
            let mut deleted = 0;
            if let Some(cutoff) = cutoff {
                deleted +=
                    sqlx::query(&SQL.older_than).bind(cutoff).execute(pool).await?.rows_affected();
            }
            if let Some(count) = count {
                deleted +=
                    sqlx::query(&SQL.beyond_count).bind(count).execute(pool).await?.rows_affected();
            }
            Ok(deleted)
        }
    };
}

pub(super) mod sqlite {
    payload_queries!(sqlx::Sqlite, |_| "?".to_owned(), "LIMIT -1");
}

pub(super) mod postgres {
    payload_queries!(sqlx::Postgres, |n| format!("${n}"), "");
}
