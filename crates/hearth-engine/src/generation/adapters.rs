//! The LoRA adapters an engine serves: declared by name (in the package's `hearth.yaml`, or
//! registered while it runs, as a pushed adapter is), read from disk on first use, and dropped least recently used
//! first when the loaded ones would take more than their memory bound. A request holds its
//! adapter for as long as it runs, so dropping one never disturbs a running sequence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use hearth_package::Package;

use crate::generation::handle::Engine;
use crate::models::llama::lora::{AdapterError, LoraAdapter};
use crate::models::llama::LlamaConfig;

/// What the adapter cache has done since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterStats {
    pub declared: usize,
    pub loaded: usize,
    pub loaded_bytes: usize,
    pub loads: u64,
    pub evictions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterLookupError {
    #[error("no adapter `{name}` on this model (adapters: {known})")]
    Unknown { name: String, known: String },
    /// Only adapters registered while the engine runs may be replaced or removed that way; the
    /// package's own change with the package.
    #[error(
        "adapter `{name}` is declared in the package's hearth.yaml; push a new version of the \
         package to change it, or give this adapter another name"
    )]
    Packaged { name: String },
    #[error(transparent)]
    Load(#[from] AdapterError),
}

pub struct AdapterRegistry {
    cfg: LlamaConfig,
    dtype: DType,
    device: Device,
    max_bytes: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each declared name's directory, and the declaration's number: a load that finds the
    /// number changed when it ends (the adapter was replaced or removed meanwhile) is not kept.
    declared: HashMap<String, (PathBuf, u64)>,
    declarations: u64,
    /// The names `hearth.yaml` declares.
    packaged: std::collections::HashSet<String>,
    /// Loaded adapters, least recently used first.
    loaded: Vec<Arc<LoraAdapter>>,
    loads: u64,
    evictions: u64,
}

impl State {
    /// The error for a name that is not declared, listing those that are.
    fn unknown(&self, name: &str) -> AdapterLookupError {
        let mut names: Vec<&str> = self.declared.keys().map(String::as_str).collect();
        names.sort_unstable();
        let known = if names.is_empty() { "none".into() } else { names.join(", ") };
        AdapterLookupError::Unknown { name: name.into(), known }
    }
}

/// Loaded adapters' memory bound when `hearth.yaml` sets no `adapter_cache_mb`.
const DEFAULT_CACHE_MB: usize = 256;

impl AdapterRegistry {
    pub fn new(cfg: LlamaConfig, dtype: DType, device: Device, max_bytes: usize) -> Self {
        Self { cfg, dtype, device, max_bytes, state: Mutex::default() }
    }

    /// The adapters `package`'s `hearth.yaml` declares, each directory checked to hold an
    /// adapter (its tensors are read on first use).
    pub fn for_package(
        package: &Package,
        cfg: &LlamaConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, String> {
        let settings = &package.settings;
        let max_bytes = settings.adapter_cache_mb.unwrap_or(DEFAULT_CACHE_MB) << 20;
        let registry = Self::new(cfg.clone(), dtype, device.clone(), max_bytes);
        for entry in &settings.adapters {
            let dir = entry.dir_in(&package.dir);
            if !dir.join("adapter_config.json").is_file() {
                let fetched = entry.source.as_deref().map(|s| format!(" (fetched from {s})"));
                return Err(format!(
                    "hearth.yaml: adapter `{}`: {}{} has no adapter_config.json",
                    entry.name,
                    dir.display(),
                    fetched.unwrap_or_default()
                ));
            }
            registry.declare(&entry.name, dir);
            registry.state().packaged.insert(entry.name.clone());
        }
        Ok(registry)
    }

    /// Reads the adapter in `dir` once, to refuse one that does not fit before it is declared,
    /// or one that would replace an adapter of the package.
    pub fn check(&self, name: &str, dir: &std::path::Path) -> Result<(), AdapterLookupError> {
        self.refuse_packaged(name)?;
        LoraAdapter::load(dir, name, &self.cfg, self.dtype, &self.device)?;
        Ok(())
    }

    fn refuse_packaged(&self, name: &str) -> Result<(), AdapterLookupError> {
        match self.state().packaged.contains(name) {
            true => Err(AdapterLookupError::Packaged { name: name.into() }),
            false => Ok(()),
        }
    }

    /// Stops serving the registered adapter `name`; requests running with it finish with it.
    pub fn forget(&self, name: &str) -> Result<(), AdapterLookupError> {
        self.refuse_packaged(name)?;
        let mut state = self.state();
        if state.declared.remove(name).is_none() {
            return Err(state.unknown(name));
        }
        state.loaded.retain(|a| a.name() != name);
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares `name` as the adapter in `dir`, replacing an earlier one of that name (its
    /// loaded copy is dropped; running requests keep theirs).
    pub fn declare(&self, name: &str, dir: PathBuf) {
        let mut state = self.state();
        state.loaded.retain(|a| a.name() != name);
        state.declarations += 1;
        let number = state.declarations;
        state.declared.insert(name.to_string(), (dir, number));
    }

    /// Declared names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state().declared.keys().cloned().collect();
        names.sort();
        names
    }

    /// The adapter `name`, loading it (and evicting others past the bound) if it is not loaded.
    pub fn get(&self, name: &str) -> Result<Arc<LoraAdapter>, AdapterLookupError> {
        loop {
            let (dir, number) = {
                let mut state = self.state();
                if let Some(at) = state.loaded.iter().position(|a| a.name() == name) {
                    let adapter = state.loaded.remove(at);
                    state.loaded.push(adapter.clone());
                    return Ok(adapter);
                }
                match state.declared.get(name) {
                    Some(declared) => declared.clone(),
                    None => return Err(state.unknown(name)),
                }
            };
            // Read outside the lock: other requests' adapters stay available meanwhile.
            let read = LoraAdapter::load(&dir, name, &self.cfg, self.dtype, &self.device);
            let mut state = self.state();
            // Replaced (or removed) while it was read: what was read may be the old files, a
            // mix of old and new, or nothing; read the current declaration instead.
            if state.declared.get(name).map(|d| d.1) != Some(number) {
                continue;
            }
            return Ok(self.keep(&mut state, Arc::new(read?)));
        }
    }

    /// Caches a freshly read adapter, evicting the least recently used past the bound.
    fn keep(&self, state: &mut State, adapter: Arc<LoraAdapter>) -> Arc<LoraAdapter> {
        tracing::info!(adapter = adapter.name(), bytes = adapter.bytes(), "LoRA adapter loaded");
        state.loads += 1;
        state.loaded.retain(|a| a.name() != adapter.name());
        state.loaded.push(adapter.clone());
        while state.loaded.len() > 1
            && state.loaded.iter().map(|a| a.bytes()).sum::<usize>() > self.max_bytes
        {
            let evicted = state.loaded.remove(0);
            state.evictions += 1;
            tracing::info!(adapter = evicted.name(), "LoRA adapter evicted (least recently used)");
        }
        adapter
    }

    pub fn stats(&self) -> AdapterStats {
        let state = self.state();
        AdapterStats {
            declared: state.declared.len(),
            loaded: state.loaded.len(),
            loaded_bytes: state.loaded.iter().map(|a| a.bytes()).sum(),
            loads: state.loads,
            evictions: state.evictions,
        }
    }
}

/// The adapter side of an engine's handle.
impl Engine {
    /// The LoRA adapters this model serves, by name.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters().names()
    }

    pub fn adapter_stats(&self) -> AdapterStats {
        self.adapters().stats()
    }

    /// Serves the adapter in `dir` as `name` from now on (replacing one registered under that
    /// name), after reading it once to check that it fits this model. The package's own
    /// adapters (`hearth.yaml`) are not replaced this way.
    pub fn register_adapter(&self, name: &str, dir: PathBuf) -> Result<(), AdapterLookupError> {
        self.check_adapter(name, &dir)?;
        self.adapters().declare(name, dir);
        Ok(())
    }

    /// What [`Engine::register_adapter`] would refuse, without registering anything.
    pub fn check_adapter(&self, name: &str, dir: &Path) -> Result<(), AdapterLookupError> {
        self.adapters().check(name, dir)
    }

    /// [`Engine::register_adapter`] without reading the files again, for files
    /// [`Engine::check_adapter`] accepted (moved since, as a pushed adapter is).
    pub fn declare_adapter(&self, name: &str, dir: PathBuf) {
        self.adapters().declare(name, dir);
    }

    /// Stops serving an adapter registered with [`Engine::register_adapter`]; requests already
    /// running with it finish with it.
    pub fn remove_adapter(&self, name: &str) -> Result<(), AdapterLookupError> {
        self.adapters().forget(name)
    }
}
