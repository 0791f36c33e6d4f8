//! Loading packages into engines at start-up, with a progress bar per package. A package that
//! fails is recorded with its reason and the others still load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig};
use hearth_gateway::{Catalog, LocalModel};
use hearth_package::Package;
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::choose_device;

/// Loads every package in `dirs` into `catalog`.
pub fn load_all(dirs: &[PathBuf], base: &EngineConfig, device_arg: &str, catalog: &mut Catalog) {
    for dir in dirs {
        let name = fallback_name(dir);
        match load_one(dir, base, device_arg) {
            Ok((name, model)) => catalog.insert_ready(name, model),
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::error!(package = %name, %reason, "package refused; serving the others");
                catalog.insert_failed(name, reason);
            }
        }
    }
}

fn load_one(
    dir: &Path,
    base: &EngineConfig,
    device_arg: &str,
) -> anyhow::Result<(String, LocalModel)> {
    let started = Instant::now();
    let package = Package::load(dir)?;
    let device = choose_device(device_arg, package.cog.build.gpu)?;
    let mut config = base.clone();
    if let Some(mb) = package.settings.kv_cache_mb {
        config.kv_cache_bytes = mb << 20;
    }
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
        context_length = info.context_length,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model ready"
    );
    let model = LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() };
    Ok((package.name, model))
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
