//! Loading packages into engines at start-up, with a progress bar per package. A generative
//! package gets an [`Engine`], an embedding (encoder) package an [`Embedder`]. A package that
//! fails is recorded with its reason and the others still load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use hearth_engine::{Embedder, EmbedderConfig, Engine, EngineConfig};
use hearth_gateway::{Catalog, EmbeddingModel, LocalModel};
use hearth_package::{ModelKind, Package};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{choose_device, choose_dtype};

/// Loads every package in `dirs` into `catalog`.
pub fn load_all(dirs: &[PathBuf], base: &EngineConfig, device_arg: &str, catalog: &mut Catalog) {
    for dir in dirs {
        let name = fallback_name(dir);
        match load_one(dir, base, device_arg) {
            Ok((name, Loaded::Generative(model))) => catalog.insert_ready(name, model),
            Ok((name, Loaded::Embedding(model))) => catalog.insert_embedder(name, model),
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
}

pub(crate) fn load_one(
    dir: &Path,
    base: &EngineConfig,
    device_arg: &str,
) -> anyhow::Result<(String, Loaded)> {
    let started = Instant::now();
    crate::weights::fetch_hf_weights(dir)?;
    let package = Package::load(dir)?;
    let device = choose_device(device_arg, package.cog.build.gpu)?;
    if package.model.kind() == ModelKind::Embedding {
        let model = load_embedder(&package, &device, started)?;
        return Ok((package.name, Loaded::Embedding(model)));
    }
    let mut config = base.clone();
    config.dtype = choose_dtype(&device, package.settings.dtype);
    if let Some(mb) = package.settings.kv_cache_mb {
        config.kv_cache_bytes = mb << 20;
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
