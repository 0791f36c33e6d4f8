//! Upstream providers through the real binary: a `hearth.toml` with `[[providers]]` and
//! `[[models]]`, every entry surface, the ledger across a restart (shutdown waits until every
//! run's record is written), and an API key that never comes out — not in a response, not in
//! the ledger, not in the logs.

mod common;
mod gateway_support;

use std::time::Duration;

use common::{parse_sse, tiny_llama, Daemon};
use gateway_support::{FakeUpstream, KEY_ENV, LEAKY_MODEL, SECRET_KEY};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn post(daemon: &Daemon, path: &str, body: Value) -> reqwest::blocking::Response {
    client().post(daemon.url(path)).json(&body).send().unwrap()
}

fn get_json(daemon: &Daemon, path: &str) -> Value {
    client().get(daemon.url(path)).send().unwrap().json().unwrap()
}

fn header(resp: &reqwest::blocking::Response, name: &str) -> String {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn start(config: &str) -> Daemon {
    let tiny = tiny_llama();
    let args = ["--model", tiny.to_str().unwrap(), "--config", config];
    Daemon::start_with_env(&args, &[(KEY_ENV, SECRET_KEY)])
}

/// Ledger records per model (served and rejected runs), once `n` are written (each lands just
/// after its run's last event).
fn requests_by_model(daemon: &Daemon, n: u64) -> Vec<(String, u64)> {
    for _ in 0..200 {
        let usage = get_json(daemon, "/v1/usage?group_by=model");
        let rows: Vec<(String, u64)> = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let records = g["requests"].as_u64().unwrap() + g["rejected"].as_u64().unwrap();
                (g["key"].as_str().unwrap().to_owned(), records)
            })
            .collect();
        if rows.iter().map(|(_, r)| r).sum::<u64>() >= n {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the ledger never held {n} records");
}

#[test]
fn upstream_models_answer_every_surface_and_keys_never_come_out() {
    let fake = FakeUpstream::start(&["Hello", " world"], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let config = fake.write_config(dir.path());
    let mut daemon = start(&config);

    let chat = json!({"model": "chat", "messages": [{"role": "user", "content": "Hi"}]});
    let resp = post(&daemon, "/v1/chat/completions", chat.clone());
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-hearth-route"), "oa/gpt-fake");
    assert!(header(&resp, "x-hearth-run-id").starts_with("run_"));
    let whole: Value = resp.json().unwrap();
    assert_eq!(whole["choices"][0]["message"]["content"], "Hello world");

    let mut streamed = chat;
    streamed["stream"] = json!(true);
    let text = post(&daemon, "/v1/chat/completions", streamed).text().unwrap();
    assert_eq!(parse_sse(&text).last().map(|(_, d)| d.as_str()), Some("[DONE]"), "{text}");

    let message = json!({"model": "an/claude-fake", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}]});
    let resp = post(&daemon, "/v1/messages", message);
    assert_eq!(header(&resp, "x-hearth-route"), "an/claude-fake");
    let message: Value = resp.json().unwrap();
    assert_eq!(message["content"][0]["text"], "Hello world", "{message}");

    let run: Value = post(&daemon, "/v1/run/chat", json!({"input": "Hi"})).json().unwrap();
    assert_eq!(
        (run["output"].as_str(), run["cost"].as_str()),
        (Some("Hello world"), Some("0.000025"))
    );

    // The fake's 401 quotes the key it was sent; Hearth must not pass it on.
    let leaky = json!({"model": format!("oa/{LEAKY_MODEL}"), "messages": [{"role": "user", "content": "Hi"}]});
    let resp = post(&daemon, "/v1/chat/completions", leaky);
    assert!(resp.status().is_client_error());
    let leaky_run = header(&resp, "x-hearth-run-id");
    let body = resp.text().unwrap();
    assert!(!body.contains(SECRET_KEY) && body.contains("[redacted]"), "{body}");
    let status = client().get(daemon.url(&format!("/v1/runs/{leaky_run}"))).send().unwrap();
    let status = status.text().unwrap();
    assert!(!status.contains(SECRET_KEY), "{status}");
    let by_route = get_json(&daemon, "/v1/usage?group_by=route").to_string();
    assert!(!by_route.contains(SECRET_KEY));
    let before = requests_by_model(&daemon, 5);
    assert_eq!(before.iter().map(|(_, n)| n).sum::<u64>(), 5, "{before:?}");

    assert!(daemon.stop().success());
    daemon.all_logs().iter().for_each(|line| assert!(!line.contains(SECRET_KEY), "{line}"));

    // Shutdown waited for every run's record: a fresh daemon on the same ledger sees them all.
    let again = start(&config);
    assert_eq!(requests_by_model(&again, 5), before);
}

#[test]
fn a_config_error_names_its_key_path_and_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hearth.toml");
    std::fs::write(&config, "[[models]]\nid = \"x\"\nroutes = [\"nope/model\"]\n").unwrap();
    let out = std::process::Command::new(common::hearth_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--device", "cpu", "--config"])
        .arg(&config)
        .args(["--model", tiny_llama().to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("models[0].routes[0]: provider `nope`"), "{stderr}");
}
