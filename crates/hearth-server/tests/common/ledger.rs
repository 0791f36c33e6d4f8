//! A ledger in memory, so that tests which do not look at spend need no database.

use std::sync::Mutex;

use hearth_gateway::ledger::LedgerError;
use hearth_gateway::{GroupBy, Ledger, LedgerRecord, UsageGroup, UsageQuery};

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

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, LedgerError> {
        let mut groups: Vec<UsageGroup> = Vec::new();
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
            let at = match groups.iter().position(|g| g.key == key) {
                Some(at) => at,
                None => {
                    groups.push(UsageGroup {
                        key,
                        requests: 0,
                        rejected: 0,
                        input_tokens: 0,
                        output_tokens: 0,
                        cached_input_tokens: 0,
                        cost: Default::default(),
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            if r.status == hearth_gateway::LedgerStatus::Rejected {
                g.rejected += 1;
            } else {
                g.requests += 1;
            }
            g.input_tokens += r.input_tokens;
            g.output_tokens += r.output_tokens;
            g.cached_input_tokens += r.cached_input_tokens;
            g.cost += r.cost.unwrap_or_default();
        }
        Ok(groups)
    }
}
