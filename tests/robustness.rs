//! Bad input, broken packages and shutdown: the daemon answers clearly and keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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

/// The stream is shown to be running when the signal comes: chunks keep arriving after it,
/// and the stream still ends with all its tokens and `[DONE]`.
#[test]
fn sigterm_lets_an_in_flight_stream_finish_then_exits_cleanly() {
    let daemon = Daemon::start(&["--model", tiny_llama().to_str().unwrap()]);
    let body = json!({"model": "tiny-llama", "prompt": "Tell me everything", "max_tokens": 1500, "ignore_eos": true, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let resp = client().post(daemon.url("/v1/completions")).json(&body).send().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(resp)) {
            let line = line?;
            if line.starts_with("data: ") {
                let _ = first_tx.send(());
                lines.push((Instant::now(), line));
            }
        }
        Ok::<_, std::io::Error>(lines)
    });
    first_rx.recv_timeout(Duration::from_secs(120)).expect("the stream started");
    let signalled_at = Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "hearth exited with {status}");
    let lines = reader.join().unwrap().expect("the stream ends cleanly");
    let after_signal = lines.iter().filter(|(at, _)| *at > signalled_at).count();
    assert!(after_signal > 1, "only {after_signal} frames came after the signal");
    assert_eq!(lines.last().unwrap().1, "data: [DONE]", "the in-flight stream should finish");
    let usage: Value =
        serde_json::from_str(lines[lines.len() - 2].1.trim_start_matches("data: ")).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 1500, "{usage}");
}

/// A SIGTERM that finds no connection open ends the HTTP server at once, in the same instant as
/// the signal; it is still a shutdown, with the grace period for runs that go on without a
/// client. (Which of the two the server saw first used to be chance: it logged "stopped without
/// a shutdown signal" and skipped the drain in about half of such shutdowns.)
#[test]
fn sigterm_with_no_connection_open_still_drains() {
    for attempt in 0..6 {
        let mut daemon = Daemon::start(&["--model", tiny_llama().to_str().unwrap()]);
        let status = daemon.stop();
        assert!(status.success(), "attempt {attempt}: hearth exited with {status}");
        // The first "stopped" comes after either outcome's line: all of it has been read then.
        daemon.wait_for_log("stopped", Duration::from_secs(60));
        let logs = daemon.all_logs().join("\n");
        assert!(!logs.contains("without a shutdown signal"), "attempt {attempt}: {logs}");
        assert!(logs.contains("waiting for in-flight requests"), "attempt {attempt}: {logs}");
    }
}

/// A daemon over the tiny model with `server` as the `[server]` section of its hearth.toml.
fn daemon_with_server_config(server: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hearth.toml");
    std::fs::write(&config, format!("[server]\n{server}\n")).unwrap();
    let model = tiny_llama();
    let args = ["--model", model.to_str().unwrap(), "--config", config.to_str().unwrap()];
    (Daemon::start(&args), dir)
}

fn connect(daemon: &Daemon) -> TcpStream {
    let stream = TcpStream::connect(daemon.base.trim_start_matches("http://")).unwrap();
    // A bound on this test's own wait, far above the server's timeouts.
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream
}

/// Reads until the server closes the connection; what it sent, or an error if it never closed.
fn read_until_closed(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[test]
fn silent_and_stalled_connections_are_closed_by_the_server() {
    let (daemon, _config) =
        daemon_with_server_config("header_read_timeout_secs = 1\nbody_read_timeout_secs = 1");
    // Connected, never a byte sent.
    let mut silent = connect(&daemon);
    // Half a request head.
    let mut half_head = connect(&daemon);
    half_head.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A whole head, then a body that stops after 10 of its 100 bytes.
    let mut stalled_body = connect(&daemon);
    stalled_body
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"model\": ",
        )
        .unwrap();
    // An idle kept-alive connection, after one answered request.
    let mut idle = connect(&daemon);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();

    assert_eq!(read_until_closed(&mut silent).expect("the server closes a silent connection"), "");
    let answer = read_until_closed(&mut half_head).expect("the server closes a half-sent head");
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    let answer = read_until_closed(&mut stalled_body).expect("the server ends a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("stopped arriving"), "{answer}");
    let answer = read_until_closed(&mut idle).expect("the server closes an idle connection");
    assert!(answer.starts_with("HTTP/1.1 200"), "the request itself was answered: {answer}");
    assert_still_serving(&daemon);
}

#[test]
fn connections_over_the_limit_get_a_503_and_the_rest_are_served() {
    let (daemon, _config) = daemon_with_server_config("max_connections = 3");
    // Three silent connections take every slot (the server accepts in arrival order, so they
    // are counted before the fourth).
    let held: Vec<TcpStream> = (0..3).map(|_| connect(&daemon)).collect();
    let mut over = connect(&daemon);
    let answer = read_until_closed(&mut over).expect("the server answers and closes");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1") && answer.contains("limit of 3"), "{answer}");

    drop(held);
    // Once the server has seen them close, their slots serve new connections again.
    let mut served = false;
    for _ in 0..100 {
        let mut next = connect(&daemon);
        next.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        if read_until_closed(&mut next).unwrap().starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "freed slots were never reused");
}

/// Tokenizing a 5 MB prompt takes seconds of CPU; it runs off the async workers, so the daemon
/// answers everything else meanwhile.
#[test]
fn health_answers_while_huge_prompts_are_tokenized_and_refused() {
    let daemon = Daemon::start(&["--model", tiny_llama().to_str().unwrap()]);
    let huge = json!({"model": "tiny-llama", "prompt": "word ".repeat(1 << 20), "max_tokens": 4});
    let url = daemon.url("/v1/completions");
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (url, huge) = (url.clone(), huge.clone());
            std::thread::spawn(move || client().post(url).json(&huge).send().unwrap().status())
        })
        .collect();
    let mut during = Vec::new();
    while !senders.iter().all(|s| s.is_finished()) {
        let started = Instant::now();
        assert_eq!(client().get(daemon.url("/health")).send().unwrap().status(), 200);
        if !senders.iter().all(|s| s.is_finished()) {
            during.push(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for sender in senders {
        assert_eq!(sender.join().unwrap(), 400, "a prompt over the context is refused");
    }
    during.sort();
    assert!(!during.is_empty(), "the prompts were refused before any health check ran");
    let (median, slowest) = (during[during.len() / 2], during[during.len() - 1]);
    eprintln!(
        "{} health checks while the prompts were tokenized; median {median:?}, slowest {slowest:?}",
        during.len()
    );
    assert!(median < Duration::from_millis(100), "median health check: {median:?}");
    assert!(slowest < Duration::from_millis(SLOWEST_BOUND_MS), "slowest health check: {slowest:?}");
}

/// Before tokenizing moved off the async workers, every health check meanwhile waited out a
/// whole tokenization (about 3 s). The median is held to 100 ms; a single check is allowed
/// more, since this test shares two cores with another test's daemon.
const SLOWEST_BOUND_MS: u64 = 500;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
