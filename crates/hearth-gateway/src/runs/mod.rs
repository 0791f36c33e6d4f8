//! Resumable runs: every request's events are appended to a run buffer with sequence numbers,
//! and callers read the buffer, never the producer. A caller that disconnects can come back
//! with `subscribe(run_id, from)` and get the events from `from` on, then the live tail; the
//! producer goes on regardless, so usage is exact even for abandoned streams.

mod memory;
mod redis_store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use hearth_protocol::CanonicalEvent;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use memory::InMemoryRunStore;
pub use redis_store::RedisRunStore;

use crate::ledger::LedgerRecord;

/// One buffered event and its sequence number (0 for a run's first event).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvent {
    pub seq: u64,
    pub event: CanonicalEvent,
}

/// The events of a run from some sequence number on; it ends after the terminal event.
pub type Subscription = BoxStream<'static, RunEvent>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    /// The model id the caller asked for.
    pub model: String,
    /// The route serving it, once one has committed.
    pub route: Option<String>,
    pub status: RunStatus,
    pub num_events: u64,
    /// Subscriptions reading the run right now.
    pub num_subscribers: usize,
    /// Whether some subscriber has read the terminal event.
    pub delivered: bool,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// How the edge that started the run encodes its stream (opaque to the gateway), so that a
    /// resume, on any replica sharing the store, speaks the same wire format.
    #[serde(skip)]
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("run `{0}` does not exist or has expired")]
    NotFound(String),
    #[error("run `{0}` already exists")]
    AlreadyExists(String),
    #[error("run `{0}` has ended and takes no more events")]
    Ended(String),
    #[error("run `{run_id}` has {num_events} events; cannot resume from event {from}")]
    BadCursor { run_id: String, from: u64, num_events: u64 },
    #[error("run buffers are full: running requests hold {used_bytes} of {max_bytes} bytes; retry shortly")]
    Full { used_bytes: usize, max_bytes: usize },
    /// The shared run store (Redis) cannot be reached.
    #[error("the shared run store is unavailable: {0}")]
    Unavailable(String),
}

/// What a run is opened with, beside its id.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRun<'a> {
    /// The model id the caller asked for.
    pub model: &'a str,
    /// The ledger record to write should the producer disappear mid-run (a shared store keeps
    /// it for whichever replica ends the run).
    pub record: Option<&'a LedgerRecord>,
    /// How the edge encodes the run's stream (see [`RunInfo::format`]).
    pub format: Option<&'a str>,
    /// Drop the run's events as soon as it ends rather than after the store's ttl: its caller
    /// asked that nothing be kept (`x-hearth-collect-log: false`). The readers already
    /// attached still read it to its end; it cannot be resumed after that.
    pub forget_at_end: bool,
}

impl<'a> NewRun<'a> {
    pub fn of(model: &'a str) -> Self {
        NewRun { model, ..NewRun::default() }
    }
}

/// A run that another replica produced until that replica stopped; the replica that ended it
/// writes its ledger record.
#[derive(Debug, Clone)]
pub struct OrphanedRun {
    pub info: RunInfo,
    pub record: LedgerRecord,
}

/// Where run buffers live. The in-memory store is the default; a shared store (Redis) lets
/// another replica serve a resume.
#[async_trait::async_trait]
pub trait RunStore: Send + Sync {
    /// Opens a run. The returned token is cancelled when someone calls [`RunStore::cancel`];
    /// the producer watches it.
    async fn create(&self, run_id: &str, run: NewRun<'_>) -> Result<CancellationToken, RunError>;
    async fn set_route(&self, run_id: &str, route: &str) -> Result<(), RunError>;
    /// Appends one event and returns its sequence number.
    async fn append(&self, run_id: &str, event: CanonicalEvent) -> Result<u64, RunError>;
    /// Marks the run ended; its TTL starts now.
    async fn finish(&self, run_id: &str, status: RunStatus) -> Result<RunInfo, RunError>;
    /// Events from `from` on, then the live tail until the terminal event.
    async fn subscribe(&self, run_id: &str, from: u64) -> Result<Subscription, RunError>;
    async fn status(&self, run_id: &str) -> Result<RunInfo, RunError>;
    /// Asks the producer to stop; a run that has already ended is left as it is.
    async fn cancel(&self, run_id: &str) -> Result<RunInfo, RunError>;
    /// Asks every running run's producer to stop (shutdown); returns how many were running.
    async fn cancel_running(&self) -> usize;
    /// Waits until every replica sharing the store can find the run (a shared store writes a
    /// new run in the background); returns at once for a store whose runs live in this
    /// process. The gateway waits for it before it hands out a run's id.
    async fn published(&self, _run_id: &str) {}
    /// How often the gateway should call [`RunStore::reap_orphans`]; `None` for a store whose
    /// runs all live in this process.
    fn sweep_interval(&self) -> Option<Duration> {
        None
    }
    /// Ends the runs whose producing replica has stopped, each with an error event after its
    /// last event, and returns them so that their ledger records get written.
    async fn reap_orphans(&self) -> Vec<OrphanedRun> {
        Vec::new()
    }
}
