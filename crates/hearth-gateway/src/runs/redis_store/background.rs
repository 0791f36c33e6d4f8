//! What each replica does in the background when runs are shared: keep its lease, cancel its
//! runs when another replica asks, and end the runs of replicas that have stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use hearth_protocol::{CanonicalEvent, ErrorKind};

use super::{now_ms, remote, scripts, Shared};
use crate::ledger::{LedgerRecord, LedgerStatus};
use crate::runs::RunStore;
use crate::runs::{OrphanedRun, RunError};

impl Shared {
    pub(super) async fn renew_lease(&self) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(self.keys.lease(&self.replica))
            .arg(1)
            .arg("PX")
            .arg(self.lease.as_millis() as u64)
            .query_async(&mut self.conn())
            .await
    }

    /// Changes a field of the run's hash (`op`: `set` or `incr`) if the run still exists, never
    /// recreating a run Redis no longer holds (see `UPDATE_FIELD`).
    pub(super) async fn try_update_field(
        &self,
        run_id: &str,
        field: &str,
        op: &str,
        value: i64,
    ) -> Result<(), RunError> {
        scripts::UPDATE_FIELD
            .key(self.keys.run(run_id))
            .arg(field)
            .arg(op)
            .arg(value)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(super::unavailable)
    }

    /// [`Shared::try_update_field`] for bookkeeping whose loss only costs accuracy (reader
    /// counts): a failure is logged, not returned.
    pub(super) async fn update_field(&self, run_id: &str, field: &str, op: &str, value: i64) {
        if let Err(error) = self.try_update_field(run_id, field, op, value).await {
            tracing::debug!(run_id, field, %error, "could not update a run's hash");
        }
    }
}

/// Renews the lease every third of its length, on a fixed beat, each try bounded by a quarter
/// of the lease: a stalled Redis call must not push the next renewal past the lease. A replica
/// that cannot reach Redis for a whole lease finds its running runs ended by another replica
/// (its own readers are still served; see `append`).
pub(super) async fn keep_lease(shared: Arc<Shared>) {
    let period = shared.lease / 3;
    // The first beat is a period away: `connect` has just taken the lease.
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
        match tokio::time::timeout(shared.lease / 4, shared.renew_lease()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not renew this replica's lease in Redis")
            }
            Err(_) => tracing::warn!("renewing this replica's lease in Redis timed out"),
        }
    }
}

/// Cancels this replica's runs named on the cancel channel; reconnects when the connection
/// drops.
pub(super) async fn listen_for_cancels(shared: Arc<Shared>) {
    loop {
        match shared.client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(shared.keys.cancel_channel()).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        if let Ok(run_id) = message.get_payload::<String>() {
                            let _ = shared.local.cancel(&run_id).await;
                        }
                    }
                }
                tracing::warn!("lost the Redis cancel channel; reconnecting");
            }
            Err(error) => tracing::warn!(%error, "cannot subscribe to Redis's cancel channel"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Ends every running run whose producing replica's lease has lapsed, each with one error
/// event after its last event, and returns the runs this replica ended (for their ledger
/// records).
pub(super) async fn reap_orphans(s: &Shared) -> redis::RedisResult<Vec<OrphanedRun>> {
    let mut conn = s.conn();
    let running: HashMap<String, String> =
        redis::cmd("HGETALL").arg(s.keys.running()).query_async(&mut conn).await?;
    let owners: HashSet<&String> = running.values().filter(|o| **o != s.replica).collect();
    let mut dead = HashSet::new();
    for owner in owners {
        let alive: bool =
            redis::cmd("EXISTS").arg(s.keys.lease(owner)).query_async(&mut conn).await?;
        if !alive {
            dead.insert(owner.as_str());
        }
    }
    let mut orphans = Vec::new();
    for (run_id, owner) in running.iter().filter(|(_, owner)| dead.contains(owner.as_str())) {
        // One run's failure must not lose the records of the runs already ended.
        match reap(s, &mut conn, run_id, owner).await {
            Ok(Some(orphan)) => orphans.push(orphan),
            Ok(None) => {}
            Err(error) => tracing::warn!(run_id, %error, "could not end a stopped replica's run"),
        }
    }
    Ok(orphans)
}

/// Ends one run of a stopped replica, if no other replica has; its hash comes back from the
/// same script, so the record never depends on a second read.
async fn reap(
    s: &Shared,
    conn: &mut redis::aio::ConnectionManager,
    run_id: &str,
    owner: &str,
) -> redis::RedisResult<Option<OrphanedRun>> {
    let message = format!(
        "the replica producing this run ({owner}) stopped before it ended; the events before \
         this one are all it produced"
    );
    let event = CanonicalEvent::error(ErrorKind::Upstream, message.clone());
    let hash: HashMap<String, String> = scripts::REAP
        .key(s.keys.run(run_id))
        .key(s.keys.events(run_id))
        .key(s.keys.running())
        .key(s.keys.lease(owner))
        .arg(run_id)
        .arg(serde_json::to_string(&event).unwrap_or_default())
        .arg(now_ms())
        .arg(s.ttl.as_millis() as u64)
        .arg(owner)
        .invoke_async(conn)
        .await?;
    if hash.is_empty() {
        return Ok(None);
    }
    tracing::warn!(run_id, owner, "ended a run whose replica stopped");
    let info = remote::info_from_hash(run_id, &hash);
    let record = orphan_record(&info, hash.get("record"), message);
    Ok(Some(OrphanedRun { info, record }))
}

/// The ledger record of a run whose producer disappeared: the one the producer left at the
/// start (caller, metadata, route) marked failed, or one made from the run's hash.
fn orphan_record(
    info: &crate::runs::RunInfo,
    left: Option<&String>,
    error: String,
) -> LedgerRecord {
    let left = left.and_then(|json| serde_json::from_str::<LedgerRecord>(json).ok());
    let ended_at = Utc::now();
    let mut record = left.unwrap_or_else(|| {
        LedgerRecord::failed_start(
            &info.run_id,
            &info.model,
            Default::default(),
            None,
            info.created_at,
        )
    });
    record.status = LedgerStatus::Failed;
    record.route = info.route.clone().or(record.route);
    record.ended_at = ended_at;
    record.latency_ms = (ended_at - record.started_at).num_milliseconds().max(0) as u64;
    record.error = Some(error);
    record
}
