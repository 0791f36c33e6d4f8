//! `hf://` weights, fetched when a package loads, with a byte progress bar per file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hearth_package::hub::{fetch_weights_blocking, HubEvent, HubOptions, HubProgress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Puts the package's `hf://` weights in place (a no-op for a package without them).
pub fn fetch_hf_weights(dir: &Path) -> anyhow::Result<()> {
    let options = HubOptions::from_env();
    let fetched = fetch_weights_blocking(dir, &options, Some(progress()))
        .with_context(|| format!("fetching the hf:// weights of {}", dir.display()))?;
    if fetched.files > 0 {
        tracing::info!(package = %dir.display(), files = fetched.files, bytes = fetched.bytes, "hf:// weights ready");
    }
    Ok(())
}

fn progress() -> HubProgress {
    let bars = MultiProgress::new();
    let active: Mutex<HashMap<String, ProgressBar>> = Mutex::default();
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    Arc::new(move |event| {
        let Ok(mut active) = active.lock() else { return };
        match event {
            HubEvent::Start { file, bytes } => {
                let bar = bars.add(ProgressBar::new(bytes));
                bar.set_style(style.clone());
                bar.set_message(file.to_owned());
                active.insert(file.to_owned(), bar);
            }
            HubEvent::Advance { file, bytes } => {
                if let Some(bar) = active.get(file) {
                    bar.inc(bytes);
                }
            }
            HubEvent::Finish { file } => {
                if let Some(bar) = active.remove(file) {
                    bar.finish_and_clear();
                }
            }
        }
    })
}
