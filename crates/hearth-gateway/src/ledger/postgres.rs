//! The PostgreSQL ledger, for replicas that share one: the same records and queries as the
//! SQLite ledger (nano-unit costs, a metadata table), its schema made by versioned migrations
//! (`migrations/postgres/`, applied at connect under sqlx's advisory lock, so replicas starting
//! together apply each once).

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use super::payloads::{self, RunPayload};
use super::rows::{millis, record_from_row, to_i64, to_nanos, usage_row, usage_sql};
use super::{GroupBy, Ledger, LedgerError, LedgerRecord, UsageQuery, UsageRow};
use crate::logging::PayloadRetention;

/// The ledger's schema versions, oldest first.
const MIGRATIONS: [(i64, &str, &str); 4] = [
    (1, "ledger", include_str!("../../migrations/postgres/0001_ledger.sql")),
    (2, "api keys", include_str!("../../migrations/postgres/0002_api_keys.sql")),
    (3, "cached answers", include_str!("../../migrations/postgres/0003_cached.sql")),
    (4, "run payloads", include_str!("../../migrations/postgres/0004_run_payloads.sql")),
];

/// Records per INSERT: 16 bound values each, far under PostgreSQL's 65,535 per statement.
const ROWS_PER_STATEMENT: usize = 256;

#[derive(Clone)]
pub struct PostgresLedger {
    pool: PgPool,
}

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*name),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

impl PostgresLedger {
    /// Connects to `url` and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        migrator().run(&pool).await.map_err(sqlx::Error::from)?;
        Ok(Self { pool })
    }

    /// The database's connections, for the API keys kept beside the ledger.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait::async_trait]
impl Ledger for PostgresLedger {
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
        let row = sqlx::query("SELECT * FROM usage_records WHERE run_id = $1")
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
        let sql = usage_sql(&query.group_by, bucket, |n| format!("${n}"));
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
        payloads::postgres::store(&self.pool, stored).await
    }

    async fn payload(&self, run_id: &str) -> Result<Option<RunPayload>, LedgerError> {
        payloads::postgres::read(&self.pool, run_id).await
    }

    async fn delete_payload(&self, run_id: &str) -> Result<bool, LedgerError> {
        payloads::postgres::delete(&self.pool, run_id).await
    }

    async fn prune_payloads(
        &self,
        retention: PayloadRetention,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        payloads::postgres::prune(&self.pool, retention, now).await
    }
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    records: &[LedgerRecord],
) -> Result<(), LedgerError> {
    let metadata: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".into()))
        .collect();
    let mut rows = QueryBuilder::<Postgres>::new(
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
            QueryBuilder::<Postgres>::new("INSERT INTO usage_metadata (run_id, key, value) ");
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

    /// A ledger in a fresh schema of the test database (`HEARTH_TEST_POSTGRES_URL`, by default
    /// the local server `scripts/services.sh` starts).
    async fn ledger() -> PostgresLedger {
        PostgresLedger::connect(&fresh_schema().await).await.unwrap()
    }

    /// A URL whose connections use a new, empty schema.
    async fn fresh_schema() -> String {
        let url = std::env::var("HEARTH_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("ledger_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&url).await.expect("PostgreSQL answers");
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        admin.close().await;
        format!("{url}?options=-c%20search_path%3D{schema}")
    }

    #[tokio::test]
    async fn records_round_trip_and_usage_groups_by_metadata_model_and_route() {
        conformance::records_round_trip_and_usage_groups(&ledger().await).await;
    }

    #[tokio::test]
    async fn usage_respects_the_time_window() {
        conformance::usage_respects_the_time_window(&ledger().await).await;
    }

    #[tokio::test]
    async fn usage_counts_outcomes_and_buckets_by_time() {
        conformance::usage_counts_outcomes_and_buckets_by_time(&ledger().await).await;
    }

    #[tokio::test]
    async fn payloads_are_stored_read_deleted_and_pruned() {
        conformance::payloads_are_stored_read_deleted_and_pruned(&ledger().await).await;
    }

    #[tokio::test]
    async fn migrations_apply_once_however_many_replicas_start_together() {
        let url = fresh_schema().await;
        let (a, b, c) = tokio::join!(
            PostgresLedger::connect(&url),
            PostgresLedger::connect(&url),
            PostgresLedger::connect(&url)
        );
        let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        assert_eq!(applied, MIGRATIONS.len() as i64);
        // And once more later, finding the schema current.
        assert!(PostgresLedger::connect(&url).await.is_ok());
    }
}
