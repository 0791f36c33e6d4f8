//! `hearth synth`: write a package with seeded random weights. Used for the committed example
//! model, the parity and benchmark models, and GPU checks where weights cannot travel.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use hearth_package::synth::{write_llama_package, SynthSpec, PRESETS};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct SynthArgs {
    /// Model shape: tiny-llama, tiny-gemma2, tiny-gemma3, tiny-phi3, tiny-qwen3-moe,
    /// tiny-qwen2-moe, tiny-mixtral, smollm2-135m, smollm2-moe or llama3-8b.
    #[arg(long, default_value = "tiny-llama")]
    preset: String,
    /// Directory to write the package into (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Seed for the random weights; the same seed writes the same bytes.
    #[arg(long)]
    seed: Option<u64>,
    /// Package name written into cog.yaml's `model` (defaults to the preset's).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let Some(mut spec) = SynthSpec::preset(&args.preset) else {
        bail!("unknown preset `{}`; expected one of {}", args.preset, PRESETS.join(", "));
    };
    if let Some(seed) = args.seed {
        spec.seed = seed;
    }
    if let Some(name) = args.name {
        spec.name = name;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("writing weights [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    write_llama_package(&spec, &args.out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("wrote {} to {}", spec.name, args.out.display());
    Ok(())
}
