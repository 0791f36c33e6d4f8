//! Logging controls through the real binary, in front of a fake upstream: payloads are absent by
//! default, stored when a request asks (and never with the provider's key), readable and
//! deletable through the admin API, deleted by retention (count, then age), and a request that
//! asks that nothing be kept leaves only its ledger record.

mod common;
mod gateway_support;

use std::time::Duration;

use common::Daemon;
use gateway_support::{FakeUpstream, KEY_ENV, SECRET_KEY};
use serde_json::{json, Value};

const TOKEN: &str = "logging-controls-token";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// A daemon over the fake upstream, with `logging` appended to its `hearth.toml`.
fn start(fake: &FakeUpstream, dir: &std::path::Path, logging: &str) -> Daemon {
    let config = fake.write_config(dir);
    let text = std::fs::read_to_string(&config).unwrap() + logging;
    std::fs::write(&config, text).unwrap();
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let args = ["--models", models.to_str().unwrap(), "--config", &config];
    Daemon::start_with_env(&args, &[(KEY_ENV, SECRET_KEY), ("HEARTH_ADMIN_TOKEN", TOKEN)])
}

/// A chat request with `headers`; answers the run id.
fn chat(daemon: &Daemon, text: &str, headers: &[(&str, &str)]) -> String {
    let mut request = client().post(daemon.url("/v1/chat/completions")).json(&json!({
        "model": "chat", "messages": [{"role": "user", "content": text}]
    }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), 200);
    let run_id = response.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello world");
    run_id
}

fn admin(daemon: &Daemon, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = client().request(method, daemon.url(path)).bearer_auth(TOKEN).send().unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

fn payload(daemon: &Daemon, run_id: &str) -> (u16, Value) {
    admin(daemon, reqwest::Method::GET, &format!("/admin/runs/{run_id}/payload"))
}

#[test]
fn payloads_are_kept_only_when_asked_never_hold_the_key_and_can_be_deleted() {
    let fake = FakeUpstream::start(&["Hello", " world"], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&fake, dir.path(), "");

    // By default: the ledger record, no payload, and a 404 that says how to get one.
    let plain = chat(&daemon, "nothing kept", &[]);
    let (status, body) = payload(&daemon, &plain);
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("x-hearth-collect-log-payload"), "{body}");
    let (_, run) = admin(&daemon, reqwest::Method::GET, &format!("/admin/runs/{plain}"));
    assert_eq!(run["record"]["status"], "finished", "{run}");

    // Asked for: the request as sent and the answer as received, and never the provider key.
    let kept = chat(&daemon, "keep me", &[("x-hearth-collect-log-payload", "true")]);
    let (status, stored) = payload(&daemon, &kept);
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["run_id"], json!(kept));
    assert_eq!(stored["request"]["model"], "chat");
    assert!(stored["request"].to_string().contains("keep me"), "{stored}");
    assert!(stored["response"].to_string().contains("Hello world"), "{stored}");
    assert!(!stored.to_string().contains(SECRET_KEY), "the provider key was stored: {stored}");

    // Deleted through the admin API: gone, and a second delete says so.
    let path = format!("/admin/runs/{kept}/payload");
    assert_eq!(admin(&daemon, reqwest::Method::DELETE, &path).0, 204);
    assert_eq!(payload(&daemon, &kept).0, 404);
    assert_eq!(admin(&daemon, reqwest::Method::DELETE, &path).0, 404);

    // Nothing kept: no payload even when asked for one, no run left to resume or read, and
    // still the billing record.
    let headers = [("x-hearth-collect-log", "false"), ("x-hearth-collect-log-payload", "true")];
    let forgotten = chat(&daemon, "forget me", &headers);
    assert_eq!(payload(&daemon, &forgotten).0, 404);
    let events = client().get(daemon.url(&format!("/v1/runs/{forgotten}/events"))).send().unwrap();
    assert_eq!(events.status(), 404, "the run's events are gone once its caller has them");
    let (_, run) = admin(&daemon, reqwest::Method::GET, &format!("/admin/runs/{forgotten}"));
    assert_eq!(run["record"]["status"], "finished", "{run}");
    assert_eq!(run["record"]["output_tokens"], 7, "{run}");
    assert!(run["status"].is_null(), "{run}");

    // A header that is neither true nor false is refused by name.
    let bad = client()
        .post(daemon.url("/v1/chat/completions"))
        .header("x-hearth-collect-log", "sometimes")
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().unwrap();
    assert!(error.to_string().contains("x-hearth-collect-log"), "{error}");
}

#[test]
fn retention_deletes_the_oldest_payloads_by_count_then_by_age() {
    let fake = FakeUpstream::start(&["Hello", " world"], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let logging = "\n[logging]\npayloads = true\nmax_payloads = 2\npayload_max_age_secs = 3\n";
    let daemon = start(&fake, dir.path(), logging);

    let first: Vec<String> = (0..3).map(|i| chat(&daemon, &format!("turn {i}"), &[])).collect();
    // Each answer's payload lands in the ledger's next batch; a read waits for it.
    assert_eq!(payload(&daemon, &first[2]).0, 200);
    assert_eq!(payload(&daemon, &first[1]).0, 200);
    assert_eq!(payload(&daemon, &first[0]).0, 404, "the oldest goes past the count");
    // An opt-out still wins over `payloads = true`.
    let opted_out = chat(&daemon, "not this one", &[("x-hearth-collect-log-payload", "false")]);
    assert_eq!(payload(&daemon, &opted_out).0, 404);

    // Past the age, the next batch's retention deletes the rest.
    std::thread::sleep(Duration::from_secs(4));
    let last = chat(&daemon, "after a while", &[]);
    assert_eq!(payload(&daemon, &last).0, 200);
    for old in &first[1..] {
        assert_eq!(payload(&daemon, old).0, 404, "{old} outlived its age");
    }
}
