//! Sweeps against the fake streaming server: counts and shapes of results, never timings.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::{start, FakeConfig};
use hearth_loadgen::client::{ClientConfig, Endpoint};
use hearth_loadgen::dist::LengthDist;
use hearth_loadgen::prompt::PromptGen;
use hearth_loadgen::sweep::{run_sweep, LoadMode, RunResults, SweepConfig};
use hearth_loadgen::Error;

fn config(url: &str, mode: LoadMode, loads: Vec<f64>, endpoint: Endpoint) -> SweepConfig {
    SweepConfig {
        label: "fake".into(),
        client: ClientConfig {
            base_url: url.into(),
            model: "fake-model".into(),
            endpoint,
            api_key: None,
            ignore_eos: true,
            timeout: Duration::from_secs(30),
        },
        mode,
        loads,
        num_requests: 5,
        prompt_tokens: LengthDist::Fixed(20),
        output_tokens: LengthDist::Fixed(6),
        seed: 1,
        tokenizer: None,
        show_progress: false,
    }
}

#[tokio::test]
async fn concurrency_sweep_counts_every_request() {
    let server = start(FakeConfig::default()).await;
    let cfg = config(&server.url, LoadMode::Concurrency, vec![1.0, 2.0], Endpoint::Completions);
    let results = run_sweep(&cfg, &PromptGen::Words).await.unwrap();

    assert_eq!(results.points.len(), 2);
    for (p, load) in results.points.iter().zip([1.0, 2.0]) {
        assert_eq!(p.load, load);
        assert_eq!((p.requests, p.completed, p.errors), (5, 5, 0));
        assert_eq!(p.ttft_ms.count, 5);
        assert_eq!(p.tpot_ms.count, 5);
        assert_eq!(p.itl_ms.count, 5 * 5, "6 one-token chunks give 5 gaps per request");
        assert_eq!(p.output_tokens_mean, 6.0);
        assert_eq!(p.prompt_tokens_mean, 20.0);
        assert!(p.ttft_ms.p50 > 0.0 && p.e2e_ms.p99 >= p.ttft_ms.p99);
        assert!(
            p.requests_per_s > 0.0 && p.output_tokens_per_s > 0.0 && p.input_tokens_per_s > 0.0
        );
        assert!(p.records.iter().all(|r| r.usage_reported && r.chunks == 6));
    }

    let seen = server.requests();
    assert_eq!(seen.len(), 1 + 2 * 5, "one warm-up plus every point's requests");
    for s in &seen {
        assert_eq!(s.path, "/v1/completions");
        assert_eq!(s.body["stream"], true);
        assert_eq!(s.body["stream_options"]["include_usage"], true);
        assert_eq!(s.body["ignore_eos"], true);
        assert_eq!(s.body["model"], "fake-model");
    }
    let prompts: HashSet<&Vec<String>> = seen.iter().map(|s| &s.prompt_words).collect();
    assert_eq!(prompts.len(), seen.len(), "no prompt may repeat, or a prefix cache would hit");
}

#[tokio::test]
async fn rate_sweep_handles_multi_token_chunks() {
    let server = start(FakeConfig { tokens_per_chunk: 3, ..FakeConfig::default() }).await;
    let mut cfg = config(&server.url, LoadMode::Rate, vec![50.0, 100.0], Endpoint::Chat);
    cfg.output_tokens = LengthDist::Fixed(9);
    cfg.prompt_tokens = "uniform:5-15".parse().unwrap();
    let results = run_sweep(&cfg, &PromptGen::Words).await.unwrap();

    assert_eq!(results.config.mode, LoadMode::Rate);
    for p in &results.points {
        assert_eq!((p.completed, p.errors), (5, 0));
        assert_eq!(p.output_tokens_mean, 9.0, "output tokens come from usage, not chunk count");
        assert_eq!(p.itl_ms.count, 5 * 2, "3 chunks give 2 gaps per request");
        assert!(p.tpot_ms.p50 > 0.0);
        assert!((5.0..=15.0).contains(&p.prompt_tokens_mean));
    }
    assert!(server.requests().iter().all(|s| s.path == "/v1/chat/completions"));
}

#[tokio::test]
async fn failures_are_counted_not_fatal() {
    // The warm-up is request 1, so failing every 3rd request leaves it alone.
    let server = start(FakeConfig { fail_every: Some(3), ..FakeConfig::default() }).await;
    let mut cfg = config(&server.url, LoadMode::Concurrency, vec![2.0], Endpoint::Completions);
    cfg.num_requests = 9;
    let p = &run_sweep(&cfg, &PromptGen::Words).await.unwrap().points[0];
    assert_eq!(p.requests, 9);
    assert_eq!(p.errors, 3);
    assert_eq!(p.completed, 6);
    assert_eq!(p.ttft_ms.count, 6);
    assert!(p.error_samples[0].contains("503") && p.error_samples[0].contains("fake overload"));
}

#[tokio::test]
async fn without_usage_output_tokens_are_counted_from_chunks() {
    let server = start(FakeConfig { send_usage: false, ..FakeConfig::default() }).await;
    let mut cfg = config(&server.url, LoadMode::Concurrency, vec![1.0], Endpoint::Chat);
    cfg.client.ignore_eos = false;
    let p = &run_sweep(&cfg, &PromptGen::Words).await.unwrap().points[0];
    assert_eq!(p.completed, 5);
    assert_eq!(p.output_tokens_mean, 6.0);
    assert!(p.records.iter().all(|r| !r.usage_reported && r.cached_tokens.is_none()));
    assert!(server.requests().iter().all(|s| s.body.get("ignore_eos").is_none()));
}

#[tokio::test]
async fn failed_warm_up_stops_the_sweep() {
    let server = start(FakeConfig { fail_every: Some(1), ..FakeConfig::default() }).await;
    let cfg = config(&server.url, LoadMode::Concurrency, vec![1.0], Endpoint::Completions);
    let err = run_sweep(&cfg, &PromptGen::Words).await.unwrap_err();
    assert!(matches!(err, Error::WarmUp(_)), "{err}");
    assert_eq!(server.requests().len(), 1);
}

fn loadgen(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("loadgen runs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary end to end: two labelled runs, then `compare` over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_runs_and_compares() {
    let server = start(FakeConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name).display().to_string();
    for (label, endpoint) in [("alpha", "completions"), ("beta", "chat")] {
        let (url, out) = (server.url.clone(), dir(label));
        let out_done = tokio::task::spawn_blocking(move || {
            let args =
                ["run", "--url", &url, "--model", "m", "--label", label, "--endpoint", endpoint];
            let rest =
                ["--concurrency", "1,2", "--num-requests", "3", "--prompt-tokens", "uniform:8-12"];
            let tail = ["--output-tokens", "fixed:4", "--out", &out, "--no-progress"];
            loadgen(&[&args[..], &rest, &tail].concat())
        })
        .await
        .unwrap();
        assert!(out_done.status.success(), "{}", String::from_utf8_lossy(&out_done.stderr));
        let results: RunResults =
            serde_json::from_str(&read(&tmp.path().join(label).join("results.json"))).unwrap();
        assert_eq!(results.label, label);
        assert_eq!(results.points.len(), 2);
        assert!(results.machine.cores > 0);
        let md = read(&tmp.path().join(label).join("results.md"));
        assert!(md.contains("| concurrency | ok | errors"), "{md}");
        let jsonl = read(&tmp.path().join(label).join("requests.jsonl"));
        assert_eq!(jsonl.lines().count(), 6);
        assert!(
            read(&tmp.path().join(label).join("ttft_throughput.svg")).contains("Output throughput")
        );
    }

    let (a, b, out) = (dir("alpha"), dir("beta"), dir("cmp"));
    let cmp = tokio::task::spawn_blocking(move || loadgen(&["compare", &a, &b, "--out", &out]))
        .await
        .unwrap();
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stderr));
    let md = read(&tmp.path().join("cmp/compare.md"));
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| 1 | ") || l.starts_with("| 2 | ")).count(),
        4
    );
    assert!(md.contains("differ in endpoint"), "{md}");
    let svg = read(&tmp.path().join("cmp/compare_ttft_throughput.svg"));
    assert!(svg.contains("alpha p50") && svg.contains("beta p99"));
}
