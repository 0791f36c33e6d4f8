//! Throughput/latency sweeps: one point per concurrency level (closed loop) or per Poisson
//! arrival rate (open loop), each with the same number of requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::client::{ms, Client, ClientConfig, Endpoint, Message, RequestRecord};
use crate::dist::LengthDist;
use crate::machine::MachineInfo;
use crate::prompt::PromptGen;
use crate::stats::Summary;
use crate::Error;

/// How load is offered at each sweep point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// Closed loop: N requests in flight at all times.
    Concurrency,
    /// Open loop: Poisson arrivals at N requests/s, regardless of how fast the server answers.
    Rate,
}

impl LoadMode {
    pub fn axis_label(self) -> &'static str {
        match self {
            LoadMode::Concurrency => "concurrency",
            LoadMode::Rate => "offered rate (req/s)",
        }
    }

    pub fn point_label(self, load: f64) -> String {
        match self {
            LoadMode::Concurrency => format!("c={load}"),
            LoadMode::Rate => format!("{load} req/s"),
        }
    }
}

/// Everything a sweep needs.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub label: String,
    pub client: ClientConfig,
    pub mode: LoadMode,
    pub loads: Vec<f64>,
    pub num_requests: usize,
    pub prompt_tokens: LengthDist,
    pub output_tokens: LengthDist,
    pub seed: u64,
    pub tokenizer: Option<PathBuf>,
    pub show_progress: bool,
}

/// The settings saved with the results (never the API key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSettings {
    pub endpoint: Endpoint,
    pub mode: LoadMode,
    pub loads: Vec<f64>,
    pub num_requests: usize,
    pub prompt_tokens: LengthDist,
    pub output_tokens: LengthDist,
    pub seed: u64,
    pub ignore_eos: bool,
    pub tokenizer: Option<String>,
    pub timeout_s: f64,
}

/// One sweep point's aggregate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointResult {
    pub load: f64,
    pub requests: usize,
    pub completed: usize,
    pub errors: usize,
    /// A few distinct error messages, so a failing point explains itself.
    pub error_samples: Vec<String>,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub input_tokens_per_s: f64,
    pub ttft_ms: Summary,
    pub itl_ms: Summary,
    pub tpot_ms: Summary,
    pub e2e_ms: Summary,
    pub prompt_tokens_mean: f64,
    pub output_tokens_mean: f64,
    /// Mean prefix-cache hits per request, when the server reports them.
    pub cached_tokens_mean: Option<f64>,
    #[serde(skip)]
    pub records: Vec<RequestRecord>,
}

/// The whole of `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub format_version: u32,
    pub label: String,
    pub server_url: String,
    pub model: String,
    pub date: String,
    pub machine: MachineInfo,
    pub config: SweepSettings,
    pub points: Vec<PointResult>,
}

/// One planned request: the prompt, its intended length, and the output length to ask for.
struct Planned {
    messages: Vec<Message>,
    prompt_tokens: u32,
    max_tokens: u32,
}

/// Each point gets its own seed: reusing one seed would resend the previous point's prompts and
/// let a prefix cache turn the whole point into cache hits.
fn point_rng(seed: u64, point: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (point.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

const WARM_UP_POINT: u64 = u64::MAX;
const MAX_ERROR_SAMPLES: usize = 5;

fn plan_requests(
    cfg: &SweepConfig,
    prompts: &PromptGen,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Planned>, Error> {
    (0..cfg.num_requests)
        .map(|_| {
            let (text, prompt_tokens) = prompts.generate(cfg.prompt_tokens.sample(rng), rng)?;
            let max_tokens = cfg.output_tokens.sample(rng);
            Ok(Planned { messages: vec![Message::new("user", text)], prompt_tokens, max_tokens })
        })
        .collect()
}

fn validate(cfg: &SweepConfig) -> Result<(), Error> {
    if cfg.loads.is_empty() || cfg.num_requests == 0 {
        return Err(Error::Config("need at least one load level and one request".into()));
    }
    if let Some(bad) = cfg.loads.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
        return Err(Error::Config(format!("load levels must be positive, got {bad}")));
    }
    if cfg.mode == LoadMode::Concurrency && cfg.loads.iter().any(|l| l.fract() != 0.0) {
        return Err(Error::Config("concurrency levels must be whole numbers".into()));
    }
    Ok(())
}

/// One uncounted request, so that lazy initialisation (kernel compilation, first allocation,
/// connection setup) does not land in the first point, and so a wrong URL or model fails fast.
pub async fn warm_up(
    client: &Client,
    prompts: &PromptGen,
    prompt_len: u32,
    seed: u64,
) -> Result<(), Error> {
    let mut rng = point_rng(seed, WARM_UP_POINT);
    let (text, _) = prompts.generate(prompt_len, &mut rng)?;
    tracing::info!(url = client.url(), "warm-up request");
    let rec = client.send(&[Message::new("user", text)], 8).await;
    match rec.error {
        Some(e) => Err(Error::WarmUp(e)),
        None => Ok(()),
    }
}

/// Runs every point of the sweep in order.
pub async fn run_sweep(cfg: &SweepConfig, prompts: &PromptGen) -> Result<RunResults, Error> {
    validate(cfg)?;
    let client = Client::new(cfg.client.clone())?;
    warm_up(&client, prompts, cfg.prompt_tokens.mean().round() as u32, cfg.seed).await?;
    let mut points = Vec::with_capacity(cfg.loads.len());
    for (i, &load) in cfg.loads.iter().enumerate() {
        let mut rng = point_rng(cfg.seed, i as u64);
        let plan = plan_requests(cfg, prompts, &mut rng)?;
        let bar = progress_bar(cfg, load);
        let started = Instant::now();
        let records = match cfg.mode {
            LoadMode::Concurrency => closed_loop(&client, plan, load as usize, &bar).await,
            LoadMode::Rate => open_loop(&client, plan, load, &mut rng, &bar).await,
        };
        bar.finish_and_clear();
        let point = summarize_point(load, records, started.elapsed());
        log_point(cfg.mode, &point);
        points.push(point);
    }
    Ok(RunResults {
        format_version: 1,
        label: cfg.label.clone(),
        server_url: cfg.client.base_url.clone(),
        model: cfg.client.model.clone(),
        date: chrono::Utc::now().to_rfc3339(),
        machine: MachineInfo::detect(),
        config: settings(cfg),
        points,
    })
}

fn settings(cfg: &SweepConfig) -> SweepSettings {
    SweepSettings {
        endpoint: cfg.client.endpoint,
        mode: cfg.mode,
        loads: cfg.loads.clone(),
        num_requests: cfg.num_requests,
        prompt_tokens: cfg.prompt_tokens,
        output_tokens: cfg.output_tokens,
        seed: cfg.seed,
        ignore_eos: cfg.client.ignore_eos,
        tokenizer: cfg.tokenizer.as_ref().map(|p| p.display().to_string()),
        timeout_s: cfg.client.timeout.as_secs_f64(),
    }
}

pub fn progress_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .expect("static template is valid")
        .progress_chars("=> ")
}

fn progress_bar(cfg: &SweepConfig, load: f64) -> ProgressBar {
    if !cfg.show_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(cfg.num_requests as u64).with_style(progress_style());
    bar.set_prefix(cfg.mode.point_label(load));
    bar
}

fn log_point(mode: LoadMode, p: &PointResult) {
    tracing::info!(
        point = %mode.point_label(p.load),
        completed = p.completed,
        errors = p.errors,
        req_per_s = format!("{:.2}", p.requests_per_s),
        out_tok_per_s = format!("{:.1}", p.output_tokens_per_s),
        ttft_p50_ms = format!("{:.1}", p.ttft_ms.p50),
        ttft_p99_ms = format!("{:.1}", p.ttft_ms.p99),
        tpot_p50_ms = format!("{:.2}", p.tpot_ms.p50),
        "point done"
    );
    for e in &p.error_samples {
        tracing::warn!(error = %e, "request failed");
    }
}

/// Sends one planned request and fills in the fields the client cannot know.
async fn send_planned(
    client: &Client,
    p: &Planned,
    t0: Instant,
    bar: &ProgressBar,
) -> RequestRecord {
    let start_ms = ms(t0.elapsed());
    let mut rec = client.send(&p.messages, p.max_tokens).await;
    rec.start_ms = start_ms;
    // Fall back to the planned length when the server reports no usage.
    rec.prompt_tokens = rec.prompt_tokens.or(Some(u64::from(p.prompt_tokens)));
    if let Some(e) = &rec.error {
        tracing::debug!(error = %e, "request failed");
    }
    bar.inc(1);
    rec
}

/// `workers` tasks each take the next unsent request as soon as their previous one finishes.
async fn closed_loop(
    client: &Client,
    plan: Vec<Planned>,
    workers: usize,
    bar: &ProgressBar,
) -> Vec<RequestRecord> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers.min(plan.len()) {
        let (client, plan, next, bar) = (client.clone(), plan.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = plan.get(i) else { break done };
                done.push((i, send_planned(&client, p, t0, &bar).await));
            }
        });
    }
    let mut all: Vec<(usize, RequestRecord)> = Vec::with_capacity(plan.len());
    while let Some(res) = tasks.join_next().await {
        all.extend(res.expect("request task panicked"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Requests start at Poisson arrival times (exponential gaps with mean 1/rate), each in its own
/// task, so a slow server builds a queue instead of slowing the arrivals.
async fn open_loop(
    client: &Client,
    plan: Vec<Planned>,
    rate: f64,
    rng: &mut ChaCha8Rng,
    bar: &ProgressBar,
) -> Vec<RequestRecord> {
    let gaps = Exp::new(rate).expect("rate validated positive");
    let t0 = Instant::now();
    let mut at = Duration::ZERO;
    let mut tasks = JoinSet::new();
    for (i, p) in plan.into_iter().enumerate() {
        tokio::time::sleep_until((t0 + at).into()).await;
        let (client, bar) = (client.clone(), bar.clone());
        tasks.spawn(async move { (i, send_planned(&client, &p, t0, &bar).await) });
        at += Duration::from_secs_f64(gaps.sample(rng));
    }
    let mut all = Vec::new();
    while let Some(res) = tasks.join_next().await {
        all.push(res.expect("request task panicked"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Aggregates one point. Throughputs count successful requests only, over the point's wall time.
pub fn summarize_point(load: f64, records: Vec<RequestRecord>, wall: Duration) -> PointResult {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let secs = wall.as_secs_f64().max(1e-9);
    let out_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let in_tokens: u64 = ok.iter().filter_map(|r| r.prompt_tokens).sum();
    let cached: Vec<f64> = ok.iter().filter_map(|r| r.cached_tokens.map(|c| c as f64)).collect();
    let mut error_samples: Vec<String> = Vec::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        if error_samples.len() < MAX_ERROR_SAMPLES && !error_samples.contains(e) {
            error_samples.push(e.clone());
        }
    }
    let n = ok.len().max(1) as f64;
    PointResult {
        load,
        requests: records.len(),
        completed: ok.len(),
        errors: records.len() - ok.len(),
        error_samples,
        duration_s: secs,
        requests_per_s: ok.len() as f64 / secs,
        output_tokens_per_s: out_tokens as f64 / secs,
        input_tokens_per_s: in_tokens as f64 / secs,
        ttft_ms: Summary::from_samples(&ok.iter().filter_map(|r| r.ttft_ms).collect::<Vec<_>>()),
        itl_ms: Summary::from_samples(
            &ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect::<Vec<_>>(),
        ),
        tpot_ms: Summary::from_samples(&ok.iter().filter_map(|r| r.tpot_ms).collect::<Vec<_>>()),
        e2e_ms: Summary::from_samples(&ok.iter().map(|r| r.e2e_ms).collect::<Vec<_>>()),
        prompt_tokens_mean: in_tokens as f64 / n,
        output_tokens_mean: out_tokens as f64 / n,
        cached_tokens_mean: (!cached.is_empty())
            .then(|| cached.iter().sum::<f64>() / cached.len() as f64),
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2e: f64, out: u64, err: Option<&str>) -> RequestRecord {
        RequestRecord {
            ttft_ms: Some(ttft),
            e2e_ms: e2e,
            itl_ms: vec![1.0, 3.0],
            tpot_ms: Some(2.0),
            output_tokens: out,
            prompt_tokens: Some(10),
            cached_tokens: Some(4),
            error: err.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn summarizes_successes_and_counts_errors() {
        let records = vec![
            rec(10.0, 100.0, 5, None),
            rec(30.0, 300.0, 7, None),
            rec(0.0, 1.0, 0, Some("HTTP 503: busy")),
            rec(0.0, 1.0, 0, Some("HTTP 503: busy")),
        ];
        let p = summarize_point(2.0, records, Duration::from_secs(2));
        assert_eq!((p.requests, p.completed, p.errors), (4, 2, 2));
        assert_eq!(p.error_samples, vec!["HTTP 503: busy".to_string()]);
        assert_eq!(p.requests_per_s, 1.0);
        assert_eq!(p.output_tokens_per_s, 6.0);
        assert_eq!(p.input_tokens_per_s, 10.0);
        assert_eq!(p.ttft_ms.p50, 20.0);
        assert_eq!(p.itl_ms.count, 4);
        assert_eq!(p.cached_tokens_mean, Some(4.0));
    }

    #[test]
    fn point_seeds_differ() {
        use rand::Rng;
        let a: u64 = point_rng(0, 0).random();
        let b: u64 = point_rng(0, 1).random();
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_fractional_concurrency() {
        let cfg = SweepConfig {
            label: "x".into(),
            client: ClientConfig {
                base_url: "http://127.0.0.1:1".into(),
                model: "m".into(),
                endpoint: Endpoint::Chat,
                api_key: None,
                ignore_eos: true,
                timeout: Duration::from_secs(1),
            },
            mode: LoadMode::Concurrency,
            loads: vec![1.5],
            num_requests: 1,
            prompt_tokens: LengthDist::Fixed(1),
            output_tokens: LengthDist::Fixed(1),
            seed: 0,
            tokenizer: None,
            show_progress: false,
        };
        assert!(matches!(validate(&cfg), Err(Error::Config(_))));
    }
}
