//! A cache hit as a run of its own: the kept events go into a fresh run buffer, so the edge
//! answers it as any run (a stream for a streamed request, a body otherwise, resumable), and
//! its ledger record says `cached`, at zero cost.

use chrono::Utc;
use rust_decimal::Decimal;

use super::CacheStatus;
use crate::gateway::{StartError, StartedRun};
use crate::ledger::{CallerMetadata, LedgerRecord, LedgerStatus};
use crate::limits::{Reservation, Usage};
use crate::runs::{NewRun, RunStatus};
use crate::shared::Inner;

/// The route a cached answer names (`x-hearth-route`).
pub const CACHE_ROUTE: &str = "cache";

pub(crate) struct Hit {
    pub model: String,
    pub events: Vec<hearth_protocol::CanonicalEvent>,
    pub metadata: CallerMetadata,
    pub api_key_id: Option<String>,
    pub reservation: Reservation,
}

/// Replays `hit` as the run `run_id`, opened as `new` says.
pub(crate) async fn replay(
    inner: &Inner,
    run_id: &str,
    new: NewRun<'_>,
    hit: Hit,
) -> Result<StartedRun, StartError> {
    let started_at = Utc::now();
    let run_id = run_id.to_owned();
    let runs = &inner.runs;
    // Nothing is generated: what the limits reserved goes back whatever happens next.
    inner.limiter.settle(&hit.reservation, Usage::default()).await;
    runs.create(&run_id, new).await?;
    let events = runs.subscribe(&run_id, 0).await?;
    runs.set_route(&run_id, CACHE_ROUTE).await?;
    for event in hit.events {
        runs.append(&run_id, event).await?;
    }
    runs.finish(&run_id, RunStatus::Finished).await?;
    let mut record =
        LedgerRecord::failed_start(&run_id, &hit.model, hit.metadata, hit.api_key_id, started_at);
    record.status = LedgerStatus::Finished;
    record.route = Some(CACHE_ROUTE.into());
    record.cost = Some(Decimal::ZERO);
    record.cached = true;
    record.ended_at = Utc::now();
    record.latency_ms = (record.ended_at - started_at).num_milliseconds().max(0) as u64;
    if let Err(e) = inner.ledger.record(&record).await {
        tracing::error!(%run_id, error = %e, "could not write the ledger record");
    }
    Ok(StartedRun { run_id, route: CACHE_ROUTE.into(), events, cache: Some(CacheStatus::Hit) })
}
