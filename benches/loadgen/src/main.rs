//! `loadgen` — a load generator for any OpenAI-compatible streaming server (Hearth, llama.cpp's
//! `llama-server`, mistral.rs, vLLM).
//!
//! # Sweep: latency and throughput against offered load
//!
//! ```text
//! loadgen run --url http://127.0.0.1:8080 --model NAME [--endpoint completions|chat] \
//!     (--concurrency 1,2,4,8 | --rate 0.5,1,2) --num-requests 64 \
//!     --prompt-tokens uniform:100-400 --output-tokens fixed:128 --seed 0 \
//!     --label hearth --out results/hearth [--tokenizer path/to/tokenizer.json]
//! ```
//!
//! `--concurrency` keeps N requests in flight (closed loop); `--rate` starts requests at Poisson
//! arrival times, N per second on average (open loop). Lengths are `fixed:N`, `uniform:LO-HI` or
//! `normal:MEAN,STDDEV`. Prompts are random: with `--tokenizer`, random vocabulary tokens decoded
//! to text; otherwise random common words (about one token each). Every request streams with
//! `stream_options.include_usage` and sends `max_tokens` plus `ignore_eos: true` so output lengths
//! are what was asked for (`--no-ignore-eos` drops the field for servers that reject it). One
//! uncounted warm-up request precedes the sweep.
//!
//! Per point: TTFT (request sent → first token chunk), ITL (gaps between chunks), TPOT
//! ((E2E − TTFT) / (output tokens − 1)), E2E latency — mean, p50, p90, p99 — plus requests/s,
//! output tokens/s, input tokens/s, cached prompt tokens and errors. Writes into `--out`:
//! `results.json` (every point, the settings, server URL, date, load-generator machine),
//! `results.md`, `requests.jsonl` (raw per-request measurements) and `ttft_throughput.svg`.
//!
//! # Agent workload: multi-turn conversations that re-send their history
//!
//! ```text
//! loadgen agent --url http://127.0.0.1:8080 --model NAME --conversations 8 --turns 10 \
//!     --history-tokens 2000 --new-tokens 40 --output-tokens 32 --out results/agent
//! ```
//!
//! Each conversation sends a system prompt (sized so the history reaches `--history-tokens` by the
//! last turn), then per turn a new user message and the full history including the replies it
//! received. Writes `agent.json`, `agent.md`, `agent_requests.jsonl` and `agent_ttft.svg` (TTFT and
//! prompt/cached tokens by turn).
//!
//! # Compare saved runs
//!
//! ```text
//! loadgen compare results/hearth results/llama-server results/mistralrs --out results/compare
//! ```
//!
//! Writes `compare.md` and `compare_ttft_throughput.svg`, one series per run's `--label`.
//!
//! Logs go to stderr (`RUST_LOG` filters them, `--log-json` makes them JSON); a progress bar shows
//! while requests run on a terminal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hearth_loadgen::agent::{self, AgentConfig};
use hearth_loadgen::client::{ClientConfig, Endpoint};
use hearth_loadgen::compare;
use hearth_loadgen::dist::LengthDist;
use hearth_loadgen::prompt::PromptGen;
use hearth_loadgen::report;
use hearth_loadgen::sweep::{self, LoadMode, SweepConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "Load generator for OpenAI-compatible LLM servers")]
struct Cli {
    /// Emit logs as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sweep concurrency levels or Poisson request rates and measure latency and throughput.
    Run(RunArgs),
    /// Run concurrent multi-turn conversations that re-send a growing history.
    Agent(AgentArgs),
    /// Merge several runs' results.json into one table and one plot.
    Compare(CompareArgs),
}

/// Options shared by every command that talks to a server.
#[derive(Args)]
struct ServerArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080 (a trailing /v1 is accepted).
    #[arg(long)]
    url: String,
    /// Model name to put in each request.
    #[arg(long)]
    model: String,
    /// Name for this server in reports and comparisons [default: host:port of --url].
    #[arg(long)]
    label: Option<String>,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Do not send `ignore_eos: true` (for servers that reject unknown fields).
    #[arg(long)]
    no_ignore_eos: bool,
    /// Per-request timeout in seconds (the whole stream).
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// tokenizer.json to build prompts of exact token lengths from random vocabulary tokens.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Seed for prompt text, lengths and arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, value_enum, default_value_t = Endpoint::Completions)]
    endpoint: Endpoint,
    /// Concurrency levels to sweep (closed loop), e.g. 1,2,4,8.
    #[arg(long, value_delimiter = ',', conflicts_with = "rate", required_unless_present = "rate")]
    concurrency: Vec<u32>,
    /// Poisson arrival rates in requests/s to sweep (open loop), e.g. 0.5,1,2.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Requests per sweep point.
    #[arg(long, default_value_t = 64)]
    num_requests: usize,
    /// Prompt length distribution: fixed:N, uniform:LO-HI or normal:MEAN,STDDEV.
    #[arg(long, default_value = "fixed:350")]
    prompt_tokens: LengthDist,
    /// Output length distribution (sent as max_tokens).
    #[arg(long, default_value = "fixed:128")]
    output_tokens: LengthDist,
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    endpoint: Endpoint,
    /// Conversations running at once.
    #[arg(long, default_value_t = 8)]
    conversations: usize,
    /// Turns per conversation.
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// History size (tokens) each conversation reaches by its last turn.
    #[arg(long, default_value_t = 2000)]
    history_tokens: u32,
    /// Tokens in each turn's new user message.
    #[arg(long, default_value_t = 40)]
    new_tokens: u32,
    /// Tokens generated per turn.
    #[arg(long, default_value_t = 32)]
    output_tokens: u32,
}

#[derive(Args)]
struct CompareArgs {
    /// Run directories (each holding results.json) to compare.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Output directory for compare.md and the plot.
    #[arg(long)]
    out: PathBuf,
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `http://host:port/...` → `host:port`, the natural name for a server when none is given.
fn default_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

impl ServerArgs {
    fn client(&self, endpoint: Endpoint) -> Result<ClientConfig> {
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
        Ok(ClientConfig {
            base_url: self.url.clone(),
            model: self.model.clone(),
            endpoint,
            api_key: self.api_key.clone(),
            ignore_eos: !self.no_ignore_eos,
            timeout: Duration::from_secs_f64(self.timeout),
        })
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| default_label(&self.url))
    }

    fn prompts(&self) -> Result<PromptGen> {
        match &self.tokenizer {
            Some(path) => PromptGen::from_tokenizer_file(path).context("loading --tokenizer"),
            None => Ok(PromptGen::Words),
        }
    }
}

async fn cmd_run(args: RunArgs) -> Result<()> {
    let s = &args.server;
    let (mode, loads) = if args.rate.is_empty() {
        (LoadMode::Concurrency, args.concurrency.iter().map(|&c| f64::from(c)).collect())
    } else {
        (LoadMode::Rate, args.rate.clone())
    };
    if !args.output_tokens.is_fixed() && s.no_ignore_eos {
        tracing::info!("variable output lengths without ignore_eos: lengths are upper bounds");
    }
    let cfg = SweepConfig {
        label: s.label(),
        client: s.client(args.endpoint)?,
        mode,
        loads,
        num_requests: args.num_requests,
        prompt_tokens: args.prompt_tokens,
        output_tokens: args.output_tokens,
        seed: s.seed,
        tokenizer: s.tokenizer.clone(),
        show_progress: !s.no_progress,
    };
    let results = sweep::run_sweep(&cfg, &s.prompts()?).await?;
    report::write_run(&s.out, &results)?;
    tracing::info!(dir = %s.out.display(), "results written");
    if results.points.iter().all(|p| p.completed == 0) {
        bail!("every request failed; see {}", s.out.join(report::RESULTS_MD).display());
    }
    Ok(())
}

async fn cmd_agent(args: AgentArgs) -> Result<()> {
    let s = &args.server;
    let cfg = AgentConfig {
        label: s.label(),
        client: s.client(args.endpoint)?,
        conversations: args.conversations,
        turns: args.turns,
        history_tokens: args.history_tokens,
        new_tokens: args.new_tokens,
        output_tokens: args.output_tokens,
        seed: s.seed,
        show_progress: !s.no_progress,
    };
    let results = agent::run_agent(&cfg, &s.prompts()?).await?;
    agent::write_agent(&s.out, &results)?;
    tracing::info!(dir = %s.out.display(), errors = results.errors, "agent results written");
    if results.turns.first().is_some_and(|t| t.errors == t.requests) {
        bail!("every first turn failed; see {}", s.out.join(agent::AGENT_MD).display());
    }
    Ok(())
}

fn cmd_compare(args: CompareArgs) -> Result<()> {
    let runs = compare::compare(&args.dirs, &args.out)?;
    tracing::info!(runs = runs.len(), dir = %args.out.display(), "comparison written");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Run(args) => cmd_run(args).await,
        Command::Agent(args) => cmd_agent(args).await,
        Command::Compare(args) => cmd_compare(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_default_to_host_port() {
        assert_eq!(default_label("http://127.0.0.1:8080/v1"), "127.0.0.1:8080");
        assert_eq!(default_label("localhost:9"), "localhost:9");
    }

    #[test]
    fn run_needs_exactly_one_load_kind() {
        let base = ["loadgen", "run", "--url", "http://x", "--model", "m", "--out", "o"];
        assert!(Cli::try_parse_from(base).is_err());
        assert!(Cli::try_parse_from(base.iter().chain(&["--concurrency", "1,2"])).is_ok());
        assert!(Cli::try_parse_from(base.iter().chain(&["--rate", "0.5,1"])).is_ok());
        let both = base.iter().chain(&["--rate", "1", "--concurrency", "1"]);
        assert!(Cli::try_parse_from(both).is_err());
    }
}
