//! The OpenAI-compatible surface, driven over HTTP against the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Instant;

use common::{tiny_llama, Daemon};
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

/// A streamed chat completion as the client saw it.
struct Streamed {
    content: String,
    finish: String,
    usage: Value,
    /// When the first content arrived and when the stream ended.
    first_content_at: Option<Instant>,
    ended_at: Instant,
}

/// Streams a chat completion, reading each frame as it arrives. With `ignore_eos` the answer
/// has exactly `max_tokens` tokens.
fn stream_chat_with(
    daemon: &Daemon,
    content: &str,
    max_tokens: usize,
    ignore_eos: bool,
) -> Streamed {
    let body = json!({
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": ignore_eos,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = client().post(daemon.url("/v1/chat/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut streamed = Streamed {
        content: String::new(),
        finish: String::new(),
        usage: Value::Null,
        first_content_at: None,
        ended_at: Instant::now(),
    };
    let mut done = false;
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else { continue };
        assert!(!done, "a frame after [DONE]: {data}");
        if data == "[DONE]" {
            done = true;
            streamed.ended_at = Instant::now();
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let Some(choice) = chunk["choices"].get(0) else {
            streamed.usage = chunk["usage"].clone();
            continue;
        };
        let text = choice["delta"]["content"].as_str().unwrap_or("");
        if !text.is_empty() && streamed.first_content_at.is_none() {
            streamed.first_content_at = Some(Instant::now());
        }
        streamed.content.push_str(text);
        if let Some(reason) = choice["finish_reason"].as_str() {
            streamed.finish = reason.to_string();
        }
    }
    assert!(done, "stream must end with [DONE]");
    streamed
}

/// (content, finish_reason, usage chunk) of a streamed chat completion.
fn stream_chat(daemon: &Daemon, content: &str, max_tokens: usize) -> (String, String, Value) {
    let s = stream_chat_with(daemon, content, max_tokens, false);
    (s.content, s.finish, s.usage)
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

/// Continuous batching must not change what a sequence generates: six streams of different
/// lengths, run alone and then all at once, give the same text. Each generates exactly its
/// `max_tokens` (so there is text to compare), and the concurrent ones are shown to have run
/// together: every stream had its first content before any stream ended.
#[test]
fn concurrent_streams_of_different_lengths_match_their_single_outputs() {
    let daemon = serve_tiny();
    let cases: Vec<(String, usize)> = (0..6)
        .map(|i| (format!("Request number {i}: {}", "words ".repeat(i * 7)), 64 + i * 24))
        .collect();
    let run = |(p, n): &(String, usize)| stream_chat_with(&daemon, p, *n, true);
    let single: Vec<Streamed> = cases.iter().map(run).collect();
    let concurrent: Vec<Streamed> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().map(|case| s.spawn(move || run(case))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let last_start = concurrent.iter().map(|s| s.first_content_at.unwrap()).max().unwrap();
    let first_end = concurrent.iter().map(|s| s.ended_at).min().unwrap();
    assert!(last_start < first_end, "the concurrent streams did not overlap");
    for (i, ((one, many), (_, n))) in single.iter().zip(&concurrent).zip(&cases).enumerate() {
        assert!(!one.content.is_empty(), "request {i} produced no text");
        assert_eq!(one.usage["completion_tokens"], *n, "request {i}: {} tokens", n);
        assert_eq!(
            one.content, many.content,
            "request {i}: batched output differs from its single output"
        );
        assert_eq!(one.finish, many.finish, "request {i}: finish reason differs");
        // Token counts match; how many prompt tokens came from the prefix cache depends on
        // what ran before, so `prompt_tokens_details` may differ.
        for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(one.usage[field], many.usage[field], "request {i}: usage `{field}` differs");
        }
    }
}

/// A whole completion: (text, finish_reason, completion_tokens).
fn complete(daemon: &Daemon, body: Value) -> (String, String, u64) {
    let v: Value =
        client().post(daemon.url("/v1/completions")).json(&body).send().unwrap().json().unwrap();
    let choice = &v["choices"][0];
    let text = choice["text"].as_str().unwrap_or_else(|| panic!("no text in {v}")).to_owned();
    let tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or_else(|| panic!("{v}"));
    (text, choice["finish_reason"].as_str().unwrap_or("").to_owned(), tokens)
}

#[test]
fn completions_honour_max_tokens_stop_and_seed() {
    let daemon = serve_tiny();
    let prompt = "The quick brown fox";
    // `ignore_eos`: exactly `max_tokens` tokens, however early the model would end.
    let greedy_body = json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": true});
    let (greedy, finish, tokens) = complete(&daemon, greedy_body.clone());
    assert_eq!((finish.as_str(), tokens), ("length", 16), "max_tokens ends the completion");
    assert_eq!(complete(&daemon, greedy_body.clone()).0, greedy, "greedy is deterministic");

    // Sampled: the same seed gives the same text, other seeds other texts.
    let sampled = |seed: u64| {
        let body = json!({"model": "tiny-llama", "prompt": "Once upon", "max_tokens": 16, "temperature": 1.0, "seed": seed, "ignore_eos": true});
        complete(&daemon, body).0
    };
    let seven = sampled(7);
    assert_eq!(seven, sampled(7), "same seed, same output");
    let others: Vec<String> = (8..11).map(sampled).collect();
    assert!(others.iter().any(|o| *o != seven), "seeds 7..11 all gave {seven:?}");

    // Stop at a piece of the greedy output: the answer is the greedy text up to the stop
    // sequence's first occurrence, without it.
    let chars: Vec<char> = greedy.chars().collect();
    assert!(chars.len() >= 4, "16 greedy tokens gave too little text: {greedy:?}");
    let stop: String = chars[2..4].iter().collect();
    let mut body = greedy_body;
    body["stop"] = json!([stop]);
    let (text, finish, _) = complete(&daemon, body);
    assert_eq!(finish, "stop");
    let cut = greedy.find(&stop).expect("the stop sequence is in the greedy text");
    assert_eq!(text, greedy[..cut], "stop {stop:?} in {greedy:?}");
}

#[test]
fn models_are_listed() {
    let daemon = serve_tiny();
    let v: Value = client().get(daemon.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "tiny-llama"), "{v}");
}
