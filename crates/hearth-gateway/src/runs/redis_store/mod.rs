//! Run buffers shared through Redis, so that any replica serves a run another one produces:
//! resumes (`GET /v1/runs/{id}/events?from=N`), the live tail, status and cancel.
//!
//! Layout, every key under the configured prefix (`hearth:` by default):
//! - `run:{id}`, a hash: model, route, format, status, created and finished times (ms), the
//!   producing replica (`owner`), `len` (events appended), `subs` (readers on other replicas),
//!   `delivered`, and `record` (the ledger record to write should the producer disappear);
//! - `run:{id}:events`, a Stream whose entry for event `seq` has the id `0-{seq+1}`, so reading
//!   from event `N` on is `XREAD … STREAMS key 0-N`, backlog and live tail alike;
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
//! Each event is written to Redis before it reaches memory, so whatever a caller has seen from
//! the producer is already in Redis for a resume elsewhere. Redis Cluster is not supported:
//! a run's keys would land in different slots.

mod background;
mod remote;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hearth_protocol::CanonicalEvent;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{InMemoryRunStore, OrphanedRun, RunError, RunInfo, RunStatus, RunStore, Subscription};
use crate::config::StateSettings;
use crate::ledger::LedgerRecord;

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
    /// Runs whose Redis copy broke off (Redis was unreachable for an append): they go on in
    /// memory for their local readers, and their Redis copy is closed as failed at the end.
    detached: Mutex<HashSet<String>>,
    remote_readers: Arc<tokio::sync::Semaphore>,
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
        let shared = Arc::new(Shared {
            local: InMemoryRunStore::new(ttl, max_bytes),
            client,
            conn,
            keys: Keys { prefix: settings.key_prefix.clone() },
            replica: format!("replica_{}", uuid::Uuid::now_v7().simple()),
            ttl,
            lease: settings.lease(),
            detached: Mutex::default(),
            remote_readers: Arc::new(tokio::sync::Semaphore::new(MAX_REMOTE_READERS)),
        });
        shared.renew_lease().await.map_err(unavailable)?;
        let background = vec![
            tokio::spawn(background::keep_lease(shared.clone())),
            tokio::spawn(background::listen_for_cancels(shared.clone())),
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

    fn is_detached(&self, run_id: &str) -> bool {
        self.detached.lock().unwrap_or_else(|e| e.into_inner()).contains(run_id)
    }

    fn detach(&self, run_id: &str, why: &dyn std::fmt::Display) {
        tracing::warn!(run_id, %why, "the run goes on for this replica's readers only");
        self.detached.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id.to_owned());
    }

    /// Sets a field of the run's hash, never recreating a run Redis no longer holds.
    async fn hset(&self, run_id: &str, field: &str, value: &str) -> Result<(), RunError> {
        if self.is_detached(run_id) {
            return Ok(());
        }
        scripts::UPDATE_FIELD
            .key(self.keys.run(run_id))
            .arg(field)
            .arg("set")
            .arg(value)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn append_remote(
        &self,
        run_id: &str,
        event: &CanonicalEvent,
    ) -> redis::RedisResult<Vec<i64>> {
        let json = serde_json::to_string(event).unwrap_or_default();
        scripts::APPEND
            .key(self.keys.run(run_id))
            .key(self.keys.events(run_id))
            .arg(json)
            .arg(SAFETY_EXPIRY.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await
    }

    async fn finish_remote(
        &self,
        run_id: &str,
        status: RunStatus,
    ) -> Result<HashMap<String, String>, redis::RedisError> {
        scripts::FINISH
            .key(self.keys.run(run_id))
            .key(self.keys.events(run_id))
            .key(self.keys.running())
            .arg(run_id)
            .arg(remote::status_name(status))
            .arg(now_ms())
            .arg(self.ttl.as_millis() as u64)
            .arg(&self.replica)
            .invoke_async(&mut self.conn())
            .await
    }
}

#[async_trait::async_trait]
impl RunStore for RedisRunStore {
    async fn create(
        &self,
        run_id: &str,
        model: &str,
        record: Option<&LedgerRecord>,
    ) -> Result<CancellationToken, RunError> {
        let s = &self.shared;
        let token = s.local.create(run_id, model, None).await?;
        let record = record.and_then(|r| serde_json::to_string(r).ok()).unwrap_or_default();
        let created: Result<i64, _> = scripts::CREATE
            .key(s.keys.run(run_id))
            .key(s.keys.running())
            .arg(run_id)
            .arg(model)
            .arg(&s.replica)
            .arg(now_ms())
            .arg(record)
            .arg(SAFETY_EXPIRY.as_millis() as u64)
            .invoke_async(&mut s.conn())
            .await;
        match created {
            Ok(1) => Ok(token),
            Ok(_) => {
                let _ = s.local.finish(run_id, RunStatus::Failed).await;
                Err(RunError::AlreadyExists(run_id.into()))
            }
            // Redis is down: the run is served from this replica alone rather than refused.
            Err(e) => {
                s.detach(run_id, &e);
                Ok(token)
            }
        }
    }

    async fn set_route(&self, run_id: &str, route: &str) -> Result<(), RunError> {
        self.shared.local.set_route(run_id, route).await?;
        self.shared.hset(run_id, "route", route).await
    }

    async fn set_format(&self, run_id: &str, format: &str) -> Result<(), RunError> {
        match self.shared.local.set_format(run_id, format).await {
            Err(RunError::NotFound(_)) => {}
            other => other?,
        }
        self.shared.hset(run_id, "format", format).await
    }

    async fn append(&self, run_id: &str, event: CanonicalEvent) -> Result<u64, RunError> {
        let s = &self.shared;
        if !s.is_detached(run_id) {
            match s.append_remote(run_id, &event).await.as_deref() {
                Ok([_, 1]) => {
                    let _ = s.local.cancel(run_id).await;
                }
                Ok([_, _]) => {}
                // Redis lost the run, or another replica ended it (this replica's lease lapsed):
                // the callers here still get every event, and the producer is told to stop.
                Ok(_) => {
                    s.detach(run_id, &"Redis no longer holds the run as running");
                    let _ = s.local.cancel(run_id).await;
                }
                Err(e) => s.detach(run_id, e),
            }
        }
        s.local.append(run_id, event).await
    }

    async fn finish(&self, run_id: &str, status: RunStatus) -> Result<RunInfo, RunError> {
        let s = &self.shared;
        let detached = s.detached.lock().unwrap_or_else(|e| e.into_inner()).remove(run_id);
        let remote_status = if detached { RunStatus::Failed } else { status };
        let remote = s.finish_remote(run_id, remote_status).await;
        let mut info = s.local.finish(run_id, status).await?;
        match remote {
            Ok(hash) => remote::merge_readers(&mut info, &hash),
            Err(error) => tracing::warn!(run_id, %error, "could not end the run in Redis"),
        }
        Ok(info)
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
            s.hset(run_id, "cancel", "1").await?;
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
