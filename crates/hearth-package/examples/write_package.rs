//! Writes a synthetic package: `cargo run -p hearth-package --example write_package -- <preset> <dir>`.
//! Presets: tiny-llama, smollm2-135m, llama3-8b. The committed `models/tiny-llama` comes from
//! `write_package tiny-llama models/tiny-llama`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use hearth_package::synth::{write_llama_package, SynthSpec, PRESETS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, dir] = args.as_slice() else {
        eprintln!("usage: write_package <{}> <dir>", PRESETS.join("|"));
        return ExitCode::FAILURE;
    };
    let Some(spec) = SynthSpec::preset(preset) else {
        eprintln!("unknown preset `{preset}` (known: {})", PRESETS.join(", "));
        return ExitCode::FAILURE;
    };
    let mut last_percent = None;
    let mut report = |done: usize, total: usize| {
        let percent = done * 100 / total.max(1);
        if last_percent != Some(percent) {
            last_percent = Some(percent);
            eprint!("\rwriting weights: {percent:3}%");
            let _ = std::io::stderr().flush();
        }
    };
    match write_llama_package(&spec, &PathBuf::from(dir), &mut report) {
        Ok(()) => {
            eprintln!("\nwrote {preset} to {dir}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::FAILURE
        }
    }
}
