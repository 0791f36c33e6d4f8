//! The OpenAI-compatible surface, driven over HTTP against the real binary.

mod common;

use common::{parse_sse, tiny_llama, Daemon};
use serde_json::{json, Value};

fn serve_tiny() -> Daemon {
    Daemon::start(&["--model", tiny_llama().to_str().unwrap()])
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
}

fn completion_text(daemon: &Daemon, prompt: &str, max_tokens: usize) -> String {
    let body = json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
    let resp: Value =
        client().post(daemon.url("/v1/completions")).json(&body).send().unwrap().json().unwrap();
    resp["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {resp}")).to_string()
}

/// Streams a chat completion and returns (content, finish_reason, usage chunk).
fn stream_chat(daemon: &Daemon, content: &str, max_tokens: usize) -> (String, String, Value) {
    let body = json!({
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = client().post(daemon.url("/v1/chat/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = resp.text().unwrap();
    let events = parse_sse(&text);
    assert_eq!(
        events.last().map(|(_, d)| d.as_str()),
        Some("[DONE]"),
        "stream must end with [DONE]: {text}"
    );
    let mut content = String::new();
    let mut finish = String::new();
    let mut usage = Value::Null;
    for (_, data) in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(choice) = chunk["choices"].get(0) {
            content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = reason.to_string();
            }
        } else {
            usage = chunk["usage"].clone();
        }
    }
    (content, finish, usage)
}

#[test]
fn chat_completion_non_streaming_reports_usage() {
    let daemon = serve_tiny();
    let body = json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0});
    let resp = client().post(daemon.url("/v1/chat/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&completion), "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
}

#[test]
fn streamed_chat_equals_non_streamed_and_carries_usage() {
    let daemon = serve_tiny();
    let body = json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 24, "temperature": 0});
    let whole: Value = client()
        .post(daemon.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let (streamed, finish, usage) = stream_chat(&daemon, "Tell me a story", 24);
    assert_eq!(streamed, whole["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(finish, whole["choices"][0]["finish_reason"].as_str().unwrap());
    assert_eq!(usage["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);
}

#[test]
fn concurrent_streams_of_different_lengths_match_their_single_outputs() {
    let daemon = serve_tiny();
    let cases: Vec<(String, usize)> = (0..6)
        .map(|i| (format!("Request number {i}: {}", "words ".repeat(i * 7)), 8 + i * 9))
        .collect();
    let single: Vec<(String, String, Value)> =
        cases.iter().map(|(p, n)| stream_chat(&daemon, p, *n)).collect();
    let concurrent: Vec<(String, String, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> =
            cases.iter().map(|(p, n)| s.spawn(|| stream_chat(&daemon, p, *n))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (one, many)) in single.iter().zip(&concurrent).enumerate() {
        assert_eq!(one.0, many.0, "request {i}: batched output differs from its single output");
        assert_eq!(one.1, many.1, "request {i}: finish reason differs");
        // Token counts match; how many prompt tokens came from the prefix cache depends on
        // what ran before, so `prompt_tokens_details` may differ.
        for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(one.2[field], many.2[field], "request {i}: usage `{field}` differs");
        }
    }
}

#[test]
fn completions_honour_max_tokens_stop_and_seed() {
    let daemon = serve_tiny();
    let greedy = completion_text(&daemon, "The quick brown fox", 16);
    assert_eq!(
        greedy,
        completion_text(&daemon, "The quick brown fox", 16),
        "greedy is deterministic"
    );

    let sampled = |seed: u64| -> String {
        let body = json!({"model": "tiny-llama", "prompt": "Once upon", "max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": seed});
        let v: Value = client()
            .post(daemon.url("/v1/completions"))
            .json(&body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(sampled(7), sampled(7), "same seed, same output");

    // Stop at a piece of the greedy output: the result is the text before it.
    let chars: Vec<char> = greedy.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[2..4].iter().collect();
        let body = json!({"model": "tiny-llama", "prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0, "stop": [stop]});
        let v: Value = client()
            .post(daemon.url("/v1/completions"))
            .json(&body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(
            greedy.starts_with(text) && !text.contains(&stop),
            "{text:?} vs {greedy:?} stop {stop:?}"
        );
    }
}

#[test]
fn models_are_listed() {
    let daemon = serve_tiny();
    let v: Value = client().get(daemon.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "tiny-llama"), "{v}");
}
