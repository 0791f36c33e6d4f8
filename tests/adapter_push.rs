//! `hearth push ADAPTER_DIR --adapter-of BASE --name NAME` against the real binary: a LoRA
//! adapter pushed to a running model is served at once while the base model's streams go on,
//! comes back after a restart, is refused by module name when it does not fit, and is removed
//! with `hearth models rm BASE:ADAPTER`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

use common::{hearth_bin, tiny_llama, Daemon};
use hearth_package::synth::{write_lora_adapter, LoraSpec, SynthSpec};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

fn admin_daemon(models: &Path) -> Daemon {
    let args = ["--models", models.to_str().unwrap()];
    Daemon::start_with_env(&args, &[("HEARTH_ADMIN_TOKEN", TOKEN)])
}

/// A models directory holding a copy of the example model.
fn models_dir(root: &Path) -> PathBuf {
    let models = root.join("models");
    let package = models.join("tiny-llama");
    std::fs::create_dir_all(&package).unwrap();
    for entry in std::fs::read_dir(tiny_llama()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), package.join(entry.file_name())).unwrap();
    }
    models
}

fn adapter(root: &Path, seed: u64) -> PathBuf {
    let dir = root.join(format!("adapter-{seed}"));
    write_lora_adapter(&SynthSpec::tiny_llama(), &LoraSpec::all_projections(seed), &dir).unwrap();
    dir
}

fn hearth(args: &[&str]) -> Output {
    std::process::Command::new(hearth_bin())
        .args(args)
        .env_remove("HEARTH_ADMIN_TOKEN")
        .env_remove("HEARTH_URL")
        .output()
        .unwrap()
}

fn push_adapter(daemon: &Daemon, dir: &Path, base: &str, name: &str) -> Output {
    let dir = dir.to_str().unwrap();
    let args = ["push", dir, "--adapter-of", base, "--name", name, "--to", &daemon.base];
    hearth(&[&args[..], &["--token", TOKEN]].concat())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn chat_body(model: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
           "ignore_eos": true,
           "messages": [{"role": "user", "content": "tell me a long story"}]})
}

/// `(status, content)` of a whole chat completion.
fn chat(daemon: &Daemon, model: &str) -> (u16, String) {
    let resp =
        client().post(daemon.url("/v1/chat/completions")).json(&chat_body(model, 16, false)).send();
    let resp = resp.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap();
    (status, body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned())
}

fn model_ids(daemon: &Daemon) -> Vec<String> {
    let list: Value = client().get(daemon.url("/v1/models")).send().unwrap().json().unwrap();
    let data = list["data"].as_array().cloned().unwrap_or_default();
    data.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect()
}

/// Output tokens of each base-model stream that runs across the push: long enough that the
/// engine is still decoding them when the adapter is served (checked, not assumed).
const LONG: u32 = 1900;
/// Base-model streams running across the push.
const STREAMS: usize = 8;

/// A streamed chat completion read on its own thread: it sends its run id on `started` at its
/// first content delta, then reads to the end and returns the whole text and finish reason.
fn stream_in_background(
    daemon: &Daemon,
    started: mpsc::Sender<String>,
) -> std::thread::JoinHandle<(String, String)> {
    let url = daemon.url("/v1/chat/completions");
    let body = chat_body("tiny-llama", LONG, true);
    std::thread::spawn(move || {
        let resp = client().post(url).json(&body).send().unwrap();
        assert_eq!(resp.status(), 200);
        let run_id = resp.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
        let (mut content, mut finish, mut told) = (String::new(), String::new(), false);
        for line in BufReader::new(resp).lines() {
            let line = line.unwrap();
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).unwrap();
            content += event["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if let Some(reason) = event["choices"][0]["finish_reason"].as_str() {
                finish = reason.to_owned();
            }
            if !told && !content.is_empty() {
                started.send(run_id.clone()).unwrap();
                told = true;
            }
        }
        (content, finish)
    })
}

fn run_status(daemon: &Daemon, run_id: &str) -> String {
    let url = daemon.url(&format!("/v1/runs/{run_id}"));
    let status: Value = client().get(url).send().unwrap().json().unwrap();
    status["status"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn an_adapter_pushed_while_the_base_streams_is_served_and_survives_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    let daemon = admin_daemon(&models);
    let (_, base_answer) = chat(&daemon, "tiny-llama");

    // Base-model streams are mid-way when the adapter arrives.
    let (started_tx, started) = mpsc::channel();
    let streams: Vec<_> =
        (0..STREAMS).map(|_| stream_in_background(&daemon, started_tx.clone())).collect();
    let run_ids: Vec<String> = (0..STREAMS)
        .map(|_| started.recv_timeout(Duration::from_secs(120)).expect("a base stream started"))
        .collect();

    let pushed = push_adapter(&daemon, &adapter(root.path(), 3), "tiny-llama", "support");
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
    let stdout = text(&pushed.stdout);
    assert!(stdout.contains("tiny-llama:support is serving"), "{stdout}");
    let (status, support_answer) = chat(&daemon, "tiny-llama:support");
    assert_eq!(status, 200);
    assert_ne!(support_answer, base_answer, "the adapter changes the answer");
    assert!(model_ids(&daemon).contains(&"tiny-llama:support".to_owned()));
    let running = run_ids.iter().filter(|id| run_status(&daemon, id) == "running").count();
    assert!(running > 0, "every base stream ended before the adapter served; lengthen LONG");

    // The streams that were running go on to their end, untouched by the adapter.
    let whole = daemon.post_json("/v1/chat/completions", &chat_body("tiny-llama", LONG, false));
    let expected = whole["choices"][0]["message"]["content"].as_str().unwrap();
    for stream in streams {
        let (streamed, finish) = stream.join().unwrap();
        assert!(!finish.is_empty(), "a stream ended without a finish reason");
        assert_eq!(streamed, expected);
    }

    let listed: Value = client()
        .get(daemon.url("/admin/models"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["models"][0]["adapters"], json!(["support"]), "{listed}");

    // A new version of the base serves the adapters pushed to the old one.
    let base_dir = tiny_llama();
    let repushed = hearth(&[
        "push",
        base_dir.to_str().unwrap(),
        "--name",
        "tiny-llama",
        "--to",
        &daemon.base,
        "--token",
        TOKEN,
    ]);
    assert!(repushed.status.success(), "{}", text(&repushed.stderr));
    assert_eq!(chat(&daemon, "tiny-llama:support"), (200, support_answer.clone()));

    // A restart serves it again, computing what it computed before.
    drop(daemon);
    let daemon = admin_daemon(&models);
    assert_eq!(chat(&daemon, "tiny-llama:support"), (200, support_answer));

    // Removed: no longer served, no longer on disk.
    let removed =
        hearth(&["models", "rm", "tiny-llama:support", "--to", &daemon.base, "--token", TOKEN]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert_eq!(chat(&daemon, "tiny-llama:support").0, 404);
    assert!(!models.join(".hearth-adapters/tiny-llama/support").exists());
    assert_eq!(chat(&daemon, "tiny-llama"), (200, base_answer));
}

#[test]
fn adapters_that_do_not_fit_or_have_no_base_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    let daemon = admin_daemon(&models);
    let bad = adapter(root.path(), 4);
    let config = std::fs::read_to_string(bad.join("adapter_config.json")).unwrap();
    std::fs::write(bad.join("adapter_config.json"), config.replace("\"q_proj\"", "\"c_attn\""))
        .unwrap();

    let refused = push_adapter(&daemon, &bad, "tiny-llama", "bad");
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("422") && stderr.contains("`c_attn`"), "{stderr}");
    assert!(!model_ids(&daemon).contains(&"tiny-llama:bad".to_owned()));
    assert!(!models.join(".hearth-adapters/tiny-llama/bad").exists());
    let staging: Vec<_> = std::fs::read_dir(models.join(".hearth-staging"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "{staging:?}");

    let good = adapter(root.path(), 5);
    let no_base = push_adapter(&daemon, &good, "no-such-model", "a");
    assert!(text(&no_base.stderr).contains("`no-such-model` does not exist"), "{no_base:?}");
    let bad_name = push_adapter(&daemon, &good, "tiny-llama", ".hidden");
    assert!(text(&bad_name.stderr).contains("not a valid adapter name"), "{bad_name:?}");
    let not_adapter = push_adapter(&daemon, &tiny_llama(), "tiny-llama", "a");
    assert!(text(&not_adapter.stderr).contains("no adapter_config.json"), "{not_adapter:?}");

    // Without the admin token, nothing is read.
    let url = daemon.url("/admin/models/tiny-llama/adapters/a");
    let resp = client().put(url).body(Vec::new()).send().unwrap();
    assert_eq!(resp.status(), 401);
    // The base serves on.
    assert_eq!(chat(&daemon, "tiny-llama").0, 200);
}
