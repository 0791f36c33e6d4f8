//! The runs this daemon is producing now, for the admin API's live view (`GET /admin/runs`):
//! each producer registers its run when it starts and its entry goes when the producer ends,
//! however it ends. With replicas, each daemon lists the runs it produces.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use hearth_protocol::CanonicalEvent;
use serde::Serialize;

use crate::ledger::CallerMetadata;

/// One run being produced.
#[derive(Debug)]
pub(crate) struct LiveRun {
    run_id: String,
    model: String,
    metadata: CallerMetadata,
    started_at: DateTime<Utc>,
    route: OnceLock<String>,
    /// Content deltas so far, until the answer's own usage count replaces them.
    output_tokens: AtomicU64,
}

impl LiveRun {
    pub(crate) fn set_route(&self, route: &str) {
        let _ = self.route.set(route.to_owned());
    }

    /// Counts what an event tells of the answer's length: a text delta is about one token, and
    /// a usage report is exact.
    pub(crate) fn observe(&self, event: &CanonicalEvent) {
        match event {
            CanonicalEvent::Usage { usage } => {
                self.output_tokens.store(usage.output_tokens, Ordering::Relaxed)
            }
            CanonicalEvent::TextDelta { .. }
            | CanonicalEvent::ReasoningDelta { .. }
            | CanonicalEvent::ToolCallDelta { .. } => {
                self.output_tokens.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// A live run as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRunView {
    pub run_id: String,
    pub model: String,
    pub route: Option<String>,
    pub output_tokens: u64,
    pub started_at: DateTime<Utc>,
    pub age_ms: u64,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Default)]
pub(crate) struct LiveRuns {
    runs: Mutex<HashMap<String, Arc<LiveRun>>>,
}

/// Keeps a run listed while it lives; dropping it (the producer ended) unlists the run.
pub(crate) struct Listed<'a> {
    runs: &'a LiveRuns,
    pub run: Arc<LiveRun>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.runs.lock().remove(&self.run.run_id);
    }
}

impl LiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveRun>>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn list(&self, run_id: &str, model: &str, metadata: &CallerMetadata) -> Listed<'_> {
        let run = Arc::new(LiveRun {
            run_id: run_id.to_owned(),
            model: model.to_owned(),
            metadata: metadata.clone(),
            started_at: Utc::now(),
            route: OnceLock::new(),
            output_tokens: AtomicU64::new(0),
        });
        self.lock().insert(run_id.to_owned(), run.clone());
        Listed { runs: self, run }
    }

    /// The runs being produced, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<LiveRunView> {
        let now = Utc::now();
        let mut views: Vec<LiveRunView> = self
            .lock()
            .values()
            .map(|run| LiveRunView {
                run_id: run.run_id.clone(),
                model: run.model.clone(),
                route: run.route.get().cloned(),
                output_tokens: run.output_tokens.load(Ordering::Relaxed),
                started_at: run.started_at,
                age_ms: (now - run.started_at).num_milliseconds().max(0) as u64,
                metadata: serde_json::to_value(&run.metadata).unwrap_or_default(),
            })
            .collect();
        views.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::TokenUsage;
    use serde_json::json;

    #[test]
    fn a_run_is_listed_while_its_guard_lives_and_counts_its_answer() {
        let runs = LiveRuns::default();
        let metadata = CallerMetadata::from_json(&json!({"team": "red"})).unwrap();
        let listed = runs.list("r1", "m", &metadata);
        listed.run.set_route("p/m");
        for text in ["a", "b", "c"] {
            listed.run.observe(&CanonicalEvent::TextDelta { text: text.into() });
        }
        let view = &runs.snapshot()[0];
        assert_eq!((view.run_id.as_str(), view.route.as_deref()), ("r1", Some("p/m")));
        assert_eq!(view.output_tokens, 3);
        assert_eq!(view.metadata, json!({"team": "red"}));
        let usage = TokenUsage { output_tokens: 7, ..TokenUsage::default() };
        listed.run.observe(&CanonicalEvent::Usage { usage });
        assert_eq!(runs.snapshot()[0].output_tokens, 7, "the answer's own count wins");
        drop(listed);
        assert!(runs.snapshot().is_empty());
    }
}
