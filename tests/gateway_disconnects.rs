//! What a client that disconnects mid-stream does, surface by surface. A Cog prediction keeps
//! Cog's semantics: it is cancelled and the engine frees its sequence. An OpenAI chat completion
//! runs through the gateway: generation goes on into the run buffer, the client resumes from
//! the event where it left, and the run is billed once, in full.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{parse_sse, tiny_llama, Daemon};
use serde_json::{json, Value};

fn serve_tiny() -> Daemon {
    Daemon::start(&["--model", tiny_llama().to_str().unwrap()])
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

fn get_json(daemon: &Daemon, path: &str) -> Value {
    client().get(daemon.url(path)).send().unwrap().json().unwrap()
}

/// The ledger record is written just after the run's last event; waits for `n` of them.
fn wait_for_records(daemon: &Daemon, n: u64) -> Value {
    for _ in 0..200 {
        let usage = get_json(daemon, "/v1/usage?group_by=model");
        let total: u64 =
            usage["data"].as_array().unwrap().iter().filter_map(|g| g["requests"].as_u64()).sum();
        if total >= n {
            return usage;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the ledger never held {n} records");
}

#[test]
fn a_cog_client_that_disconnects_mid_stream_frees_its_sequence() {
    let daemon = serve_tiny();
    // Greedy: Cog's default temperature (0.7) samples tiny-llama's end-of-sequence token
    // within a few dozen tokens often enough that the request could end on its own before the
    // client leaves. Greedy decoding runs the whole 1,500 tokens (seconds), so only the
    // disconnect can end it early.
    let body = json!({"input": {"prompt": "Keep talking", "max_tokens": 1500, "temperature": 0}});
    let mut resp = client()
        .post(daemon.url("/predictions"))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Past `start`: an `output` event means the engine is generating.
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while !text.contains("event: output") {
        let n = resp.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let busy = get_json(&daemon, "/health");
    assert_eq!(busy["models"]["tiny-llama"]["running"], 1, "{busy}");
    assert!(busy["models"]["tiny-llama"]["kv_blocks_used"].as_u64().unwrap() > 0, "{busy}");
    drop(resp);

    // The engine logs the cancellation when it sees the closed stream; a sequence that merely
    // ran to its end would never log it.
    let mut daemon = daemon;
    daemon.wait_for_log("request cancelled by its caller", Duration::from_secs(120));
    let after = get_json(&daemon, "/health");
    let m = &after["models"]["tiny-llama"];
    assert_eq!(m["running"], 0, "{after}");
    assert_eq!(m["kv_blocks_used"], 0, "{after}");
}

/// `(id, data)` of each whole frame of an SSE text.
/// `(event seq, data)` of each frame. A frame's id is the event's seq, or `seq.N` for the
/// event's later frames (an event can be several frames: finish, usage and `[DONE]`).
fn frames(text: &str) -> Vec<(u64, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let id = block.lines().find_map(|l| l.strip_prefix("id: "))?;
            let id = id.split('.').next()?.parse().ok()?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((id, data.to_owned()))
        })
        .collect()
}

fn content(frames: &[(u64, String)]) -> String {
    frames
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_openai_chat_client_that_disconnects_resumes_from_event_k_billed_once() {
    let daemon = serve_tiny();
    let max_tokens = 1500;
    let body = json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "Keep talking"}],
        "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}});
    let mut resp = client().post(daemon.url("/v1/chat/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
    let run_id = resp.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();

    // Read whole frames until the client holds events 0..k, then leave.
    let mut text = String::new();
    let mut buf = [0u8; 512];
    let seen = loop {
        let n = resp.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let whole = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
        let seen = frames(whole);
        if seen.last().is_some_and(|(id, _)| *id >= 5) {
            break seen;
        }
    };
    drop(resp);
    let k = seen.last().unwrap().0 + 1;
    let status = get_json(&daemon, &format!("/v1/runs/{run_id}"));
    assert_eq!(status["status"], "running", "generation goes on without its client: {status}");

    let rest = client().get(daemon.url(&format!("/v1/runs/{run_id}/events?from={k}"))).send();
    let rest = rest.unwrap().text().unwrap();
    assert_eq!(parse_sse(&rest).last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let rest = frames(&rest);
    assert!(rest.iter().all(|(id, _)| *id >= k), "only events from k on");
    let replay = frames(
        &client()
            .get(daemon.url(&format!("/v1/runs/{run_id}/events")))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    let mut joined = seen.clone();
    joined.extend(rest.iter().cloned());
    assert_eq!(joined, replay, "what was seen plus the rest is the whole stream, each event once");
    assert!(content(&replay).len() > content(&seen).len());

    let usage_chunk: Value = serde_json::from_str(&rest[rest.len() - 2].1).unwrap();
    assert_eq!(usage_chunk["usage"]["completion_tokens"], max_tokens, "{usage_chunk}");
    let billed = wait_for_records(&daemon, 1);
    assert_eq!(billed["data"].as_array().unwrap().len(), 1, "{billed}");
    let row = &billed["data"][0];
    assert_eq!((row["key"].as_str(), row["requests"].as_u64()), (Some("tiny-llama"), Some(1)));
    assert_eq!(row["output_tokens"], max_tokens);
    assert_eq!(row["input_tokens"], usage_chunk["usage"]["prompt_tokens"]);
    let status = get_json(&daemon, &format!("/v1/runs/{run_id}"));
    assert_eq!(status["ledger"]["status"], "finished", "{status}");
}
