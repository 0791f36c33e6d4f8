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
//!
//! Stored payloads ride the same queue and batches; after a batch that stored some, the
//! writer deletes what the retention no longer keeps, so the count bound holds batch by batch.

use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};

use chrono::{DateTime, Utc};

use super::{Ledger, LedgerError, LedgerRecord, RunPayload, UsageQuery, UsageRow};
use crate::logging::PayloadRetention;

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
    Payload(Box<RunPayload>),
    Flush(oneshot::Sender<()>),
}

/// Wraps a ledger so that [`Ledger::record`] only queues; must be made inside a tokio runtime.
pub struct BatchedLedger {
    store: Arc<dyn Ledger>,
    queue: mpsc::Sender<Command>,
}

impl BatchedLedger {
    /// `retention` is applied to stored payloads after each batch that stores some.
    pub fn new(store: Arc<dyn Ledger>, retention: PayloadRetention) -> Self {
        let (queue, commands) = mpsc::channel(QUEUE);
        tokio::spawn(write(store.clone(), commands, retention));
        Self { store, queue }
    }

    async fn send(&self, command: Command) -> Result<(), Command> {
        self.queue.send(command).await.map_err(|e| e.0)
    }
}

/// The writer: takes what has queued (up to a batch), stores it, acknowledges flushes that were
/// queued behind it. Ends when the ledger is dropped and the queue is drained.
async fn write(
    store: Arc<dyn Ledger>,
    mut commands: mpsc::Receiver<Command>,
    retention: PayloadRetention,
) {
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
        let (mut payloads, mut flushed) = (Vec::new(), Vec::new());
        for command in taken.drain(..) {
            match command {
                Command::Record(record) => records.push(*record),
                Command::Payload(payload) => payloads.push(*payload),
                Command::Flush(done) => flushed.push(done),
            }
        }
        store_all(store.as_ref(), &records).await;
        if !payloads.is_empty() {
            store_payloads(store.as_ref(), &payloads, retention).await;
        }
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

/// Stores a batch's payloads, then applies the retention. A payload that cannot be stored is
/// logged, never retried: the run's ledger record does not depend on it.
async fn store_payloads(store: &dyn Ledger, payloads: &[RunPayload], retention: PayloadRetention) {
    if let Err(e) = store.store_payloads(payloads).await {
        tracing::error!(count = payloads.len(), error = %e, "could not store run payloads");
    }
    if let Err(e) = store.prune_payloads(retention, Utc::now()).await {
        tracing::error!(error = %e, "could not delete expired run payloads");
    }
}

#[async_trait::async_trait]
impl Ledger for BatchedLedger {
    async fn record(&self, record: &LedgerRecord) -> Result<(), LedgerError> {
        if self.send(Command::Record(Box::new(record.clone()))).await.is_err() {
            // The writer is gone (its runtime is shutting down): store it directly.
            return self.store.record(record).await;
        }
        Ok(())
    }

    async fn store_payloads(&self, payloads: &[RunPayload]) -> Result<(), LedgerError> {
        for (at, payload) in payloads.iter().enumerate() {
            if self.send(Command::Payload(Box::new(payload.clone()))).await.is_err() {
                return self.store.store_payloads(&payloads[at..]).await;
            }
        }
        Ok(())
    }

    async fn payload(&self, run_id: &str) -> Result<Option<RunPayload>, LedgerError> {
        self.flush().await;
        self.store.payload(run_id).await
    }

    async fn delete_payload(&self, run_id: &str) -> Result<bool, LedgerError> {
        self.flush().await;
        self.store.delete_payload(run_id).await
    }

    async fn prune_payloads(
        &self,
        retention: PayloadRetention,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        self.store.prune_payloads(retention, now).await
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
        let ledger = BatchedLedger::new(Arc::new(sqlite), PayloadRetention::default());
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
