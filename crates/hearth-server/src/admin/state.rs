//! The admin API's own state: its settings, the loader it installs packages with, and which
//! model names are busy with an operation. Kept apart from the handlers so the server's shared
//! state can hold it without depending on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hearth_gateway::{EmbeddingModel, LocalModel, PythonModel};
use hearth_package::archive::ArchiveLimits;

use super::error::AdminError;

/// How the admin API is set up.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Bearer token every admin call must carry; `None` restricts the API to loopback clients.
    pub token: Option<String>,
    /// Where pushed packages are installed; `None` (a daemon serving `--model` directories)
    /// refuses pushes.
    pub models_dir: Option<PathBuf>,
    pub limits: ArchiveLimits,
}

/// A package loaded into an engine, ready to be served.
pub enum LoadedModel {
    Generative(LocalModel),
    Embedding(EmbeddingModel),
    /// A package served by its own Python predictor; its setup already succeeded.
    Python(PythonModel),
}

/// Loads a package the way the daemon does at start-up: fetches `hf://` weights, validates it
/// completely and starts its engine. It blocks; the admin API calls it on a blocking thread.
pub trait ModelLoader: Send + Sync + 'static {
    /// The package's name and its loaded model, or why it was refused. `step` is told each
    /// step of a long load as it begins ("installing ...", "running setup()"), in words for
    /// the person pushing.
    fn load(&self, dir: &Path, step: &dyn Fn(&str)) -> Result<(String, LoadedModel), String>;
}

/// Steps kept per operation (the latest); an installer's output alone can run to hundreds.
const KEPT_STEPS: usize = 200;

/// What a busy name is doing: its phase and the latest steps of its load.
#[derive(Debug, Clone)]
pub(crate) struct Busy {
    pub(crate) phase: Phase,
    pub(crate) steps: Steps,
}

/// The latest steps of a load, and how many there were in all: a client that has shown the
/// first `n` shows those numbered `n` and after.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Steps {
    pub(crate) total: usize,
    pub(crate) latest: std::collections::VecDeque<String>,
}

impl Steps {
    fn push(&mut self, step: &str) {
        if self.latest.len() == KEPT_STEPS {
            self.latest.pop_front();
        }
        self.latest.push_back(step.to_owned());
        self.total += 1;
    }
}

/// What a name is busy with; one operation per name at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Receiving,
    Loading,
    Removing,
    AddingAdapter,
    RemovingAdapter,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Receiving => "receiving",
            Phase::Loading => "loading",
            Phase::Removing => "removing",
            Phase::AddingAdapter => "adding an adapter",
            Phase::RemovingAdapter => "removing an adapter",
        }
    }
}

/// The admin API's own state, shared by its handlers.
pub struct AdminState {
    pub(crate) settings: AdminSettings,
    pub(crate) loader: Arc<dyn ModelLoader>,
    busy: Mutex<BTreeMap<String, Busy>>,
}

impl AdminState {
    pub fn new(settings: AdminSettings, loader: Arc<dyn ModelLoader>) -> Self {
        Self { settings, loader, busy: Mutex::new(BTreeMap::new()) }
    }

    fn busy(&self) -> MutexGuard<'_, BTreeMap<String, Busy>> {
        // The map holds plain values; a panic elsewhere cannot leave it inconsistent.
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `name` busy until the guard drops; 409 when another operation holds it.
    pub(crate) fn claim(
        self: &Arc<Self>,
        name: &str,
        phase: Phase,
    ) -> Result<BusyGuard, AdminError> {
        let mut busy = self.busy();
        if let Some(current) = busy.get(name) {
            return Err(AdminError::Conflict(format!(
                "model `{name}` is busy ({}); try again when that finishes",
                current.phase.as_str()
            )));
        }
        busy.insert(name.to_owned(), Busy { phase, steps: Steps::default() });
        Ok(BusyGuard { admin: self.clone(), name: name.to_owned() })
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, Busy> {
        self.busy().clone()
    }

    pub(crate) fn models_dir(&self) -> Result<&Path, AdminError> {
        self.settings.models_dir.as_deref().ok_or_else(|| {
            AdminError::Conflict(
                "this daemon serves --model directories, not a models directory, so it has \
                 nowhere to install a package; start it with --models DIR"
                    .into(),
            )
        })
    }
}

/// Holds a name busy; frees it when dropped, whatever path the operation took.
pub(crate) struct BusyGuard {
    admin: Arc<AdminState>,
    name: String,
}

impl BusyGuard {
    pub(crate) fn set(&self, phase: Phase) {
        if let Some(busy) = self.admin.busy().get_mut(&self.name) {
            busy.phase = phase;
        }
    }

    /// A sink for the steps of this operation, for the loader's blocking thread.
    pub(crate) fn step_sink(&self) -> impl Fn(&str) + Send + 'static {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        move |step: &str| {
            if let Some(busy) = admin.busy().get_mut(&name) {
                busy.steps.push(step);
            }
        }
    }

    /// The steps reported so far.
    pub(crate) fn steps(&self) -> Steps {
        self.admin.busy().get(&self.name).map(|busy| busy.steps.clone()).unwrap_or_default()
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.admin.busy().remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_the_latest_and_count_them_all() {
        let mut steps = Steps::default();
        for n in 0..KEPT_STEPS + 5 {
            steps.push(&format!("step {n}"));
        }
        assert_eq!(steps.total, KEPT_STEPS + 5);
        assert_eq!(steps.latest.len(), KEPT_STEPS);
        assert_eq!(steps.latest.front().map(String::as_str), Some("step 5"));
        assert_eq!(
            steps.latest.back().map(String::as_str),
            Some(format!("step {}", KEPT_STEPS + 4).as_str())
        );
    }
}
