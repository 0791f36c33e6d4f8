//! The spend ledger: one record per run, written when the run ends however it ends, and usage
//! queries grouped by model, route or a caller metadata key.

mod batched;
#[cfg(test)]
mod conformance;
mod metadata;
mod payloads;
mod postgres;
mod rows;
mod sqlite;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::logging::PayloadRetention;

pub use batched::BatchedLedger;
pub use metadata::{CallerMetadata, MetadataError, MAX_METADATA_ENTRIES};
pub use payloads::RunPayload;
pub use postgres::PostgresLedger;
pub use sqlite::SqliteLedger;

/// How a run ended, as billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    /// The answer finished and a caller was there to read it.
    Finished,
    /// No route answered, or the answer broke off with an error.
    Failed,
    Cancelled,
    /// The answer finished, but its caller had gone (and had not come back) by then.
    Abandoned,
    /// Refused before any route served it (invalid for the model, or every route busy): nothing
    /// was generated or billed. Counted apart from requests in usage.
    Rejected,
}

impl LedgerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
            Self::Rejected => "rejected",
        }
    }
}

impl FromStr for LedgerStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "finished" => Self::Finished,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "abandoned" => Self::Abandoned,
            "rejected" => Self::Rejected,
            other => return Err(format!("unknown ledger status `{other}`")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRecord {
    pub run_id: String,
    /// The model id the caller asked for.
    pub model: String,
    /// The route that served it; `None` when no route committed.
    pub route: Option<String>,
    pub status: LedgerStatus,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// `None` when the model has no prices in the catalog.
    pub cost: Option<Decimal>,
    /// Time to the first content event.
    pub ttft_ms: Option<u64>,
    pub latency_ms: u64,
    pub metadata: CallerMetadata,
    pub api_key_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// What went wrong, for failed and cancelled runs.
    pub error: Option<String>,
    /// Answered from the response cache: nothing was generated, and it cost nothing.
    #[serde(default)]
    pub cached: bool,
}

impl LedgerRecord {
    /// A failed run's record with nothing used yet: what a shared run store keeps at a run's
    /// start, for the replica that ends the run should its producer disappear.
    pub fn failed_start(
        run_id: &str,
        model: &str,
        metadata: CallerMetadata,
        api_key_id: Option<String>,
        started_at: DateTime<Utc>,
    ) -> Self {
        LedgerRecord {
            run_id: run_id.to_owned(),
            model: model.to_owned(),
            route: None,
            status: LedgerStatus::Failed,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            cost: None,
            ttft_ms: None,
            latency_ms: 0,
            metadata,
            api_key_id,
            started_at,
            ended_at: started_at,
            error: None,
            cached: false,
        }
    }
}

/// What usage is grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Route,
    /// A caller metadata key; runs without it form the group whose key is `None`.
    Metadata(String),
}

impl FromStr for GroupBy {
    type Err = String;

    /// `model`, `route` or `metadata.<key>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(Self::Model),
            "route" => Ok(Self::Route),
            _ => match s.strip_prefix("metadata.") {
                Some(key) if !key.is_empty() => Ok(Self::Metadata(key.to_string())),
                _ => Err(format!("`{s}` is not one of `model`, `route`, `metadata.<key>`")),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    /// Runs started at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Runs started before this instant.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageGroup {
    /// The group's value (a model id, a route, a metadata value); `None` for "not set".
    pub key: Option<String>,
    /// Runs that a route served (finished, failed, cancelled or abandoned).
    pub requests: u64,
    /// Runs refused before any route served them; never billed.
    pub rejected: u64,
    /// Of `requests`, those that ended failed (no route answered, or the answer broke off).
    pub failed: u64,
    /// Of `requests`, those cancelled.
    pub cancelled: u64,
    /// Of `requests`, those answered from the response cache.
    pub cached: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// The sum of the known costs in the group.
    pub cost: Decimal,
}

/// One time bucket of a usage series: the groups of the runs started in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    pub start: DateTime<Utc>,
    pub groups: Vec<UsageGroup>,
}

/// One row of a usage query: a group, and when bucketed, its bucket's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub bucket: Option<DateTime<Utc>>,
    pub group: UsageGroup,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("ledger record `{run_id}` is unreadable: {message}")]
    Corrupt { run_id: String, message: String },
}

#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Stores one run's record; a second record for the same run is an error. A ledger may
    /// only queue it: [`Ledger::flush`] waits until it is stored.
    async fn record(&self, record: &LedgerRecord) -> Result<(), LedgerError>;
    /// Stores several records at once, all or none.
    async fn record_batch(&self, records: &[LedgerRecord]) -> Result<(), LedgerError> {
        for record in records {
            self.record(record).await?;
        }
        Ok(())
    }
    /// Stores runs' payloads (a second one for a run is ignored); a ledger may only queue
    /// them, as records.
    async fn store_payloads(&self, payloads: &[RunPayload]) -> Result<(), LedgerError>;
    /// The run's stored payload, if it has one.
    async fn payload(&self, run_id: &str) -> Result<Option<RunPayload>, LedgerError>;
    /// Deletes the run's payload; whether there was one.
    async fn delete_payload(&self, run_id: &str) -> Result<bool, LedgerError>;
    /// Deletes the payloads `retention` no longer keeps at `now`: those older than its age,
    /// then the oldest beyond its count. Returns how many went.
    async fn prune_payloads(
        &self,
        retention: PayloadRetention,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError>;
    /// Waits until every record handed over so far is stored.
    async fn flush(&self) {}
    async fn get(&self, run_id: &str) -> Result<Option<LedgerRecord>, LedgerError>;
    /// Usage as `query` groups it; with `bucket`, apart for each time bucket of that length
    /// (counted from the epoch) that holds runs, ordered by bucket, then group.
    async fn usage_rows(
        &self,
        query: &UsageQuery,
        bucket: Option<Duration>,
    ) -> Result<Vec<UsageRow>, LedgerError>;
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, LedgerError> {
        let rows = self.usage_rows(query, None).await?;
        Ok(rows.into_iter().map(|row| row.group).collect())
    }
    /// Usage over time: the buckets of `bucket`'s length that hold runs, oldest first.
    async fn usage_series(
        &self,
        query: &UsageQuery,
        bucket: Duration,
    ) -> Result<Vec<UsageBucket>, LedgerError> {
        let mut series: Vec<UsageBucket> = Vec::new();
        for UsageRow { bucket: start, group } in self.usage_rows(query, Some(bucket)).await? {
            let start = start.unwrap_or_default();
            match series.last_mut() {
                Some(last) if last.start == start => last.groups.push(group),
                _ => series.push(UsageBucket { start, groups: vec![group] }),
            }
        }
        Ok(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_parses_its_three_forms() {
        assert_eq!("model".parse(), Ok(GroupBy::Model));
        assert_eq!("route".parse(), Ok(GroupBy::Route));
        assert_eq!("metadata.team".parse(), Ok(GroupBy::Metadata("team".into())));
        assert!("metadata.".parse::<GroupBy>().is_err());
        assert!("cost".parse::<GroupBy>().is_err());
    }
}
