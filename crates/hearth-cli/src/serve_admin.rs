//! The admin API's part of `hearth serve`: its settings (`[admin]` in hearth.toml, with
//! `HEARTH_ADMIN_TOKEN` taking precedence), the loader it calls for pushed packages (the same
//! code that loads packages at start-up), and the staging clean-up before loading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hearth_engine::EngineConfig;
use hearth_package::archive::ArchiveLimits;
use hearth_server::{AdminSettings, AdminState, AppState, LoadedModel, ModelLoader};
use serde::Deserialize;

use crate::load::{load_one, Loaded, SetupWait};

/// `[admin]` in hearth.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Bearer token for the admin API (`HEARTH_ADMIN_TOKEN` wins). Without one, only clients
    /// on this machine may push or remove models.
    pub token: Option<String>,
    /// Largest upload (the tar stream), in MiB; default 65536.
    pub max_archive_mb: Option<u64>,
    /// Largest file in an upload, in MiB; default `max_archive_mb`.
    pub max_file_mb: Option<u64>,
    /// Most entries (files and directories) in an upload; default 10000.
    pub max_entries: Option<usize>,
}

impl AdminSection {
    fn limits(&self) -> ArchiveLimits {
        let defaults = ArchiveLimits::default();
        let mib = |mb: u64| mb.saturating_mul(1 << 20);
        let max_archive_bytes = self.max_archive_mb.map_or(defaults.max_archive_bytes, mib);
        ArchiveLimits {
            max_archive_bytes,
            max_entry_bytes: self.max_file_mb.map_or(max_archive_bytes, mib),
            max_entries: self.max_entries.unwrap_or(defaults.max_entries),
        }
    }

    fn token(&self) -> Option<String> {
        let from_env = std::env::var("HEARTH_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
        from_env.or_else(|| self.token.clone().filter(|t| !t.trim().is_empty()))
    }
}

/// Removes what an earlier daemon left half-done in the models directory's staging area.
pub fn clean(models_dir: Option<&Path>) -> anyhow::Result<()> {
    match models_dir {
        Some(dir) => hearth_server::clean_staging(dir)
            .with_context(|| format!("cleaning the staging area of {}", dir.display())),
        None => Ok(()),
    }
}

/// What the admin API needs from `hearth serve`.
pub struct AdminWiring {
    pub section: AdminSection,
    /// Where pushed packages go; `None` when serving `--model` directories.
    pub models_dir: Option<PathBuf>,
    pub engine: EngineConfig,
    pub device: String,
}

impl AdminWiring {
    /// Turns the admin API on for `state`.
    pub fn enable(self, state: &AppState) {
        let token = self.section.token();
        if token.is_none() {
            tracing::warn!(
                "no admin token configured; the admin API answers loopback clients only"
            );
        }
        let settings =
            AdminSettings { token, models_dir: self.models_dir, limits: self.section.limits() };
        let loader = CliLoader { engine: self.engine, device: self.device };
        state.enable_admin(AdminState::new(settings, Arc::new(loader)));
    }
}

/// Loads pushed packages exactly as start-up does.
struct CliLoader {
    engine: EngineConfig,
    device: String,
}

impl ModelLoader for CliLoader {
    fn load(&self, dir: &Path, step: &dyn Fn(&str)) -> Result<(String, LoadedModel), String> {
        match load_one(dir, &self.engine, &self.device, SetupWait::Finish, step) {
            Ok((name, Loaded::Generative(model))) => Ok((name, LoadedModel::Generative(model))),
            Ok((name, Loaded::Embedding(model))) => Ok((name, LoadedModel::Embedding(model))),
            Ok((name, Loaded::Python(model))) => Ok((name, LoadedModel::Python(model))),
            Err(err) => Err(format!("{err:#}")),
        }
    }
}
