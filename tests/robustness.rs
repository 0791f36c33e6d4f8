//! Bad input, broken packages and shutdown: the daemon answers clearly and keeps serving.

mod common;

use std::io::Read;

use common::{tiny_llama, Daemon};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
}

fn assert_still_serving(daemon: &Daemon) {
    let body = json!({"model": "tiny-llama", "prompt": "still there?", "max_tokens": 4});
    let resp = client().post(daemon.url("/v1/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn bad_openai_inputs_get_a_clear_4xx() {
    let daemon = Daemon::start(&["--model", tiny_llama().to_str().unwrap()]);
    let long_prompt = "word ".repeat(5000);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400, "JSON"),
        ("/v1/chat/completions", json!({"model": "tiny-llama", "messages": "hi"}).to_string(), 400, "messages"),
        ("/v1/chat/completions", json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}).to_string(), 400, "temperature"),
        ("/v1/chat/completions", json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "top_p": 7}).to_string(), 400, "top_p"),
        ("/v1/chat/completions", json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 404, "no-such-model"),
        ("/v1/completions", json!({"model": "tiny-llama", "prompt": long_prompt}).to_string(), 400, "context"),
        ("/v1/completions", json!({"model": "tiny-llama", "prompt": "x", "max_tokens": "many"}).to_string(), 400, "max_tokens"),
        ("/v1/completions", json!({"model": "tiny-llama", "prompt": [999999]}).to_string(), 400, "999999"),
    ];
    for (path, body, status, needle) in cases {
        let resp = client()
            .post(daemon.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path} {body}");
        let v: Value =
            resp.json().unwrap_or_else(|e| panic!("{path} {body}: body is not JSON: {e}"));
        let message =
            v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {v}"));
        assert!(message.contains(needle), "{path}: `{message}` should mention `{needle}`");
    }
    assert_still_serving(&daemon);
}

#[test]
fn a_broken_package_is_refused_and_the_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("tiny-llama");
    let broken = dir.path().join("broken");
    copy_dir(&tiny_llama(), &good);
    copy_dir(&tiny_llama(), &broken);
    let weights = broken.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(len / 2).unwrap();

    let daemon =
        Daemon::start(&["--models", dir.path().to_str().unwrap(), "--default-model", "tiny-llama"]);
    let health: Value = client().get(daemon.url("/health")).send().unwrap().json().unwrap();
    assert_eq!(health["models"]["tiny-llama"]["state"], "ready", "{health}");
    assert_eq!(health["models"]["broken"]["state"], "failed", "{health}");
    let reason = health["models"]["broken"]["reason"].as_str().unwrap();
    assert!(reason.contains("model.safetensors"), "reason should name the file: {reason}");
    assert_still_serving(&daemon);
}

#[test]
fn sigterm_lets_an_in_flight_stream_finish_then_exits_cleanly() {
    let daemon = Daemon::start(&["--model", tiny_llama().to_str().unwrap()]);
    let body = json!({"model": "tiny-llama", "prompt": "Tell me everything", "max_tokens": 300, "ignore_eos": true, "stream": true});
    let mut resp = client().post(daemon.url("/v1/completions")).json(&body).send().unwrap();
    let mut first = [0u8; 64];
    assert!(resp.read(&mut first).unwrap() > 0);
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        resp.read_to_string(&mut rest).map(|_| rest)
    });
    let status = daemon.terminate();
    assert!(status.success(), "hearth exited with {status}");
    let rest = reader.join().unwrap().expect("the stream ends cleanly");
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "the in-flight stream should finish: …{}",
        &rest[rest.len().saturating_sub(200)..]
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
