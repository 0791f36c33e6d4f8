//! The SQLite ledger (WAL mode, so usage queries never block the writers).
//!
//! Costs are stored as integer nano-units of currency: sums stay exact in SQL, and nine
//! decimals are far below any provider's price granularity. Metadata entries get a table of
//! their own, so grouping by a metadata key is an indexed join, not JSON parsing per row.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::payloads::{self, RunPayload};
use super::rows::{millis, record_from_row, to_i64, to_nanos, usage_row, usage_sql};
use super::{GroupBy, Ledger, LedgerError, LedgerRecord, UsageQuery, UsageRow};
use crate::logging::PayloadRetention;

const SCHEMA: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS usage_records (
        run_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        route TEXT,
        status TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL,
        cost_nanos INTEGER,
        ttft_ms INTEGER,
        latency_ms INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        api_key_id TEXT,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER NOT NULL,
        error TEXT,
        cached INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS usage_records_started ON usage_records (started_at_ms)",
    "CREATE TABLE IF NOT EXISTS usage_metadata (
        run_id TEXT NOT NULL REFERENCES usage_records (run_id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    )",
    "CREATE INDEX IF NOT EXISTS usage_metadata_key ON usage_metadata (key, value)",
    // Client API keys (`keys/`): the same table as PostgreSQL's migration 0002.
    "CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL UNIQUE,
        metadata TEXT NOT NULL,
        models TEXT NOT NULL,
        limits TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    )",
    // Stored payloads (`payloads.rs`): the same table as PostgreSQL's migration 0004.
    "CREATE TABLE IF NOT EXISTS run_payloads (
        run_id TEXT PRIMARY KEY,
        stored_at_ms INTEGER NOT NULL,
        request TEXT NOT NULL,
        response TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS run_payloads_stored ON run_payloads (stored_at_ms, run_id)",
];

/// Records per INSERT: 16 bound values each, well under SQLite's limit of 32,766 per statement
/// (metadata rows, 3 values and at most 5 per record, stay under it too).
const ROWS_PER_STATEMENT: usize = 256;

#[derive(Clone)]
pub struct SqliteLedger {
    pool: SqlitePool,
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger database at `path`.
    pub async fn open(path: &Path) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses no committed data on a process crash, only on power loss.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        // Ledgers made before cached answers existed gain the column.
        let has_cached: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('usage_records') WHERE name = 'cached'",
        )
        .fetch_one(&pool)
        .await?;
        if has_cached == 0 {
            let added = sqlx::query(
                "ALTER TABLE usage_records ADD COLUMN cached INTEGER NOT NULL DEFAULT 0",
            )
            .execute(&pool)
            .await;
            // Another daemon opening the same file may have added it just now.
            match added {
                Err(e) if !e.to_string().contains("duplicate column") => return Err(e.into()),
                _ => {}
            }
        }
        Ok(Self { pool })
    }

    /// The database's connections, for the API keys kept beside the ledger.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait::async_trait]
impl Ledger for SqliteLedger {
    async fn record(&self, r: &LedgerRecord) -> Result<(), LedgerError> {
        self.record_batch(std::slice::from_ref(r)).await
    }

    async fn record_batch(&self, records: &[LedgerRecord]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            insert(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, run_id: &str) -> Result<Option<LedgerRecord>, LedgerError> {
        let row = sqlx::query("SELECT * FROM usage_records WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| record_from_row(&row)).transpose()
    }

    async fn usage_rows(
        &self,
        query: &UsageQuery,
        bucket: Option<Duration>,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let sql = usage_sql(&query.group_by, bucket, |_| "?".to_owned());
        let mut statement = sqlx::query(&sql);
        if let GroupBy::Metadata(metadata_key) = &query.group_by {
            statement = statement.bind(metadata_key.as_str());
        }
        let rows = statement
            .bind(query.since.as_ref().map_or(i64::MIN, millis))
            .bind(query.until.as_ref().map_or(i64::MAX, millis))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| usage_row(row, bucket.is_some())).collect()
    }

    async fn store_payloads(&self, stored: &[RunPayload]) -> Result<(), LedgerError> {
        payloads::sqlite::store(&self.pool, stored).await
    }

    async fn payload(&self, run_id: &str) -> Result<Option<RunPayload>, LedgerError> {
        payloads::sqlite::read(&self.pool, run_id).await
    }

    async fn delete_payload(&self, run_id: &str) -> Result<bool, LedgerError> {
        payloads::sqlite::delete(&self.pool, run_id).await
    }

    async fn prune_payloads(
        &self,
        retention: PayloadRetention,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        payloads::sqlite::prune(&self.pool, retention, now).await
    }
}

/// Inserts `records` with one statement per table: every statement is a round trip to the
/// database thread, so a batch costs a few of them rather than one or more per record.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    records: &[LedgerRecord],
) -> Result<(), LedgerError> {
    let metadata: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".into()))
        .collect();
    let mut rows = QueryBuilder::<Sqlite>::new(
        "INSERT INTO usage_records (run_id, model, route, status, input_tokens, output_tokens,
            cached_input_tokens, cost_nanos, ttft_ms, latency_ms, metadata, api_key_id,
            started_at_ms, ended_at_ms, error, cached) ",
    );
    rows.push_values(records.iter().zip(&metadata), |mut row, (r, metadata)| {
        row.push_bind(&r.run_id)
            .push_bind(&r.model)
            .push_bind(&r.route)
            .push_bind(r.status.as_str())
            .push_bind(to_i64(r.input_tokens))
            .push_bind(to_i64(r.output_tokens))
            .push_bind(to_i64(r.cached_input_tokens))
            .push_bind(r.cost.map(to_nanos))
            .push_bind(r.ttft_ms.map(to_i64))
            .push_bind(to_i64(r.latency_ms))
            .push_bind(metadata)
            .push_bind(&r.api_key_id)
            .push_bind(millis(&r.started_at))
            .push_bind(millis(&r.ended_at))
            .push_bind(&r.error)
            .push_bind(i64::from(r.cached));
    });
    rows.build().execute(&mut **tx).await?;
    let labels: Vec<(&str, &str, String)> = records
        .iter()
        .flat_map(|r| r.metadata.labels().map(move |(k, v)| (r.run_id.as_str(), k, v)))
        .collect();
    if !labels.is_empty() {
        let mut rows =
            QueryBuilder::<Sqlite>::new("INSERT INTO usage_metadata (run_id, key, value) ");
        rows.push_values(&labels, |mut row, (run_id, key, value)| {
            row.push_bind(*run_id).push_bind(*key).push_bind(value);
        });
        rows.build().execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::conformance;

    async fn ledger() -> (tempfile::TempDir, SqliteLedger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db")).await.unwrap();
        (dir, ledger)
    }

    #[tokio::test]
    async fn records_round_trip_and_usage_groups_by_metadata_model_and_route() {
        let (_dir, ledger) = ledger().await;
        conformance::records_round_trip_and_usage_groups(&ledger).await;
    }

    #[tokio::test]
    async fn usage_respects_the_time_window() {
        let (_dir, ledger) = ledger().await;
        conformance::usage_respects_the_time_window(&ledger).await;
    }

    #[tokio::test]
    async fn usage_counts_outcomes_and_buckets_by_time() {
        let (_dir, ledger) = ledger().await;
        conformance::usage_counts_outcomes_and_buckets_by_time(&ledger).await;
    }

    #[tokio::test]
    async fn payloads_are_stored_read_deleted_and_pruned() {
        let (_dir, ledger) = ledger().await;
        conformance::payloads_are_stored_read_deleted_and_pruned(&ledger).await;
    }
}
