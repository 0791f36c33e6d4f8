//! A ledger in memory, so that tests which do not look at spend need no database.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hearth_gateway::ledger::LedgerError;
use hearth_gateway::logging::PayloadRetention;
use hearth_gateway::{
    GroupBy, Ledger, LedgerRecord, LedgerStatus, RunPayload, UsageGroup, UsageQuery, UsageRow,
};

#[derive(Default)]
pub struct MemoryLedger {
    records: Mutex<Vec<LedgerRecord>>,
    payloads: Mutex<Vec<RunPayload>>,
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

    async fn store_payloads(&self, payloads: &[RunPayload]) -> Result<(), LedgerError> {
        self.payloads.lock().unwrap().extend_from_slice(payloads);
        Ok(())
    }

    async fn payload(&self, run_id: &str) -> Result<Option<RunPayload>, LedgerError> {
        Ok(self.payloads.lock().unwrap().iter().find(|p| p.run_id == run_id).cloned())
    }

    async fn delete_payload(&self, run_id: &str) -> Result<bool, LedgerError> {
        let mut payloads = self.payloads.lock().unwrap();
        let before = payloads.len();
        payloads.retain(|p| p.run_id != run_id);
        Ok(payloads.len() < before)
    }

    async fn prune_payloads(
        &self,
        retention: PayloadRetention,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        let mut payloads = self.payloads.lock().unwrap();
        let before = payloads.len();
        if let Some(age) = retention.max_age {
            payloads.retain(|p| now - p.stored_at <= chrono::Duration::from_std(age).unwrap());
        }
        if let Some(count) = retention.max_count {
            payloads.sort_by_key(|p| p.stored_at);
            let excess = payloads.len().saturating_sub(count as usize);
            payloads.drain(..excess);
        }
        Ok((before - payloads.len()) as u64)
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
