//! Every Cog prediction this server knows, so that a repeated `PUT` finds the first one and a
//! cancel finds the running one. Finished predictions are kept up to a bound, oldest dropped first;
//! one whose request asked that nothing be kept (`x-hearth-collect-log: false`) is replaced, as
//! soon as it is seen finished, by a copy without its content (`Prediction::without_content`):
//! a repeated `PUT` still finds it, and nothing of its input or output can be read back. Whoever
//! already holds the entry (the caller being answered) keeps the whole prediction.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::prediction::Prediction;

/// One prediction's shared state. Its lock is a std `Mutex`: every critical section is a short
/// copy or update and never spans an `.await`.
pub(crate) struct PredictionEntry {
    prediction: Mutex<Prediction>,
    cancel: CancellationToken,
    /// Ticks after every update, for readers that follow a prediction.
    changed: watch::Sender<()>,
}

impl PredictionEntry {
    fn new(prediction: Prediction, cancel: CancellationToken) -> Self {
        Self { prediction: Mutex::new(prediction), cancel, changed: watch::Sender::new(()) }
    }

    fn lock(&self) -> MutexGuard<'_, Prediction> {
        // A panic while holding this lock cannot leave a prediction half-written in a way that
        // matters more than losing the daemon, so keep serving with the data as it is.
        self.prediction.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn snapshot(&self) -> Prediction {
        self.lock().clone()
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Prediction) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.send_replace(());
        result
    }

    pub(crate) fn is_terminal(&self) -> bool {
        self.lock().status.is_terminal()
    }

    /// Fires when the prediction should stop: cancelled by a client or by server shutdown.
    pub(crate) fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

/// Whether [`Registry::claim`] created the prediction or found one with the same id.
pub(crate) enum Claim {
    New(Arc<PredictionEntry>),
    Existing(Arc<PredictionEntry>),
}

type Key = (String, String);

pub(crate) struct Registry {
    inner: Mutex<Entries>,
    max_retained: usize,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<Key, Arc<PredictionEntry>>,
    /// Insertion order, for eviction.
    order: VecDeque<Key>,
    /// The predictions not to be kept once finished, until their content is dropped.
    unkept: Vec<Key>,
}

impl Registry {
    pub(crate) fn new(max_retained: usize) -> Self {
        Self { inner: Mutex::new(Entries::default()), max_retained: max_retained.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, model: &str, id: &str) -> Option<Arc<PredictionEntry>> {
        let mut entries = self.lock();
        entries.drop_finished_unkept();
        entries.by_key.get(&(model.to_owned(), id.to_owned())).cloned()
    }

    /// Registers `prediction` unless one with its id exists for `model`; checking and inserting
    /// under one lock is what makes a repeated `PUT` run the prediction once.
    /// `keep` false: drop its content as soon as it is seen finished.
    pub(crate) fn claim(
        &self,
        model: &str,
        prediction: Prediction,
        cancel: CancellationToken,
        keep: bool,
    ) -> Claim {
        let key = (model.to_owned(), prediction.id.clone());
        let mut entries = self.lock();
        entries.drop_finished_unkept();
        if let Some(existing) = entries.by_key.get(&key) {
            return Claim::Existing(existing.clone());
        }
        let entry = Arc::new(PredictionEntry::new(prediction, cancel));
        entries.by_key.insert(key.clone(), entry.clone());
        if !keep {
            entries.unkept.push(key.clone());
        }
        entries.order.push_back(key);
        entries.evict(self.max_retained);
        Claim::New(entry)
    }

    /// Drops a prediction that never started (the engine refused it), so its id can be reused.
    pub(crate) fn forget(&self, model: &str, id: &str) {
        let key = (model.to_owned(), id.to_owned());
        let mut entries = self.lock();
        entries.by_key.remove(&key);
        entries.order.retain(|k| k != &key);
    }
}

impl Entries {
    fn drop_finished_unkept(&mut self) {
        let Entries { by_key, unkept, .. } = self;
        unkept.retain(|key| match by_key.get(key) {
            Some(entry) if !entry.is_terminal() => true,
            Some(entry) => {
                // A new entry, so that the holders of the old one keep what they are sending.
                let kept = entry.snapshot().without_content();
                let kept = Arc::new(PredictionEntry::new(kept, CancellationToken::new()));
                by_key.insert(key.clone(), kept);
                false
            }
            None => false,
        });
    }

    /// Drops the oldest finished predictions while there are too many. Running ones are kept
    /// whatever their age: they can still be cancelled.
    fn evict(&mut self, max_retained: usize) {
        let mut budget = self.order.len();
        while self.by_key.len() > max_retained && budget > 0 {
            budget -= 1;
            let Some(key) = self.order.pop_front() else { break };
            match self.by_key.get(&key) {
                Some(entry) if !entry.is_terminal() => self.order.push_back(key),
                _ => {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cog::prediction::Status;

    fn claim(registry: &Registry, id: &str) -> Arc<PredictionEntry> {
        let prediction = Prediction::new(id.to_owned(), json!({}));
        match registry.claim("m", prediction, CancellationToken::new(), true) {
            Claim::New(entry) => entry,
            Claim::Existing(_) => panic!("{id} already existed"),
        }
    }

    #[test]
    fn same_id_is_claimed_once() {
        let registry = Registry::new(8);
        claim(&registry, "a");
        let again = registry.claim(
            "m",
            Prediction::new("a".into(), json!({})),
            CancellationToken::new(),
            true,
        );
        assert!(matches!(again, Claim::Existing(_)));
        registry.forget("m", "a");
        claim(&registry, "a");
    }

    #[test]
    fn evicts_only_finished_predictions() {
        let registry = Registry::new(2);
        let running = claim(&registry, "running");
        let done = claim(&registry, "done");
        done.update(|p| p.status = Status::Succeeded);
        claim(&registry, "new");
        assert!(registry.get("m", "running").is_some());
        assert!(registry.get("m", "done").is_none());
        assert!(!running.is_terminal());
    }

    #[test]
    fn an_unkept_prediction_loses_its_content_once_finished_but_keeps_its_id() {
        let registry = Registry::new(8);
        let prediction = Prediction::new("secret".into(), json!({"prompt": "private"}));
        let Claim::New(entry) = registry.claim("m", prediction, CancellationToken::new(), false)
        else {
            panic!("a new id")
        };
        assert_eq!(registry.get("m", "secret").unwrap().snapshot().input["prompt"], "private");
        entry.update(|p| {
            p.status = Status::Succeeded;
            p.output = Some(json!("also private"));
        });
        let kept = registry.get("m", "secret").expect("the id is still known").snapshot();
        assert_eq!(kept.status, Status::Succeeded);
        assert!(kept.output.is_none() && kept.input == json!({}), "{kept:?}");
        let again = Prediction::new("secret".into(), json!({}));
        assert!(matches!(
            registry.claim("m", again, CancellationToken::new(), true),
            Claim::Existing(_)
        ));
        assert_eq!(entry.snapshot().output, Some(json!("also private")), "its holder keeps it");
    }
}
