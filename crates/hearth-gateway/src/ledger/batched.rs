//! Ledger writes in batches, off every run's path: records go through a bounded channel to one
//! writer task, which stores whatever has queued up in one transaction.
//!
//! One transaction per record costs a SQLite commit and several round trips to the database
//! thread each, which capped the ledger at a few thousand records a second on a small machine,
//! using most of its CPU. Batches make the per-record cost a row insert. At a moderate rate
//! records arrive one at a time, so the writer lingers briefly after the first one to let a
//! batch form (a flush cuts the wait short). The channel is bounded:
//! when the writer falls behind, producers wait to hand over their record (backpressure), so a
//! record is never dropped. [`Ledger::flush`] waits until everything queued before it is stored;
//! `Gateway::wait_idle` calls it, and reads flush first, so a caller always sees its own runs.

use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};

use super::{Ledger, LedgerError, LedgerRecord, UsageQuery, UsageRow};

/// Records waiting for the writer; past this, producers wait.
const QUEUE: usize = 8_192;
/// Most records stored in one transaction.
const MAX_BATCH: usize = 512;
/// How long the writer waits for a batch to fill once it holds a record. Records are off every
/// caller's path, so this delays only when a record becomes visible to a query, and a query
/// flushes first.
const LINGER: Duration = Duration::from_millis(20);

enum Command {
    Record(Box<LedgerRecord>),
    Flush(oneshot::Sender<()>),
}

/// Wraps a ledger so that [`Ledger::record`] only queues; must be made inside a tokio runtime.
pub struct BatchedLedger {
    store: Arc<dyn Ledger>,
    queue: mpsc::Sender<Command>,
}

impl BatchedLedger {
    pub fn new(store: Arc<dyn Ledger>) -> Self {
        let (queue, commands) = mpsc::channel(QUEUE);
        tokio::spawn(write(store.clone(), commands));
        Self { store, queue }
    }
}

/// The writer: takes what has queued (up to a batch), stores it, acknowledges flushes that were
/// queued behind it. Ends when the ledger is dropped and the queue is drained.
async fn write(store: Arc<dyn Ledger>, mut commands: mpsc::Receiver<Command>) {
    let mut taken = Vec::with_capacity(MAX_BATCH);
    while commands.recv_many(&mut taken, MAX_BATCH).await > 0 {
        let deadline = Instant::now() + LINGER;
        while taken.len() < MAX_BATCH && !taken.iter().any(|c| matches!(c, Command::Flush(_))) {
            let room = MAX_BATCH - taken.len();
            match timeout_at(deadline, commands.recv_many(&mut taken, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut records = Vec::with_capacity(taken.len());
        let mut flushed = Vec::new();
        for command in taken.drain(..) {
            match command {
                Command::Record(record) => records.push(*record),
                Command::Flush(done) => flushed.push(done),
            }
        }
        store_all(store.as_ref(), &records).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Stores a batch in one transaction. If that fails (one bad record rolls the batch back), each
/// record is stored alone, so only the bad one is lost, and logged.
async fn store_all(store: &dyn Ledger, records: &[LedgerRecord]) {
    if records.is_empty() || store.record_batch(records).await.is_ok() {
        return;
    }
    for record in records {
        if let Err(e) = store.record(record).await {
            tracing::error!(run_id = %record.run_id, error = %e, "could not write the ledger record");
        }
    }
}

#[async_trait::async_trait]
impl Ledger for BatchedLedger {
    async fn record(&self, record: &LedgerRecord) -> Result<(), LedgerError> {
        let command = Command::Record(Box::new(record.clone()));
        if self.queue.send(command).await.is_err() {
            // The writer is gone (its runtime is shutting down): store it directly.
            return self.store.record(record).await;
        }
        Ok(())
    }

    async fn get(&self, run_id: &str) -> Result<Option<LedgerRecord>, LedgerError> {
        self.flush().await;
        self.store.get(run_id).await
    }

    async fn usage_rows(
        &self,
        query: &UsageQuery,
        bucket: Option<Duration>,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        self.flush().await;
        self.store.usage_rows(query, bucket).await
    }

    async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.queue.send(Command::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{GroupBy, LedgerStatus, SqliteLedger};

    fn record(run_id: String) -> LedgerRecord {
        LedgerRecord {
            run_id,
            model: "m".into(),
            route: None,
            status: LedgerStatus::Finished,
            input_tokens: 3,
            output_tokens: 2,
            cached_input_tokens: 0,
            cost: None,
            ttft_ms: None,
            latency_ms: 1,
            metadata: Default::default(),
            api_key_id: None,
            started_at: chrono::Utc::now(),
            ended_at: chrono::Utc::now(),
            error: None,
            cached: false,
        }
    }

    #[tokio::test]
    async fn every_queued_record_is_stored_and_a_bad_one_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteLedger::open(&dir.path().join("l.db")).await.unwrap();
        let ledger = BatchedLedger::new(Arc::new(sqlite));
        for i in 0..1_000 {
            ledger.record(&record(format!("r{i}"))).await.unwrap();
        }
        // A second record for one run is refused by the store; the rest of its batch is kept.
        ledger.record(&record("r7".into())).await.unwrap();
        ledger.record(&record("last".into())).await.unwrap();
        let all = UsageQuery { group_by: GroupBy::Model, since: None, until: None };
        let groups = ledger.usage(&all).await.unwrap();
        assert_eq!(groups[0].requests, 1_001);
        assert_eq!(groups[0].output_tokens, 2_002);
        assert!(ledger.get("last").await.unwrap().is_some(), "reads see queued records");
    }
}
