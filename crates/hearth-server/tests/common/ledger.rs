//! A ledger in memory, so that tests which do not look at spend need no database.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hearth_gateway::ledger::LedgerError;
use hearth_gateway::{
    GroupBy, Ledger, LedgerRecord, LedgerStatus, UsageGroup, UsageQuery, UsageRow,
};

#[derive(Default)]
pub struct MemoryLedger {
    records: Mutex<Vec<LedgerRecord>>,
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn record(&self, record: &LedgerRecord) -> Result<(), LedgerError> {
        self.records.lock().unwrap().push(record.clone());
        Ok(())
    }

    async fn get(&self, run_id: &str) -> Result<Option<LedgerRecord>, LedgerError> {
        Ok(self.records.lock().unwrap().iter().find(|r| r.run_id == run_id).cloned())
    }

    async fn usage_rows(
        &self,
        query: &UsageQuery,
        bucket: Option<Duration>,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let mut rows: Vec<UsageRow> = Vec::new();
        let records = self.records.lock().unwrap();
        let in_window = |r: &&LedgerRecord| {
            query.since.is_none_or(|s| r.started_at >= s)
                && query.until.is_none_or(|u| r.started_at < u)
        };
        for r in records.iter().filter(in_window) {
            let key = match &query.group_by {
                GroupBy::Model => Some(r.model.clone()),
                GroupBy::Route => r.route.clone(),
                GroupBy::Metadata(key) => {
                    r.metadata.labels().find(|(k, _)| k == key).map(|(_, v)| v)
                }
            };
            let start = bucket.map(|b| {
                let ms = b.as_millis().max(1) as i64;
                let at = r.started_at.timestamp_millis() / ms * ms;
                DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default()
            });
            let at = match rows.iter().position(|row| row.bucket == start && row.group.key == key) {
                Some(at) => at,
                None => {
                    let group = UsageGroup { key, ..UsageGroup::default() };
                    rows.push(UsageRow { bucket: start, group });
                    rows.len() - 1
                }
            };
            let g = &mut rows[at].group;
            match r.status {
                LedgerStatus::Rejected => g.rejected += 1,
                status => {
                    g.requests += 1;
                    g.failed += u64::from(status == LedgerStatus::Failed);
                    g.cancelled += u64::from(status == LedgerStatus::Cancelled);
                    g.cached += u64::from(r.cached);
                }
            }
            g.input_tokens += r.input_tokens;
            g.output_tokens += r.output_tokens;
            g.cached_input_tokens += r.cached_input_tokens;
            g.cost += r.cost.unwrap_or_default();
        }
        rows.sort_by(|a, b| (a.bucket, &a.group.key).cmp(&(b.bucket, &b.group.key)));
        Ok(rows)
    }
}
