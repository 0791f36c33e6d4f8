//! Two `hearth serve` replicas sharing their run buffers in Redis and their ledger in
//! PostgreSQL: a run streamed from replica A is resumed on replica B, while A goes on and after
//! A is killed with SIGKILL mid-stream, and each run has exactly one ledger record.

mod common;
#[path = "common/shared_state.rs"]
mod shared_state;

use std::io::Read;
use std::time::Duration;

use common::{parse_sse, tiny_llama, Daemon};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

fn get_json(daemon: &Daemon, path: &str) -> Value {
    client().get(daemon.url(path)).send().unwrap().json().unwrap()
}

/// `(event seq, whole frame)` of each frame of an SSE text; a frame's id is its event's seq,
/// or `seq.N` for the event's later frames.
fn frames(text: &str) -> Vec<(u64, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let id = block.lines().find_map(|l| l.strip_prefix("id: "))?;
            let seq = id.split('.').next()?.parse().ok()?;
            Some((seq, block.to_owned()))
        })
        .collect()
}

fn frame_id(frame: &str) -> &str {
    frame.lines().find_map(|l| l.strip_prefix("id: ")).unwrap_or_default()
}

/// Starts a long greedy stream on `daemon` and reads whole frames until it holds events 0..=5;
/// returns the run id, the response (still open) and the frames read.
fn start_stream(daemon: &Daemon) -> (String, reqwest::blocking::Response, Vec<(u64, String)>) {
    let body = json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "Keep talking"}],
        "max_tokens": 1500, "ignore_eos": true, "temperature": 0, "stream": true});
    let mut resp = client().post(daemon.url("/v1/chat/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
    let run_id = resp.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    let mut text = String::new();
    let mut buf = [0u8; 512];
    let seen = loop {
        let n = resp.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let whole = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
        let seen = frames(whole);
        if seen.last().is_some_and(|(seq, _)| *seq >= 5) {
            break seen;
        }
    };
    (run_id, resp, seen)
}

/// The frames after `last_id`, read from `daemon` with `Last-Event-ID`.
fn resume(daemon: &Daemon, run_id: &str, last_id: &str) -> String {
    let url = daemon.url(&format!("/v1/runs/{run_id}/events"));
    client().get(url).header("last-event-id", last_id).send().unwrap().text().unwrap()
}

fn ledger_status(daemon: &Daemon, run_id: &str) -> Value {
    for _ in 0..200 {
        let status = get_json(daemon, &format!("/v1/runs/{run_id}"));
        if !status["ledger"].is_null() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("run {run_id} never got its ledger record");
}

#[test]
fn runs_resume_on_another_replica_and_a_killed_replica_leaves_one_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        shared_state::write_config(dir.path(), &shared_state::fresh_ledger_url(), 1_000, "");
    let model = tiny_llama();
    let args = ["--config", config.to_str().unwrap(), "--model", model.to_str().unwrap()];
    let mut a = Daemon::start(&args);
    let b = Daemon::start(&args);

    // A lives: the rest comes from B exactly once, ending as the whole stream does.
    let (run_id, resp, seen) = start_stream(&a);
    drop(resp);
    let last = frame_id(&seen.last().unwrap().1).to_owned();
    let rest = resume(&b, &run_id, &last);
    assert_eq!(parse_sse(&rest).last().map(|(_, d)| d.as_str()), Some("[DONE]"), "{rest}");
    let replay = frames(
        &client().get(b.url(&format!("/v1/runs/{run_id}/events"))).send().unwrap().text().unwrap(),
    );
    let mut joined = seen.clone();
    joined.extend(frames(&rest));
    assert_eq!(joined, replay, "what A sent plus what B sent is the whole stream, each frame once");
    let done = ledger_status(&b, &run_id);
    assert_eq!(done["ledger"]["status"], "finished", "{done}");
    assert_eq!(done["status"], "finished", "{done}");

    // The response cache: a miss on A is a hit on B, kept whole and replayed as a stream.
    let ask = |daemon: &Daemon, stream: bool, ttl: &str| {
        let body = json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "Cache me"}],
            "max_tokens": 12, "temperature": 0, "stream": stream});
        let url = daemon.url("/v1/chat/completions");
        client().post(url).header("x-hearth-cache-ttl", ttl).json(&body).send().unwrap()
    };
    let miss = ask(&a, false, "60");
    assert_eq!(miss.headers()["x-hearth-cache-status"], "MISS");
    let miss_run = miss.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    let whole: Value = miss.json().unwrap();
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let hit = ask(&b, true, "60");
    assert_eq!(hit.headers()["x-hearth-cache-status"], "HIT");
    assert_eq!(hit.headers()["x-hearth-route"], "cache");
    let streamed: String = parse_sse(&hit.text().unwrap())
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, text);
    let bad = ask(&b, false, "forever");
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().unwrap();
    assert!(bad.to_string().contains("x-hearth-cache-ttl"), "{bad}");

    // A's ledger writes are batched (a few ms): its record of the miss is in before A is killed,
    // so the count below is about the killed run alone.
    ledger_status(&a, &miss_run);

    // A is killed mid-stream: B sends the events A produced, then one error event.
    let (run_id, resp, seen) = start_stream(&a);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(resp);
    let last = frame_id(&seen.last().unwrap().1).to_owned();
    let rest = resume(&b, &run_id, &last);
    let rest = frames(&rest);
    let seqs: Vec<u64> = rest.iter().map(|(seq, _)| *seq).collect();
    let first_after = seen.last().unwrap().0 + 1;
    assert!(seqs.first().is_some_and(|s| *s >= first_after - 1), "{seqs:?}");
    let ids: Vec<&str> = seen.iter().chain(&rest).map(|(_, f)| frame_id(f)).collect();
    let unique_ids: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique_ids.len(), ids.len(), "no frame twice: {ids:?}");
    let errors: Vec<&String> =
        rest.iter().map(|(_, f)| f).filter(|f| f.contains("\"error\"")).collect();
    assert_eq!(errors.len(), 1, "one explicit error event: {rest:?}");
    assert!(errors[0].contains("stopped"), "{}", errors[0]);
    assert!(rest.last().unwrap().1.contains("\"error\""), "the error event is last: {rest:?}");
    let failed = ledger_status(&b, &run_id);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["ledger"]["status"], "failed", "{failed}");

    // Exactly one record per run in the shared ledger.
    let total_of = |usage: &Value| -> u64 {
        usage["data"].as_array().unwrap().iter().filter_map(|g| g["requests"].as_u64()).sum()
    };
    let mut usage = get_json(&b, "/v1/usage?group_by=model");
    for _ in 0..50 {
        if total_of(&usage) >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        usage = get_json(&b, "/v1/usage?group_by=model");
    }
    let total = total_of(&usage);
    assert_eq!(total, 4, "two streams and two cache requests (the hit at zero cost): {usage}");
}
