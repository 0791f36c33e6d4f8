//! Run buffers shared through Redis, so that any replica serves a run another one produces:
//! resumes (`GET /v1/runs/{id}/events?from=N`), the live tail, status and cancel.
//!
//! Layout, every key under the configured prefix (`hearth:` by default):
//! - `run:{id}`, a hash: model, route, format, status, created and finished times (ms), the
//!   producing replica (`owner`), `len` (events appended), `subs` (readers on other replicas),
//!   `delivered`, and `record` (the ledger record to write should the producer disappear);
//! - `run:{id}:events`, a Stream with one entry per batch the run's events were written in: a
//!   JSON array of events whose id is `0-{n}`, `n` being the run's number of events after it,
//!   so reading from event `N` on is `XREAD … STREAMS key 0-N` (skipping the first entry's
//!   events before `N`), backlog and live tail alike;
//! - `running`, a hash from each run not yet ended to its producing replica;
//! - `lease:{replica}`, which each replica renews every third of the lease; a run whose
//!   producer's lease has lapsed (the replica was killed) is ended by another replica's sweep
//!   with one error event after its last event, in a script, so exactly one replica does it and
//!   writes its ledger record;
//! - the channel `cancel`: a run id published there is cancelled by the replica producing it.
//!
//! While Redis cannot be reached, new runs (and runs whose append failed) go on in this
//! replica's memory alone: served to their callers here, not resumable elsewhere.
//!
//! The producing replica also keeps its runs in an [`InMemoryRunStore`]: its own readers (the
//! caller who started a run, a resume that lands on the same replica) read memory, never Redis.
//! The replica's changes reach Redis in batches through one writer (`writer.rs`), and an event
//! reaches memory only once Redis holds it, so whatever a caller has seen from the producer is
//! already in Redis for a resume elsewhere. Redis Cluster is not supported: a run's keys would
//! land in different slots.
//!
//! Run ids are made by the gateway (UUID v7), so a new run's id is not checked with Redis before
//! the run starts; should Redis hold it already, the run goes on in this replica alone. A run's
//! creation is written with its first change (its route, or its first event) or when its id is
//! about to be handed out (`RunStore::published`), whichever comes first: no one can ask for a
//! run before its id is out, and one batch writes the creation and the first events together.

mod background;
mod remote;
mod scripts;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hearth_protocol::CanonicalEvent;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use writer::{Creation, Op, Queued};

use super::{
    InMemoryRunStore, NewRun, OrphanedRun, RunError, RunInfo, RunStatus, RunStore, Subscription,
};
use crate::config::StateSettings;

/// Where a run's keys live.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn run(&self, run_id: &str) -> String {
        format!("{}run:{run_id}", self.prefix)
    }
    fn events(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:events", self.prefix)
    }
    fn running(&self) -> String {
        format!("{}running", self.prefix)
    }
    fn lease(&self, replica: &str) -> String {
        format!("{}lease:{replica}", self.prefix)
    }
    fn cancel_channel(&self) -> String {
        format!("{}cancel", self.prefix)
    }
}

pub(crate) struct Shared {
    local: InMemoryRunStore,
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    replica: String,
    ttl: Duration,
    lease: Duration,
    /// This replica's runs not yet ended.
    tracked: Mutex<HashMap<String, Tracked>>,
    /// The queue to the writer (`writer.rs`).
    writes: mpsc::Sender<Queued>,
    remote_readers: Arc<tokio::sync::Semaphore>,
}

/// What the replica keeps about a run it produces until its end is written.
#[derive(Debug, Default)]
struct Tracked {
    /// The sequence number of the next event appended.
    next_seq: u64,
    /// The producer has ended the run: it takes no more events.
    finishing: bool,
    /// The run's Redis copy broke off (Redis was unreachable, or another replica ended the
    /// run): it goes on in memory for its local readers, and its Redis copy is closed as
    /// failed at the end.
    detached: bool,
    /// The run's creation, until it is queued with the run's first change.
    creation: Option<Creation>,
    /// The run's keys go soon after its end (see [`NewRun::forget_at_end`]).
    forget_at_end: bool,
    /// Becomes true once the run's creation has been written (or given up on), so that its
    /// id can be handed out: any replica then finds it.
    published: watch::Sender<bool>,
}

/// What `append` did with an event.
enum Appended {
    Queued(u64),
    NotMine(CanonicalEvent),
}

pub struct RedisRunStore {
    shared: Arc<Shared>,
    background: Vec<JoinHandle<()>>,
}

fn unavailable(error: redis::RedisError) -> RunError {
    RunError::Unavailable(error.to_string())
}

/// How long a run's keys last in Redis should its end never reach Redis (the producing replica
/// lost Redis at the wrong moment and no replica swept it).
const SAFETY_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Readers of other replicas' runs at once on this replica: each holds a Redis connection of
/// its own (a blocking `XREAD`).
const MAX_REMOTE_READERS: usize = 512;

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl RedisRunStore {
    /// Connects to `settings.redis_url` and starts this replica's lease and cancel listener.
    /// Must be called inside a tokio runtime.
    pub async fn connect(
        settings: &StateSettings,
        redis_url: &str,
        ttl: Duration,
        max_bytes: usize,
    ) -> Result<Self, RunError> {
        let client = redis::Client::open(redis_url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        let (writes, queue) = mpsc::channel(writer::QUEUE);
        let shared = Arc::new(Shared {
            local: InMemoryRunStore::new(ttl, max_bytes),
            client,
            conn,
            keys: Keys { prefix: settings.key_prefix.clone() },
            replica: format!("replica_{}", uuid::Uuid::now_v7().simple()),
            ttl,
            lease: settings.lease(),
            tracked: Mutex::default(),
            writes,
            remote_readers: Arc::new(tokio::sync::Semaphore::new(MAX_REMOTE_READERS)),
        });
        shared.renew_lease().await.map_err(unavailable)?;
        let background = vec![
            tokio::spawn(background::keep_lease(shared.clone())),
            tokio::spawn(background::listen_for_cancels(shared.clone())),
            tokio::spawn(writer::write_batches(shared.clone(), queue)),
        ];
        tracing::info!(replica = %shared.replica, "run buffers shared through Redis");
        Ok(Self { shared, background })
    }

    /// A handle on the store's Redis connection (it reconnects by itself), for other state
    /// kept in the same Redis.
    pub fn connection(&self) -> ConnectionManager {
        self.shared.conn()
    }

    /// This replica's id, as runs name their producer.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }
}

impl Drop for RedisRunStore {
    fn drop(&mut self) {
        self.background.iter().for_each(JoinHandle::abort);
    }
}

impl Shared {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_detached(&self, run_id: &str) -> bool {
        self.tracked().get(run_id).is_some_and(|run| run.detached)
    }

    fn detach(&self, run_id: &str, why: &dyn std::fmt::Display) {
        if let Some(run) = self.tracked().get_mut(run_id) {
            if !run.detached {
                tracing::warn!(run_id, %why, "the run goes on for this replica's readers only");
                run.detached = true;
            }
        }
    }

    fn mark_published(&self, run_id: &str) {
        if let Some(run) = self.tracked().get(run_id) {
            run.published.send_replace(true);
        }
    }

    fn untrack(&self, run_id: &str) {
        self.tracked().remove(run_id);
    }

    /// Queues the change `decide` makes, deciding it under the `tracked` lock once the writer
    /// has room: so the order of one run's changes in the queue is the order of the sequence
    /// numbers they were given, and a caller that gives up while waiting for room has changed
    /// nothing. The run's creation, while not yet queued, goes first (even when `decide` makes
    /// no change). Should the writer be gone (the store is being dropped), the change still
    /// reaches this replica's readers.
    async fn queue<T>(
        &self,
        run_id: &str,
        decide: impl FnOnce(&mut HashMap<String, Tracked>) -> (Option<Op>, T),
    ) -> T {
        let room = self.writes.reserve().await;
        let (unsent, answer) = {
            let mut tracked = self.tracked();
            let creation = tracked.get_mut(run_id).and_then(|run| run.creation.take());
            let creation = creation.map(Op::Create);
            let (op, answer) = decide(&mut tracked);
            let queued = Queued { run_id: run_id.into(), creation, op };
            match room {
                // Sent while the lock is held: no other change to the run can come between.
                Ok(room) if queued.creation.is_some() || queued.op.is_some() => {
                    room.send(queued);
                    (None, answer)
                }
                _ => (Some(queued), answer),
            }
        };
        if let Some(Queued { creation, op, .. }) = unsent {
            for op in creation.into_iter().chain(op) {
                writer::apply_locally(self, run_id, op, None).await;
            }
        }
        answer
    }
}

#[async_trait::async_trait]
impl RunStore for RedisRunStore {
    async fn create(&self, run_id: &str, new: NewRun<'_>) -> Result<CancellationToken, RunError> {
        let s = &self.shared;
        let token = s.local.create(run_id, new).await?;
        let creation = Creation {
            model: new.model.to_owned(),
            record: new.record.map(|r| Box::new(r.clone())),
            format: new.format.unwrap_or_default().to_owned(),
            forget: new.forget_at_end,
        };
        let tracked = Tracked {
            creation: Some(creation),
            forget_at_end: new.forget_at_end,
            ..Tracked::default()
        };
        s.tracked().insert(run_id.to_owned(), tracked);
        Ok(token)
    }

    async fn set_route(&self, run_id: &str, route: &str) -> Result<(), RunError> {
        self.shared.local.set_route(run_id, route).await?;
        let op = Op::Route(route.to_owned());
        self.shared.queue(run_id, |_| (Some(op), ())).await;
        Ok(())
    }

    async fn append(&self, run_id: &str, event: CanonicalEvent) -> Result<u64, RunError> {
        let s = &self.shared;
        let json = serde_json::to_string(&event).unwrap_or_default();
        let appended = s
            .queue(run_id, |tracked| match tracked.get_mut(run_id) {
                Some(run) if !run.finishing => {
                    let seq = run.next_seq;
                    run.next_seq += 1;
                    (Some(Op::Event { seq, json, event }), Ok(Appended::Queued(seq)))
                }
                Some(_) => (None, Err(RunError::Ended(run_id.into()))),
                None => (None, Ok(Appended::NotMine(event))),
            })
            .await?;
        match appended {
            Appended::Queued(seq) => Ok(seq),
            // Not a run this replica produces: the local store answers (not found, or ended).
            Appended::NotMine(event) => s.local.append(run_id, event).await,
        }
    }

    async fn finish(&self, run_id: &str, status: RunStatus) -> Result<RunInfo, RunError> {
        let s = &self.shared;
        let (done, ended) = oneshot::channel();
        let queued = s
            .queue(run_id, |tracked| match tracked.get_mut(run_id) {
                Some(run) if !run.finishing => {
                    run.finishing = true;
                    let forget = run.forget_at_end;
                    (Some(Op::Finish { status, forget, done }), Ok(true))
                }
                Some(_) => (None, Err(RunError::Ended(run_id.into()))),
                None => (None, Ok(false)),
            })
            .await?;
        if !queued {
            return s.local.finish(run_id, status).await;
        }
        match ended.await {
            Ok(info) => info,
            // The writer stopped with the change in hand (the store is being dropped).
            Err(_) => s.local.finish(run_id, status).await,
        }
    }

    async fn subscribe(&self, run_id: &str, from: u64) -> Result<Subscription, RunError> {
        match self.shared.local.subscribe(run_id, from).await {
            Err(RunError::NotFound(_)) => {
                remote::subscribe(self.shared.clone(), run_id, from).await
            }
            local => local,
        }
    }

    async fn status(&self, run_id: &str) -> Result<RunInfo, RunError> {
        match self.shared.local.status(run_id).await {
            Err(RunError::NotFound(_)) => remote::info(&self.shared, run_id).await,
            local => local,
        }
    }

    async fn cancel(&self, run_id: &str) -> Result<RunInfo, RunError> {
        let s = &self.shared;
        match s.local.cancel(run_id).await {
            Err(RunError::NotFound(_)) => {}
            local => return local,
        }
        let info = remote::info(s, run_id).await?;
        if info.status == RunStatus::Running {
            // The flag reaches the producer with its next append, should the message be lost.
            s.try_update_field(run_id, "cancel", "set", 1).await?;
            redis::cmd("PUBLISH")
                .arg(s.keys.cancel_channel())
                .arg(run_id)
                .query_async::<()>(&mut s.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(info)
    }

    async fn cancel_running(&self) -> usize {
        self.shared.local.cancel_running().await
    }

    async fn published(&self, run_id: &str) {
        // Queues the run's creation should no change have taken it yet.
        self.shared.queue(run_id, |_| (None, ())).await;
        let published = self.shared.tracked().get(run_id).map(|run| run.published.subscribe());
        if let Some(mut published) = published {
            // An error means the run has ended meanwhile: its creation was written before.
            let _ = published.wait_for(|done| *done).await;
        }
    }

    fn sweep_interval(&self) -> Option<Duration> {
        Some(self.shared.lease / 2)
    }

    async fn reap_orphans(&self) -> Vec<OrphanedRun> {
        match background::reap_orphans(&self.shared).await {
            Ok(orphans) => orphans,
            Err(error) => {
                tracing::warn!(%error, "could not look for runs whose replica has stopped");
                Vec::new()
            }
        }
    }
}
