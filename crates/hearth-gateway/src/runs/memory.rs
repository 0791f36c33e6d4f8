//! The in-memory run store: one process's run buffers.
//!
//! Memory policy: all buffers together are bounded by `max_bytes` (an estimate of the events'
//! size). When a new run would start past the bound, finished runs are evicted oldest-first;
//! if running runs alone fill it, the new run is refused with [`RunError::Full`] (a 503 at the
//! edge). A running run is never cut: its events keep being appended past the bound, and the
//! next eviction makes room again. Finished runs expire `ttl` after they end; expired runs are
//! dropped lazily, whenever the store is touched. A run opened with `forget_at_end` is dropped
//! as it ends: its attached readers hold it until they have read it.
//!
//! Finished runs are also queued in the order they ended, so expiry and eviction take them from
//! the front: creating a run costs O(1) amortized however many runs the store holds.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hearth_protocol::CanonicalEvent;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{NewRun, RunError, RunEvent, RunInfo, RunStatus, RunStore, Subscription};
use crate::config::GatewaySettings;

/// Fixed cost counted per event on top of its text (enum, vector slot, allocation headers).
const EVENT_OVERHEAD_BYTES: usize = 64;

pub struct InMemoryRunStore {
    runs: Mutex<Runs>,
    used_bytes: AtomicUsize,
    ttl: Duration,
    max_bytes: usize,
}

#[derive(Default)]
struct Runs {
    by_id: HashMap<String, Arc<RunBuffer>>,
    /// Finished runs, oldest end first. An id whose run is already gone is skipped.
    finished: VecDeque<(Instant, String)>,
}

struct RunBuffer {
    id: String,
    state: Mutex<BufferState>,
    /// The number of events, re-sent on every append and at the end to wake subscribers.
    len_tx: watch::Sender<u64>,
    cancel: CancellationToken,
    subscribers: AtomicUsize,
    delivered: AtomicBool,
    forget_at_end: bool,
}

struct BufferState {
    model: String,
    route: Option<String>,
    format: Option<String>,
    status: RunStatus,
    events: Vec<CanonicalEvent>,
    bytes: usize,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    ended: Option<Instant>,
}

impl InMemoryRunStore {
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self { runs: Mutex::default(), used_bytes: AtomicUsize::new(0), ttl, max_bytes }
    }

    pub fn from_settings(settings: &GatewaySettings) -> Self {
        Self::new(settings.run_ttl(), settings.run_buffer_max_bytes())
    }

    /// Bytes the buffers hold now (an estimate).
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Acquire)
    }

    // A std Mutex is right here: it is never held across an await, and critical sections are
    // a few map operations.
    fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, run_id: &str) -> Result<Arc<RunBuffer>, RunError> {
        let mut runs = self.runs();
        let run =
            runs.by_id.get(run_id).cloned().ok_or_else(|| RunError::NotFound(run_id.into()))?;
        if self.is_expired(&run, Instant::now()) {
            self.remove(&mut runs, run_id);
            return Err(RunError::NotFound(run_id.into()));
        }
        Ok(run)
    }

    fn is_expired(&self, run: &RunBuffer, now: Instant) -> bool {
        run.state().ended.is_some_and(|ended| now >= ended + self.ttl)
    }

    fn remove(&self, runs: &mut Runs, run_id: &str) {
        if let Some(run) = runs.by_id.remove(run_id) {
            self.used_bytes.fetch_sub(run.state().bytes, Ordering::AcqRel);
        }
    }

    /// Drops expired runs, then evicts finished runs oldest-first while over the bound; both
    /// from the front of the queue of finished runs.
    fn make_room(&self, runs: &mut Runs) {
        let now = Instant::now();
        while let Some((ended, id)) = runs.finished.front() {
            let over_bound = self.used_bytes() >= self.max_bytes;
            if !over_bound && now < *ended + self.ttl {
                break;
            }
            let id = id.clone();
            runs.finished.pop_front();
            self.remove(runs, &id);
        }
    }
}

impl RunBuffer {
    fn state(&self) -> MutexGuard<'_, BufferState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self) -> RunInfo {
        let state = self.state();
        RunInfo {
            run_id: self.id.clone(),
            model: state.model.clone(),
            route: state.route.clone(),
            format: state.format.clone(),
            status: state.status,
            num_events: state.events.len() as u64,
            num_subscribers: self.subscribers.load(Ordering::Acquire),
            delivered: self.delivered.load(Ordering::Acquire),
            created_at: state.created_at,
            finished_at: state.finished_at,
        }
    }
}

fn event_bytes(event: &CanonicalEvent) -> usize {
    EVENT_OVERHEAD_BYTES
        + match event {
            CanonicalEvent::MessageStart { model } => model.len(),
            CanonicalEvent::TextDelta { text } | CanonicalEvent::ReasoningDelta { text } => {
                text.len()
            }
            CanonicalEvent::ToolCallStart { id, name, .. } => id.len() + name.len(),
            CanonicalEvent::ToolCallDelta { arguments, .. } => arguments.len(),
            CanonicalEvent::Error { error } => error.message.len(),
            CanonicalEvent::Usage { .. } | CanonicalEvent::Finish { .. } => 0,
        }
}

#[async_trait::async_trait]
impl RunStore for InMemoryRunStore {
    async fn create(&self, run_id: &str, new: NewRun<'_>) -> Result<CancellationToken, RunError> {
        let mut runs = self.runs();
        if runs.by_id.contains_key(run_id) {
            return Err(RunError::AlreadyExists(run_id.into()));
        }
        self.make_room(&mut runs);
        let used_bytes = self.used_bytes();
        if used_bytes >= self.max_bytes {
            return Err(RunError::Full { used_bytes, max_bytes: self.max_bytes });
        }
        let cancel = CancellationToken::new();
        let run = RunBuffer {
            id: run_id.into(),
            state: Mutex::new(BufferState {
                model: new.model.into(),
                route: None,
                format: new.format.map(str::to_owned),
                status: RunStatus::Running,
                events: Vec::new(),
                bytes: 0,
                created_at: Utc::now(),
                finished_at: None,
                ended: None,
            }),
            len_tx: watch::Sender::new(0),
            cancel: cancel.clone(),
            subscribers: AtomicUsize::new(0),
            delivered: AtomicBool::new(false),
            forget_at_end: new.forget_at_end,
        };
        runs.by_id.insert(run_id.into(), Arc::new(run));
        Ok(cancel)
    }

    async fn set_route(&self, run_id: &str, route: &str) -> Result<(), RunError> {
        self.get(run_id)?.state().route = Some(route.into());
        Ok(())
    }

    async fn append(&self, run_id: &str, event: CanonicalEvent) -> Result<u64, RunError> {
        let run = self.get(run_id)?;
        let bytes = event_bytes(&event);
        let seq = {
            let mut state = run.state();
            if state.status != RunStatus::Running {
                return Err(RunError::Ended(run_id.into()));
            }
            state.events.push(event);
            state.bytes += bytes;
            state.events.len() as u64 - 1
        };
        run.len_tx.send_replace(seq + 1);
        if self.used_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > self.max_bytes {
            self.make_room(&mut self.runs());
        }
        Ok(seq)
    }

    async fn finish(&self, run_id: &str, status: RunStatus) -> Result<RunInfo, RunError> {
        let run = self.get(run_id)?;
        let ended = Instant::now();
        let len = {
            let mut state = run.state();
            state.status = status;
            state.finished_at = Some(Utc::now());
            state.ended = Some(ended);
            state.events.len() as u64
        };
        let mut runs = self.runs();
        if run.forget_at_end {
            self.remove(&mut runs, run_id);
        } else {
            runs.finished.push_back((ended, run_id.to_owned()));
        }
        drop(runs);
        // Wakes subscribers waiting past the last event, so they see the end.
        run.len_tx.send_replace(len);
        Ok(run.info())
    }

    async fn subscribe(&self, run_id: &str, from: u64) -> Result<Subscription, RunError> {
        let run = self.get(run_id)?;
        let info = run.info();
        if info.status != RunStatus::Running && from > info.num_events {
            return Err(RunError::BadCursor {
                run_id: run_id.into(),
                from,
                num_events: info.num_events,
            });
        }
        Ok(subscription(run, from))
    }

    async fn status(&self, run_id: &str) -> Result<RunInfo, RunError> {
        Ok(self.get(run_id)?.info())
    }

    async fn cancel(&self, run_id: &str) -> Result<RunInfo, RunError> {
        let run = self.get(run_id)?;
        if run.state().status == RunStatus::Running {
            run.cancel.cancel();
        }
        Ok(run.info())
    }

    async fn cancel_running(&self) -> usize {
        let runs: Vec<Arc<RunBuffer>> = self.runs().by_id.values().cloned().collect();
        let running: Vec<_> =
            runs.iter().filter(|run| run.state().status == RunStatus::Running).collect();
        running.iter().for_each(|run| run.cancel.cancel());
        running.len()
    }
}

/// Counts a subscription while it lives, for abandonment detection.
struct SubscriberGuard(Arc<RunBuffer>);

impl SubscriberGuard {
    fn new(run: Arc<RunBuffer>) -> Self {
        run.subscribers.fetch_add(1, Ordering::AcqRel);
        Self(run)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Cursor {
    guard: SubscriberGuard,
    len_rx: watch::Receiver<u64>,
    next: u64,
    done: bool,
}

fn subscription(run: Arc<RunBuffer>, from: u64) -> Subscription {
    let cursor = Cursor {
        len_rx: run.len_tx.subscribe(),
        guard: SubscriberGuard::new(run),
        next: from,
        done: false,
    };
    futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if cursor.done {
                return None;
            }
            let run = &cursor.guard.0;
            let (event, ended) = {
                let state = run.state();
                (
                    state.events.get(cursor.next as usize).cloned(),
                    state.status != RunStatus::Running,
                )
            };
            if let Some(event) = event {
                let seq = cursor.next;
                cursor.next += 1;
                if event.is_terminal() {
                    cursor.done = true;
                    run.delivered.store(true, Ordering::Release);
                }
                return Some((RunEvent { seq, event }, cursor));
            }
            // An append between the read above and this wait has bumped the watch version,
            // so `changed` returns at once: no event is missed.
            if ended || cursor.len_rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::StopReason;

    fn text(t: &str) -> CanonicalEvent {
        CanonicalEvent::TextDelta { text: t.into() }
    }

    async fn collect(sub: Subscription) -> Vec<RunEvent> {
        sub.collect().await
    }

    #[tokio::test]
    async fn subscribers_replay_then_tail_live_events() {
        let store = Arc::new(InMemoryRunStore::new(Duration::from_secs(60), 1 << 20));
        store.create("r", NewRun::of("m")).await.unwrap();
        store.append("r", text("a")).await.unwrap();
        let early = store.subscribe("r", 0).await.unwrap();
        let late = store.subscribe("r", 1).await.unwrap();
        let producer = {
            let store = store.clone();
            tokio::spawn(async move {
                store.append("r", text("b")).await.unwrap();
                store
                    .append("r", CanonicalEvent::Finish { reason: StopReason::Stop })
                    .await
                    .unwrap();
                store.finish("r", RunStatus::Finished).await.unwrap();
            })
        };
        let early = collect(early).await;
        let late = collect(late).await;
        producer.await.unwrap();
        assert_eq!(early.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(late.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(late[0].event, text("b"));
        let info = store.status("r").await.unwrap();
        assert!(info.delivered);
        assert_eq!((info.num_subscribers, info.status), (0, RunStatus::Finished));
    }

    #[tokio::test]
    async fn finished_runs_refuse_events_and_bad_cursors() {
        let store = InMemoryRunStore::new(Duration::from_secs(60), 1 << 20);
        store.create("r", NewRun::of("m")).await.unwrap();
        store.finish("r", RunStatus::Failed).await.unwrap();
        assert_eq!(store.append("r", text("x")).await, Err(RunError::Ended("r".into())));
        assert!(matches!(store.subscribe("r", 5).await, Err(RunError::BadCursor { .. })));
        assert!(collect(store.subscribe("r", 0).await.unwrap()).await.is_empty());
        assert_eq!(store.status("nope").await, Err(RunError::NotFound("nope".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn finished_runs_expire_after_their_ttl() {
        let store = InMemoryRunStore::new(Duration::from_secs(600), 1 << 20);
        store.create("r", NewRun::of("m")).await.unwrap();
        store.append("r", text("a")).await.unwrap();
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert!(store.status("r").await.is_ok(), "running runs never expire");
        store.finish("r", RunStatus::Finished).await.unwrap();
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(store.subscribe("r", 0).await.is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.status("r").await, Err(RunError::NotFound("r".into())));
        assert_eq!(store.used_bytes(), 0);
    }

    #[tokio::test]
    async fn the_memory_bound_evicts_finished_runs_first_then_refuses() {
        let big = "x".repeat(1000);
        let store = InMemoryRunStore::new(Duration::from_secs(600), 2_500);
        for id in ["old", "new"] {
            store.create(id, NewRun::of("m")).await.unwrap();
            store.append(id, text(&big)).await.unwrap();
            store.finish(id, RunStatus::Finished).await.unwrap();
        }
        store.create("live", NewRun::of("m")).await.unwrap();
        store.append("live", text(&big)).await.unwrap();
        assert_eq!(store.status("old").await, Err(RunError::NotFound("old".into())));
        assert!(store.status("new").await.is_ok());
        store.append("live", text(&big)).await.unwrap();
        assert!(store.status("new").await.is_err(), "evicted to make room for the live run");
        store.append("live", text(&big)).await.unwrap();
        assert!(matches!(store.create("next", NewRun::of("m")).await, Err(RunError::Full { .. })));
        store.finish("live", RunStatus::Finished).await.unwrap();
        assert!(store.create("next", NewRun::of("m")).await.is_ok(), "finished runs make room");
    }

    #[tokio::test]
    async fn cancel_fires_the_token_of_a_running_run_only() {
        let store = InMemoryRunStore::new(Duration::from_secs(60), 1 << 20);
        let token = store.create("r", NewRun::of("m")).await.unwrap();
        store.cancel("r").await.unwrap();
        assert!(token.is_cancelled());
        let token = store.create("done", NewRun::of("m")).await.unwrap();
        store.finish("done", RunStatus::Finished).await.unwrap();
        store.cancel("done").await.unwrap();
        assert!(!token.is_cancelled());
    }

    #[tokio::test]
    async fn cancel_running_reaches_every_running_run_and_no_other() {
        let store = InMemoryRunStore::new(Duration::from_secs(60), 1 << 20);
        let running: Vec<_> = futures::future::join_all((0..3).map(|i| {
            let store = &store;
            async move { store.create(&format!("r{i}"), NewRun::of("m")).await.unwrap() }
        }))
        .await;
        let done = store.create("done", NewRun::of("m")).await.unwrap();
        store.finish("done", RunStatus::Finished).await.unwrap();
        assert_eq!(store.cancel_running().await, 3);
        assert!(running.iter().all(CancellationToken::is_cancelled) && !done.is_cancelled());
    }

    #[tokio::test]
    async fn a_run_keeps_the_format_it_was_opened_with() {
        let store = InMemoryRunStore::new(Duration::from_secs(60), 1 << 20);
        let format = "{\"format\":\"run\"}";
        store.create("r", NewRun { format: Some(format), ..NewRun::of("m") }).await.unwrap();
        assert_eq!(store.status("r").await.unwrap().format.as_deref(), Some(format));
    }

    #[tokio::test]
    async fn a_forgotten_run_is_dropped_at_its_end_but_its_reader_reads_it_all() {
        let store = InMemoryRunStore::new(Duration::from_secs(600), 1 << 20);
        store.create("r", NewRun { forget_at_end: true, ..NewRun::of("m") }).await.unwrap();
        let reader = store.subscribe("r", 0).await.unwrap();
        store.append("r", text("secret")).await.unwrap();
        store.finish("r", RunStatus::Finished).await.unwrap();
        assert_eq!(store.status("r").await, Err(RunError::NotFound("r".into())));
        assert!(matches!(store.subscribe("r", 0).await, Err(RunError::NotFound(_))));
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(collect(reader).await.len(), 1, "the attached reader still gets the answer");
    }
}
