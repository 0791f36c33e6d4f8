//! The `hearth` command: serve model packages over HTTP, and write synthetic test packages.
//!
//! This is the binary's edge: errors become `anyhow` here and nowhere deeper.

mod config;
#[cfg(test)]
mod deploy_check;
mod device;
mod load;
mod models_cmd;
mod push;
mod serve;
mod serve_admin;
mod synth;
mod telemetry;
mod weights;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: a request through the gateway makes a few hundred
/// small allocations across tokio's worker threads, and glibc's malloc spent about a tenth of the
/// daemon's CPU on them under load (see the routing-overhead benchmark in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Serve Cog-style model packages with continuous batching"
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every package under a models directory (default: ./models) on 127.0.0.1:8080.
    Serve(serve::ServeArgs),
    /// Write a Llama-family package with seeded random weights (for tests and benchmarks).
    Synth(synth::SynthArgs),
    /// Upload a package directory to a running daemon, which validates, installs and serves it.
    Push(push::PushArgs),
    /// List a running daemon's models with their state; `models rm NAME` removes one.
    Models(models_cmd::ModelsArgs),
}

fn main() -> anyhow::Result<()> {
    pin_cpu_thread_count();
    let cli = Cli::parse();
    // `serve` starts its logs once it has read `hearth.toml`, which may ask for trace export.
    let logs = || telemetry::init(&cli.log_format, &telemetry::TelemetrySection::default());
    match cli.command {
        Command::Serve(args) => serve::run(args, &cli.log_format),
        Command::Synth(args) => logs().and_then(|_logs| synth::run(args)),
        Command::Push(args) => logs().and_then(|_logs| push::run(args)),
        Command::Models(args) => logs().and_then(|_logs| models_cmd::run(args)),
    }
}

/// Fixes the CPU thread count of candle's kernels once, before any thread starts. Unless
/// `RAYON_NUM_THREADS` is set, candle works the count out again on every matrix multiply by
/// parsing `/proc/cpuinfo`, which took a sixth of a decode step on a small model. The count is
/// the parallelism this process may use (CPU affinity and cgroup quotas included).
fn pin_cpu_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        // Sound: `main` has not started any thread yet, so nothing reads the environment
        // concurrently.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
