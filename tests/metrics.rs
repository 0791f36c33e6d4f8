//! `GET /metrics` (Prometheus text format) and `/health`, driven over HTTP against the real binary.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{repo_root, tiny_llama, Daemon};
use serde_json::{json, Value};

const EMBEDDER: &str = "all-minilm-l6-v2";

fn minilm() -> PathBuf {
    let dir = repo_root().join("models/all-minilm-l6-v2/package");
    if !dir.join(".complete").is_file() {
        let script = repo_root().join("models/all-minilm-l6-v2/make_package.sh");
        let status = Command::new("bash").arg(&script).status().expect("run make_package.sh");
        assert!(status.success(), "{} failed: {status}", script.display());
    }
    dir
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// Samples by `name{labels}` exactly as exposed (labels in the order written).
type Samples = BTreeMap<String, f64>;

/// Scrapes `/metrics` and checks the exposition: every non-comment line is `name{labels} value`,
/// every family is declared with `# TYPE` before its samples.
fn scrape(daemon: &Daemon) -> Samples {
    let resp = client().get(daemon.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = resp.text().unwrap();
    let mut typed = Vec::<String>::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("`# TYPE name kind`");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unexpected comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = series.split_once('{').unwrap_or_else(|| panic!("no labels: {line}"));
        let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        for pair in labels.split(',') {
            let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            assert!(
                quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                "{line}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.iter().any(|t| t == f)))
            .unwrap_or(name);
        assert_eq!(typed.last().map(String::as_str), Some(family), "undeclared family: {line}");
        assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate series: {line}");
    }
    samples
}

fn get(samples: &Samples, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series}"))
}

fn model(name: &str, model: &str) -> String {
    format!("{name}{{model=\"{model}\"}}")
}

fn requests_ended(samples: &Samples, model: &str) -> f64 {
    ["stop", "length", "cancelled", "failed"]
        .iter()
        .map(|reason| {
            get(
                samples,
                &format!("hearth_requests_total{{model=\"{model}\",finish_reason=\"{reason}\"}}"),
            )
        })
        .sum()
}

/// The checks every histogram must pass: cumulative buckets that never go down, and a `+Inf`
/// bucket equal to the count.
fn check_histogram(samples: &Samples, name: &str, model: &str) {
    let prefix = format!("{name}_bucket{{model=\"{model}\",le=\"");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(series, &v)| {
            let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10, "{name}: too few buckets {buckets:?}");
    assert_eq!(buckets[0].0, 0.001, "{name}: first bucket");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: not cumulative {buckets:?}");
    let (last_le, inf) = *buckets.last().unwrap();
    assert_eq!(last_le, f64::INFINITY);
    assert_eq!(inf, get(samples, &model_series(name, "_count", model)), "{name}: +Inf != count");
    assert!(get(samples, &model_series(name, "_sum", model)) >= 0.0);
}

fn model_series(name: &str, suffix: &str, m: &str) -> String {
    model(&format!("{name}{suffix}"), m)
}

#[test]
fn metrics_count_requests_tokens_and_latencies_per_model() {
    let minilm = minilm();
    let daemon = Daemon::start(&[
        "--model",
        tiny_llama().to_str().unwrap(),
        "--model",
        minilm.to_str().unwrap(),
    ]);
    const M: &str = "tiny-llama";

    // /health lists the embedding model beside the generative one.
    let health: Value = client().get(daemon.url("/health")).send().unwrap().json().unwrap();
    assert_eq!(health["models"][M]["state"], "ready", "{health}");
    assert_eq!(health["models"][EMBEDDER]["state"], "ready", "{health}");
    assert_eq!(health["models"][EMBEDDER]["kind"], "embedding", "{health}");
    assert_eq!(health["models"][EMBEDDER]["dimension"], 384, "{health}");

    let before = scrape(&daemon);
    // Only generative engines are exported.
    assert!(!before.keys().any(|k| k.contains(EMBEDDER)), "{before:?}");
    // A package without adapters reports an empty adapter cache.
    assert_eq!(get(&before, &model("hearth_lora_adapters_loaded", M)), 0.0);
    assert_eq!(get(&before, &model("hearth_lora_adapter_loads_total", M)), 0.0);
    let total = get(&before, &model("hearth_kv_blocks_total", M));
    assert!(total > 0.0);
    assert_eq!(
        get(&before, &model("hearth_kv_blocks_used", M))
            + get(&before, &model("hearth_kv_blocks_free", M)),
        total
    );

    let mut prompt_tokens = 0.0;
    let mut completion_tokens = 0.0;
    // Streamed, so the text events are countable: the inter-token histogram gets one
    // observation per text event after a request's first.
    let mut gaps = 0.0;
    for (prompt, max_tokens) in [("Once upon a time", 8), ("The quick brown fox", 5)] {
        let body = json!({"model": M, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
        let text = client().post(daemon.url("/v1/completions")).json(&body).send().unwrap();
        let text = text.text().unwrap();
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let texts = chunks
            .iter()
            .filter(|c| c["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()))
            .count();
        assert!(texts > 0, "{text}");
        gaps += (texts - 1) as f64;
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], max_tokens, "{text}");
        prompt_tokens += usage["prompt_tokens"].as_f64().unwrap_or_else(|| panic!("{text}"));
        completion_tokens += max_tokens as f64;
    }
    assert!(prompt_tokens > 0.0 && completion_tokens > 0.0);

    // The engine publishes its token counts after the step that ended the request, so a scrape
    // right after the answer may be a moment early: wait until the counts have arrived.
    let delta =
        |after: &Samples, name: &str| get(after, &model(name, M)) - get(&before, &model(name, M));
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&daemon);
        let arrived = requests_ended(&after, M) - requests_ended(&before, M) >= 2.0
            && delta(&after, "hearth_prompt_tokens_total") >= prompt_tokens
            && delta(&after, "hearth_generation_tokens_total") >= completion_tokens;
        if arrived || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    assert_eq!(requests_ended(&after, M) - requests_ended(&before, M), 2.0);
    assert_eq!(delta(&after, "hearth_prompt_tokens_total"), prompt_tokens);
    assert_eq!(delta(&after, "hearth_generation_tokens_total"), completion_tokens);
    for histogram in ["hearth_time_to_first_token_seconds", "hearth_e2e_request_latency_seconds"] {
        assert_eq!(delta(&after, &format!("{histogram}_count")), 2.0, "{histogram}");
    }
    // One inter-token gap per text event after each request's first.
    let itl = delta(&after, "hearth_inter_token_latency_seconds_count");
    assert_eq!(itl, gaps, "{itl} gaps observed, {gaps} seen by the client");
    for histogram in [
        "hearth_time_to_first_token_seconds",
        "hearth_inter_token_latency_seconds",
        "hearth_e2e_request_latency_seconds",
    ] {
        check_histogram(&after, histogram, M);
    }
    // Idle again: nothing running or waiting, and every counter only went up.
    assert_eq!(get(&after, &model("hearth_num_requests_running", M)), 0.0);
    assert_eq!(get(&after, &model("hearth_num_requests_waiting", M)), 0.0);
    for (series, value) in &before {
        if series.contains("_total{") || series.contains("_count{") || series.contains("_bucket{") {
            assert!(after[series] >= *value, "{series} went down");
        }
    }
    let queried = get(&after, &model("hearth_prefix_cache_queried_tokens_total", M));
    let hits = get(&after, &model("hearth_prefix_cache_hit_tokens_total", M));
    assert!(hits <= queried, "{hits} prefix-cache hits of {queried} tokens looked up");
}
