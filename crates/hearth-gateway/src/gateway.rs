//! The gateway: what the HTTP layer calls. It resolves a model id to routes, opens a run,
//! detaches a producer task that drives the chosen route into the run buffer, and hands the
//! caller a subscription to that buffer.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::Utc;
use futures::StreamExt;
use hearth_protocol::{CanonicalRequest, ErrorKind, StreamError, ValidationError};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cache::{self, CacheOptions, CacheStatus, MemoryCache};
use crate::catalog::{Catalog, CatalogError};
use crate::config::GatewaySettings;
use crate::keys::{ApiKey, Keys};
use crate::ledger::{
    BatchedLedger, CallerMetadata, Ledger, LedgerError, LedgerRecord, MetadataError, RunPayload,
    SqliteLedger, UsageBucket, UsageGroup, UsageQuery,
};
use crate::limits::{self, LimitError, Limits, MemoryLimiter, Usage};
use crate::live::{LiveRunView, LiveRuns};
use crate::logging::{LogOptions, LoggingSettings};
use crate::producer::{self, RunJob};
use crate::router::{RetryPolicy, RouteHealth};
use crate::runs::{InMemoryRunStore, NewRun, RunError, RunEvent, RunInfo, RunStore, Subscription};
use crate::shared::{Backends, Inner};
use crate::wiring::Parts;

/// Memory the in-process response cache may hold (the oldest answers go first).
pub(crate) const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Who is calling, as the edge authenticated it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The id (never the secret) of the key the caller used.
    pub api_key_id: Option<String>,
    /// The key the edge authenticated, with its metadata, allowed models and limits.
    pub key: Option<Arc<ApiKey>>,
    /// What the request asked of the response cache.
    pub cache: CacheOptions,
    /// The conversation the request belongs to (`x-session-affinity`), for placing it on the
    /// engine replica holding its prefix cache.
    pub session: Option<String>,
    /// Caller metadata (e.g. from a header), validated here. When `None`, the request's own
    /// `metadata` is used.
    pub metadata: Option<Value>,
    /// Cancel the run when the subscription [`Gateway::start_run`] returns is dropped before
    /// the run's terminal event: Cog's semantics, where a prediction whose client leaves is
    /// cancelled. Off by default: a chat run goes on for its caller to resume.
    pub cancel_on_disconnect: bool,
    /// What the caller asked to be kept of the request (payloads, or nothing at all).
    pub log: LogOptions,
}

/// How the edge opens a run: the id it chose (it may have built its answer's ids from it)
/// and how it encodes the run's stream, stored with the run so that a resume on any replica
/// speaks the same format.
#[derive(Debug, Clone)]
pub struct RunOpening {
    pub run_id: String,
    /// Opaque to the gateway (see [`RunInfo::format`]).
    pub format: Option<String>,
}

impl RunOpening {
    /// A fresh run id and no format.
    pub fn new() -> Self {
        RunOpening { run_id: new_run_id(), format: None }
    }
}

impl Default for RunOpening {
    fn default() -> Self {
        Self::new()
    }
}

/// A run whose route has committed: its first content event is in the buffer.
pub struct StartedRun {
    pub run_id: String,
    /// The route serving it: `provider/model` or `local/<package>`.
    pub route: String,
    /// The run's events from the first one (seq 0).
    pub events: Subscription,
    /// Whether the answer came from the response cache (`None`: the caller did not ask for it).
    pub cache: Option<CacheStatus>,
}

/// Why a run did not start. The edge maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Model(#[from] CatalogError),
    #[error(transparent)]
    Runs(#[from] RunError),
    /// The caller's API key may not use this model.
    #[error("API key `{key}` may not use model `{model}`")]
    KeyForbidsModel { key: String, model: String },
    /// A `[[limits]]` entry refused the request (or its counters cannot be checked).
    #[error(transparent)]
    Limited(#[from] LimitError),
    /// Every route failed before the first content event, or the request was refused
    /// upstream. The run exists (status `failed`) and has its ledger record.
    #[error("{error}")]
    Failed { run_id: String, error: StreamError },
}

impl StartError {
    pub fn run_id(&self) -> Option<&str> {
        match self {
            StartError::Failed { run_id, .. } => Some(run_id),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

impl Gateway {
    /// The default wiring: in-memory run buffers and the SQLite ledger at `ledger_path`, written
    /// in batches by a background task (call [`Gateway::wait_idle`] before exiting).
    pub async fn open(
        catalog: Catalog,
        settings: &GatewaySettings,
    ) -> Result<Gateway, LedgerError> {
        let sqlite = SqliteLedger::open(&settings.ledger_path).await?;
        let ledger = BatchedLedger::new(Arc::new(sqlite), LoggingSettings::default().retention());
        let runs = InMemoryRunStore::from_settings(settings);
        Ok(Self::new(catalog, settings, Arc::new(runs), Arc::new(ledger)))
    }

    pub fn new(
        catalog: Catalog,
        settings: &GatewaySettings,
        runs: Arc<dyn RunStore>,
        ledger: Arc<dyn Ledger>,
    ) -> Gateway {
        let parts = Parts {
            runs,
            ledger,
            logging: LoggingSettings::default(),
            limits: Limits::default(),
            limiter: Arc::new(MemoryLimiter::default()),
            keys: Keys::none(),
            cache: Arc::new(MemoryCache::new(DEFAULT_CACHE_BYTES)),
            backends: Backends::default(),
        };
        Self::build(catalog, settings, parts)
    }

    pub(crate) fn build(catalog: Catalog, settings: &GatewaySettings, parts: Parts) -> Gateway {
        let Parts { runs, ledger, logging, limits, limiter, keys, cache, backends } = parts;
        let inner = Arc::new(Inner {
            catalog: ArcSwap::from_pointee(catalog),
            catalog_writer: Mutex::new(()),
            policy: RetryPolicy::from_settings(settings),
            health: RouteHealth::default(),
            runs,
            ledger,
            limits,
            limiter,
            keys,
            cache,
            backends,
            tasks: TaskTracker::new(),
            live: LiveRuns::default(),
            logging,
        });
        if let Some(every) = inner.runs.sweep_interval() {
            tokio::spawn(sweep_orphans(Arc::downgrade(&inner), every));
        }
        if inner.logging.retention().max_age.is_some() {
            tokio::spawn(prune_payloads(Arc::downgrade(&inner)));
        }
        Gateway { inner }
    }

    /// The catalog as it is now (a snapshot: later updates do not change it).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.load_full()
    }

    /// Applies `update` to a copy of the catalog and makes the copy current. Requests already
    /// holding the old snapshot finish on it; handles dropped with it stop their engines once
    /// their last request ends.
    pub fn update_catalog<R>(&self, update: impl FnOnce(&mut Catalog) -> R) -> R {
        let _writer = self.inner.catalog_writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Catalog::clone(&self.inner.catalog.load());
        let result = update(&mut next);
        self.inner.catalog.store(Arc::new(next));
        result
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.inner.ledger
    }

    /// The client API keys: declared, stored, and the lookups the edge makes.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Where the gateway keeps runs, spend and limit counters.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// Validates the request and metadata, resolves the model, opens a run and starts its
    /// producer; returns once a route has committed (its first content event is buffered) or
    /// every route has failed. The producer is detached: dropping the returned subscription,
    /// or this future, does not stop generation. Must run inside a tokio runtime.
    pub async fn start_run(
        &self,
        request: CanonicalRequest,
        caller: Caller,
    ) -> Result<StartedRun, StartError> {
        self.open_run(request, caller, RunOpening::new()).await
    }

    /// [`Gateway::start_run`] with the run's id and stream format chosen by the edge.
    pub async fn open_run(
        &self,
        request: CanonicalRequest,
        caller: Caller,
        opening: RunOpening,
    ) -> Result<StartedRun, StartError> {
        request.validate()?;
        let mut request = request;
        if request.session.is_none() {
            request.session = caller.session.clone();
        }
        check_key(&caller, &request.model)?;
        let metadata = caller_metadata(&caller, request.metadata.as_ref())?;
        let catalog = self.inner.catalog.load();
        let resolved = catalog.resolve(&request.model)?;
        let targets = catalog.targets(&resolved.routes);
        drop(catalog);
        let reservation =
            limits::admit(&self.inner, &request, &caller, &metadata, &resolved.prices).await?;
        let RunOpening { run_id, format } = opening;
        let keep = self.inner.logging.keep(caller.log);
        let runs = &self.inner.runs;
        // Only a shared store keeps the record (for the replica that would end an orphan).
        let record = runs.sweep_interval().map(|_| {
            let key = caller.api_key_id.clone();
            LedgerRecord::failed_start(&run_id, &request.model, metadata.clone(), key, Utc::now())
        });
        let new = NewRun {
            model: &request.model,
            record: record.as_ref(),
            format: format.as_deref(),
            forget_at_end: !keep.collect,
        };
        let cache_key = caller
            .cache
            .is_active()
            .then(|| cache::key_of(&request, &caller.cache, caller.api_key_id.as_deref()));
        if let Some(key) = cache_key.as_ref().filter(|_| !caller.cache.skip) {
            if let Some(events) = self.inner.cache.get(key).await {
                let (model, api_key_id) = (request.model.clone(), caller.api_key_id.clone());
                let hit = cache::Hit { model, events, metadata, api_key_id, reservation };
                // Replayed at once: there is no producer to lose, and so no orphan record.
                let new = NewRun { record: None, ..new };
                return cache::replay(&self.inner, &run_id, new, hit).await;
            }
        }
        let cancel = match runs.create(&run_id, new).await {
            Ok(cancel) => cancel,
            Err(e) => {
                self.inner.limiter.settle(&reservation, Usage::default()).await;
                return Err(e.into());
            }
        };
        // Subscribed before the producer starts, so the run is never seen without a reader.
        let mut events = match runs.subscribe(&run_id, 0).await {
            Ok(events) => events,
            Err(e) => {
                let _ = runs.finish(&run_id, crate::runs::RunStatus::Failed).await;
                self.inner.limiter.settle(&reservation, Usage::default()).await;
                return Err(e.into());
            }
        };
        if caller.cancel_on_disconnect {
            events = CancelOnDrop { events, cancel: cancel.clone(), ended: false }.boxed();
        }
        let (commit, committed) = oneshot::channel();
        // Kept as the caller sent it, should logging store the run's payloads.
        let logged_request = keep.payload.then(|| serde_json::to_value(&request).ok()).flatten();
        let job = RunJob {
            run_id: run_id.clone(),
            logged_request,
            request,
            targets,
            prices: resolved.prices,
            metadata,
            api_key_id: caller.api_key_id,
            cancel,
            reservation,
            // A caller that asked that nothing be kept gets no cache entry either.
            cache_put: cache_key.zip(caller.cache.ttl).filter(|_| keep.collect),
        };
        let span = producer::run_span(&job);
        self.inner.tasks.spawn(producer::drive(self.inner.clone(), job, commit).instrument(span));
        match committed.await {
            Ok(Ok(route)) => {
                // The id goes out with the answer's headers: another replica must find it.
                runs.published(&run_id).await;
                let cache = caller.cache.is_active().then_some(CacheStatus::Miss);
                Ok(StartedRun { run_id, route, events, cache })
            }
            Ok(Err(error)) => Err(StartError::Failed { run_id, error }),
            Err(_) => Err(StartError::Failed {
                run_id,
                error: StreamError::new(
                    ErrorKind::Internal,
                    "the run's producer stopped unexpectedly",
                ),
            }),
        }
    }

    /// The run's events from sequence number `from` on, then its live tail.
    pub async fn subscribe(&self, run_id: &str, from: u64) -> Result<Subscription, RunError> {
        self.inner.runs.subscribe(run_id, from).await
    }

    pub async fn status(&self, run_id: &str) -> Result<RunInfo, RunError> {
        self.inner.runs.status(run_id).await
    }

    /// Asks the run's producer to stop. It ends the run with a `cancelled` error event shortly
    /// after; the returned status may still say `running`.
    pub async fn cancel(&self, run_id: &str) -> Result<RunInfo, RunError> {
        self.inner.runs.cancel(run_id).await
    }

    /// The run's stored request and answer, when logging kept them.
    pub async fn payload(&self, run_id: &str) -> Result<Option<RunPayload>, LedgerError> {
        self.inner.ledger.payload(run_id).await
    }

    /// Deletes the run's stored payload; whether it had one.
    pub async fn delete_payload(&self, run_id: &str) -> Result<bool, LedgerError> {
        self.inner.ledger.delete_payload(run_id).await
    }

    /// Whether `[logging] payloads` stores every request's payloads by default.
    pub fn logs_payloads(&self) -> bool {
        self.inner.logging.payloads
    }

    /// Asks every running run to stop (a shutdown out of grace): each producer ends its run
    /// with a `cancelled` error and writes its ledger record. Returns how many were running.
    pub async fn cancel_all(&self) -> usize {
        self.inner.runs.cancel_running().await
    }

    pub async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, LedgerError> {
        self.inner.ledger.usage(query).await
    }

    /// The runs this daemon is producing now, oldest first (with replicas, each lists its own).
    pub fn live_runs(&self) -> Vec<LiveRunView> {
        self.inner.live.snapshot()
    }

    /// Usage over time, in buckets of `bucket` (see [`Ledger::usage_series`]).
    pub async fn usage_series(
        &self,
        query: &UsageQuery,
        bucket: std::time::Duration,
    ) -> Result<Vec<UsageBucket>, LedgerError> {
        self.inner.ledger.usage_series(query, bucket).await
    }

    /// Waits until every producer started so far has ended and its ledger record is stored
    /// (graceful shutdown, and tests).
    pub async fn wait_idle(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.tasks.reopen();
        self.inner.ledger.flush().await;
    }
}

/// Ends, every `every`, the shared runs whose producing replica has stopped, and writes their
/// ledger records; stops with the gateway.
async fn sweep_orphans(inner: std::sync::Weak<Inner>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        for orphan in inner.runs.reap_orphans().await {
            if let Err(e) = inner.ledger.record(&orphan.record).await {
                tracing::error!(run_id = %orphan.info.run_id, error = %e, "could not write the ledger record");
            }
        }
    }
}

/// Deletes, every minute, the stored payloads older than `[logging] payload_max_age_secs`
/// (the ledger's writer also does after each batch that stores some); stops with the gateway.
async fn prune_payloads(inner: std::sync::Weak<Inner>) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let retention = inner.logging.retention();
        if let Err(e) = inner.ledger.prune_payloads(retention, Utc::now()).await {
            tracing::error!(error = %e, "could not delete expired run payloads");
        }
    }
}

/// Refuses a caller whose API key may not use `model`.
pub(crate) fn check_key(caller: &Caller, model: &str) -> Result<(), StartError> {
    match caller.key.as_ref().filter(|key| !key.allows(model)) {
        Some(key) => Err(StartError::KeyForbidsModel { key: key.id.clone(), model: model.into() }),
        None => Ok(()),
    }
}

/// The caller's metadata (a header) or else the request's own, validated.
pub(crate) fn caller_metadata(
    caller: &Caller,
    request_metadata: Option<&serde_json::Map<String, Value>>,
) -> Result<CallerMetadata, MetadataError> {
    let own = match (caller.metadata.as_ref(), request_metadata) {
        (Some(value), _) => CallerMetadata::from_json(value)?,
        (None, Some(map)) => CallerMetadata::from_json(&Value::Object(map.clone()))?,
        (None, None) => CallerMetadata::default(),
    };
    // The key's entries win: a caller cannot bill its runs to another team.
    match &caller.key {
        Some(key) => own.overlaid(&key.metadata),
        None => Ok(own),
    }
}

/// A run id: time-ordered (UUIDv7: a millisecond timestamp, then 74 random bits), so the
/// ledger's primary key grows at its right edge: with random v4 ids every insert dirtied a
/// different B-tree page, and SQLite's writer took a fifth of the daemon's CPU at 1,000 runs a
/// second.
pub(crate) fn new_run_id() -> String {
    format!("run_{}", uuid::Uuid::now_v7().simple())
}

/// A run's first subscription that cancels the run when it is dropped before the terminal
/// event ([`Caller::cancel_on_disconnect`]).
struct CancelOnDrop {
    events: Subscription,
    cancel: tokio_util::sync::CancellationToken,
    ended: bool,
}

impl futures::Stream for CancelOnDrop {
    type Item = RunEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RunEvent>> {
        let polled = self.events.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(next) = &polled {
            self.ended |= next.as_ref().is_none_or(|e| e.event.is_terminal());
        }
        polled
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.ended {
            self.cancel.cancel();
        }
    }
}
