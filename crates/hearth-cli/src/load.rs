//! Loading packages into engines at start-up, with a progress bar per package. A generative
//! package gets an [`Engine`], an embedding (encoder) package an [`Embedder`], and a package
//! whose Cog predictor runs in Python gets its environment and a worker. A package that fails
//! is recorded with its reason and the others still load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use hearth_engine::{Embedder, EmbedderConfig, Engine, EngineConfig, KvCacheSize};
use hearth_gateway::{Catalog, EmbeddingModel, LocalModel, PythonModel, WorkerStatus};
use hearth_package::{CogConfig, ModelKind, Package, PackageSettings};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{choose_device, choose_dtype};

/// Loads every package in `dirs` into `catalog`. Python predictors' setups go on in the
/// background (`/health-check` says STARTING meanwhile), as in Cog.
pub fn load_all(dirs: &[PathBuf], base: &EngineConfig, device_arg: &str, catalog: &mut Catalog) {
    for dir in dirs {
        let name = fallback_name(dir);
        // Each step is logged where it happens; nobody else is waiting on them at start-up.
        match load_one(dir, base, device_arg, SetupWait::Background, &|_| {}) {
            Ok((name, Loaded::Generative(model))) => catalog.insert_ready(name, model),
            Ok((name, Loaded::Embedding(model))) => catalog.insert_embedder(name, model),
            Ok((name, Loaded::Python(model))) => catalog.insert_python(name, model),
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::error!(package = %name, %reason, "package refused; serving the others");
                catalog.insert_failed(name, reason);
            }
        }
    }
}

/// A package, loaded.
pub(crate) enum Loaded {
    Generative(LocalModel),
    Embedding(EmbeddingModel),
    Python(PythonModel),
}

/// Whether loading a Python package waits for its `setup()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetupWait {
    /// Start-up: serve the other packages meanwhile.
    Background,
    /// A push: a package whose setup fails is refused, and the one it would replace stays.
    Finish,
}

/// Loads one package; `step` is told each long step as it begins (a push shows them).
pub(crate) fn load_one(
    dir: &Path,
    base: &EngineConfig,
    device_arg: &str,
    wait: SetupWait,
    step: &dyn Fn(&str),
) -> anyhow::Result<(String, Loaded)> {
    let started = Instant::now();
    let package = if dir.is_file() {
        // A GGUF file on its own (`hearth serve ./model.gguf`).
        Package::load_gguf_file(dir)?
    } else {
        // First: fetched weights may bring the config.json that says the package is native.
        crate::weights::fetch_hf_weights(dir)?;
        // A directory with one .gguf needs no cog.yaml; `Package::load` names what is missing.
        let cog = match dir.join("cog.yaml").is_file() {
            true => CogConfig::load(dir)?,
            false => CogConfig::default(),
        };
        let settings = PackageSettings::load(dir)?;
        if hearth_package::runs_in_python(dir, &cog, &settings) {
            let name = hearth_package::name_of(dir, &cog, &settings)?;
            let model = load_python(&name, dir, cog, settings, wait, step)?;
            return Ok((name, Loaded::Python(model)));
        }
        Package::load(dir)?
    };
    let device = choose_device(device_arg, package.cog.build.gpu)?;
    step(&format!("loading the weights on {}", device_name(&device)));
    if package.model.kind() == ModelKind::Embedding {
        let model = load_embedder(&package, &device, started)?;
        return Ok((package.name, Loaded::Embedding(model)));
    }
    let mut config = base.clone();
    config.dtype = choose_dtype(&device, package.settings.dtype);
    if let Some(mb) = package.settings.kv_cache_mb {
        config.kv_cache = KvCacheSize::Bytes(mb << 20);
    }
    let config_dtype = config.dtype;
    let bar = progress_bar(&package.name);
    let engine = Engine::start(&package, config, &device, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let info = engine.info();
    tracing::info!(
        model = %info.name,
        architecture = %info.architecture,
        device = device_name(&device),
        dtype = ?config_dtype,
        context_length = info.context_length,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model ready"
    );
    let model = LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() };
    Ok((package.name, Loaded::Generative(model)))
}

fn load_python(
    name: &str,
    dir: &Path,
    cog: CogConfig,
    settings: PackageSettings,
    wait: SetupWait,
    step: &dyn Fn(&str),
) -> anyhow::Result<PythonModel> {
    let cache = python_env_cache();
    let progress = |what: &str| {
        tracing::info!(model = %name, "{what}");
        step(what);
    };
    let timeout = settings.setup_timeout_s.map(std::time::Duration::from_secs);
    let worker = hearth_python::start(name, dir, &cog, &cache, timeout, &progress)?;
    tracing::info!(model = %name, slots = worker.slots(), "Python predictor starting");
    if wait == SetupWait::Finish {
        step("running the predictor's setup()");
        let status = tokio::runtime::Handle::current().block_on(worker.wait_ready());
        if let WorkerStatus::SetupFailed { error } = status {
            let logs = worker.setup_report().logs;
            let tail: Vec<&str> = logs.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("setup() failed: {error}\n{}", tail.join("\n"));
        }
    }
    Ok(PythonModel { worker, cog, settings })
}

/// Where Python environments are kept: `$HEARTH_CACHE_DIR/python`, else
/// `$XDG_CACHE_HOME/hearth/python`, else `~/.cache/hearth/python`.
fn python_env_cache() -> PathBuf {
    let base = std::env::var_os("HEARTH_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache")
        });
        cache.join("hearth")
    });
    base.join("python")
}

fn load_embedder(
    package: &Package,
    device: &Device,
    started: Instant,
) -> anyhow::Result<EmbeddingModel> {
    // Encoders are small: f32 unless the package's hearth.yaml asks for less.
    let dtype = match package.settings.dtype {
        Some(hearth_package::DType::F16) => DType::F16,
        Some(hearth_package::DType::Bf16) => DType::BF16,
        Some(hearth_package::DType::F32) | None => DType::F32,
    };
    let config = EmbedderConfig { dtype, ..EmbedderConfig::default() };
    let bar = progress_bar(&package.name);
    let embedder = Embedder::start(package, config, device, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let info = embedder.info();
    tracing::info!(
        model = %info.name,
        architecture = %info.architecture,
        device = device_name(device),
        dimension = info.dimension,
        max_input_tokens = info.max_input_tokens,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "embedding model ready"
    );
    Ok(EmbeddingModel { embedder, cog: package.cog.clone(), settings: package.settings.clone() })
}

fn progress_bar(name: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{prefix} loading weights [{bar:30}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(name.to_string());
    bar
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

fn fallback_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}
