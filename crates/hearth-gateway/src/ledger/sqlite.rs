//! The SQLite ledger (WAL mode, so usage queries never block the writers).
//!
//! Costs are stored as integer nano-units of currency: sums stay exact in SQL, and nine
//! decimals are far below any provider's price granularity. Metadata entries get a table of
//! their own, so grouping by a metadata key is an indexed join, not JSON parsing per row.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{
    CallerMetadata, GroupBy, Ledger, LedgerError, LedgerRecord, LedgerStatus, UsageGroup,
    UsageQuery,
};

const SCHEMA: [&str; 4] = [
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
        error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS usage_records_started ON usage_records (started_at_ms)",
    "CREATE TABLE IF NOT EXISTS usage_metadata (
        run_id TEXT NOT NULL REFERENCES usage_records (run_id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    )",
    "CREATE INDEX IF NOT EXISTS usage_metadata_key ON usage_metadata (key, value)",
];

const COST_SCALE: u32 = 9;

/// Records per INSERT: 15 bound values each, well under SQLite's limit of 32,766 per statement
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
        Ok(Self { pool })
    }
}

fn to_nanos(cost: Decimal) -> i64 {
    let mut scaled = cost.round_dp(COST_SCALE);
    scaled.rescale(COST_SCALE);
    i64::try_from(scaled.mantissa()).unwrap_or(i64::MAX)
}

fn from_nanos(nanos: i64) -> Decimal {
    Decimal::new(nanos, COST_SCALE).normalize()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis(at: &DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
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

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, LedgerError> {
        let (key, join) = match &query.group_by {
            GroupBy::Model => ("r.model", ""),
            GroupBy::Route => ("r.route", ""),
            GroupBy::Metadata(_) => {
                ("m.value", "LEFT JOIN usage_metadata m ON m.run_id = r.run_id AND m.key = ?")
            }
        };
        let sql = format!(
            "SELECT {key} AS k,
                COUNT(*) - COUNT(CASE WHEN r.status = 'rejected' THEN 1 END) AS requests,
                COUNT(CASE WHEN r.status = 'rejected' THEN 1 END) AS rejected,
                COALESCE(SUM(r.input_tokens), 0) AS input_tokens,
                COALESCE(SUM(r.output_tokens), 0) AS output_tokens,
                COALESCE(SUM(r.cached_input_tokens), 0) AS cached_input_tokens,
                COALESCE(SUM(r.cost_nanos), 0) AS cost_nanos
             FROM usage_records r {join}
             WHERE r.started_at_ms >= ? AND r.started_at_ms < ?
             GROUP BY k ORDER BY k"
        );
        let mut statement = sqlx::query(&sql);
        if let GroupBy::Metadata(metadata_key) = &query.group_by {
            statement = statement.bind(metadata_key.as_str());
        }
        let rows = statement
            .bind(query.since.as_ref().map_or(i64::MIN, millis))
            .bind(query.until.as_ref().map_or(i64::MAX, millis))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group_from_row).collect()
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
            started_at_ms, ended_at_ms, error) ",
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
            .push_bind(&r.error);
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

fn group_from_row(row: &SqliteRow) -> Result<UsageGroup, LedgerError> {
    let count =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    Ok(UsageGroup {
        key: row.try_get("k")?,
        requests: count("requests")?,
        rejected: count("rejected")?,
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
        cached_input_tokens: count("cached_input_tokens")?,
        cost: from_nanos(row.try_get("cost_nanos")?),
    })
}

fn record_from_row(row: &SqliteRow) -> Result<LedgerRecord, LedgerError> {
    let run_id: String = row.try_get("run_id")?;
    let corrupt = |message: String| LedgerError::Corrupt { run_id: run_id.clone(), message };
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    let count =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    Ok(LedgerRecord {
        model: row.try_get("model")?,
        route: row.try_get("route")?,
        status: LedgerStatus::from_str(&status).map_err(corrupt)?,
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
        cached_input_tokens: count("cached_input_tokens")?,
        cost: row.try_get::<Option<i64>, _>("cost_nanos")?.map(from_nanos),
        ttft_ms: row.try_get::<Option<i64>, _>("ttft_ms")?.map(|v| v.max(0) as u64),
        latency_ms: count("latency_ms")?,
        metadata: serde_json::from_str::<CallerMetadata>(&metadata)
            .map_err(|e| corrupt(e.to_string()))?,
        api_key_id: row.try_get("api_key_id")?,
        started_at: from_millis(row.try_get("started_at_ms")?),
        ended_at: from_millis(row.try_get("ended_at_ms")?),
        error: row.try_get("error")?,
        run_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(run_id: &str, model: &str, team: Option<&str>, cost: Option<&str>) -> LedgerRecord {
        let metadata = match team {
            Some(t) => CallerMetadata::from_json(&json!({"team": t, "n": 1})).unwrap(),
            None => CallerMetadata::default(),
        };
        LedgerRecord {
            run_id: run_id.into(),
            model: model.into(),
            route: Some(format!("p/{model}")),
            status: LedgerStatus::Finished,
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 2,
            cost: cost.map(|c| c.parse().unwrap()),
            ttft_ms: Some(12),
            latency_ms: 40,
            metadata,
            api_key_id: Some("key-1".into()),
            started_at: Utc.timestamp_millis_opt(1_000).unwrap(),
            ended_at: Utc.timestamp_millis_opt(1_040).unwrap(),
            error: None,
        }
    }

    #[tokio::test]
    async fn records_round_trip_and_usage_groups_by_metadata_model_and_route() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db")).await.unwrap();
        let a = record("r1", "m1", Some("red"), Some("0.000000001"));
        ledger.record(&a).await.unwrap();
        ledger.record(&record("r2", "m1", Some("blue"), Some("0.5"))).await.unwrap();
        ledger.record(&record("r3", "m2", None, None)).await.unwrap();
        assert_eq!(ledger.get("r1").await.unwrap(), Some(a.clone()));
        assert!(ledger.record(&a).await.is_err(), "one record per run");

        let q = |group_by| UsageQuery { group_by, since: None, until: None };
        let by_team = ledger.usage(&q(GroupBy::Metadata("team".into()))).await.unwrap();
        let keys: Vec<_> = by_team.iter().map(|g| (g.key.clone(), g.requests)).collect();
        assert_eq!(keys, vec![(None, 1), (Some("blue".into()), 1), (Some("red".into()), 1)]);
        let by_model = ledger.usage(&q(GroupBy::Model)).await.unwrap();
        assert_eq!(by_model[0].cost, "0.500000001".parse().unwrap());
        assert_eq!((by_model[0].requests, by_model[0].input_tokens), (2, 20));
        let by_route = ledger.usage(&q(GroupBy::Route)).await.unwrap();
        assert_eq!(by_route[1].key.as_deref(), Some("p/m2"));
        let numeric = ledger.usage(&q(GroupBy::Metadata("n".into()))).await.unwrap();
        assert_eq!(
            numeric.iter().find(|g| g.key.as_deref() == Some("1")).map(|g| g.requests),
            Some(2)
        );
    }

    #[tokio::test]
    async fn usage_respects_the_time_window() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db")).await.unwrap();
        ledger.record(&record("r1", "m", None, None)).await.unwrap();
        let at = |ms| Some(Utc.timestamp_millis_opt(ms).unwrap());
        let inside = UsageQuery { group_by: GroupBy::Model, since: at(1_000), until: at(1_001) };
        assert_eq!(ledger.usage(&inside).await.unwrap()[0].requests, 1);
        let after = UsageQuery { group_by: GroupBy::Model, since: at(1_001), until: None };
        assert!(ledger.usage(&after).await.unwrap().is_empty());
    }
}
