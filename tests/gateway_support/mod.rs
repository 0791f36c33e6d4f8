//! A fake upstream provider for the end-to-end gateway tests: a plain TCP server on 127.0.0.1
//! that answers OpenAI chat completions and Anthropic messages with hand-written SSE frames
//! (shaped like the vendors' own), and a model that echoes the API key it was sent, as some
//! providers do in their 401s.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// The key the daemon is given for the fake; it must never come back out.
pub const SECRET_KEY: &str = "sk-e2e-secret-never-shown";
/// The environment variable the daemon reads the key from.
pub const KEY_ENV: &str = "HEARTH_E2E_UPSTREAM_KEY";
/// A model name that makes the fake answer 401 with the key in its message.
pub const LEAKY_MODEL: &str = "leaky";

pub struct FakeUpstream {
    pub addr: String,
    calls: Arc<AtomicUsize>,
}

impl FakeUpstream {
    /// Answers with `texts`, one delta each, waiting `gap` between frames.
    pub fn start(texts: &'static [&'static str], gap: Duration) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake upstream");
        let addr = listener.local_addr().expect("local addr").to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    // A client that goes away mid-answer is not the fake's problem.
                    let _ = answer(stream, texts, gap);
                });
            }
        });
        FakeUpstream { addr, calls }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Writes a `hearth.toml` into `dir` with providers `oa` (OpenAI wire) and `an`
    /// (Anthropic wire) on this fake, model `chat` routed to `oa/gpt-fake`, and the ledger at
    /// `dir/ledger.sqlite`; returns the file's path.
    pub fn write_config(&self, dir: &Path) -> String {
        let text = format!(
            r#"
[gateway]
ledger_path = "{ledger}"
retry_attempts = 1

[[providers]]
name = "oa"
kind = "openai"
base_url = "http://{addr}/v1"
api_key_env = "{KEY_ENV}"

[[providers]]
name = "an"
kind = "anthropic"
base_url = "http://{addr}"
api_key_env = "{KEY_ENV}"

[[models]]
id = "chat"
routes = ["oa/gpt-fake"]
input_price_per_mtok = 1
output_price_per_mtok = 2
"#,
            ledger = dir.join("ledger.sqlite").display(),
            addr = self.addr,
        );
        let path = dir.join("hearth.toml");
        std::fs::write(&path, text).expect("write hearth.toml");
        path.display().to_string()
    }
}

fn answer(stream: TcpStream, texts: &[&str], gap: Duration) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push(line);
    }
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let anthropic = head.first().is_some_and(|l| l.contains("/messages"));
    let mut out = stream;
    if request["model"] == LEAKY_MODEL {
        let key = header("x-api-key").or_else(|| header("authorization")).unwrap_or_default();
        let body = json!({"error": {"message": format!("Incorrect API key provided: {key}"), "type": "invalid_request_error"}});
        let body = body.to_string();
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    write!(out, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")?;
    let frames = if anthropic { anthropic_frames(texts) } else { openai_frames(texts) };
    for frame in frames {
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        std::thread::sleep(gap);
    }
    Ok(())
}

/// Usage: 11 prompt tokens, 7 completion tokens.
fn openai_frames(texts: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    out.extend(texts.iter().map(|t| chunk(json!({"content": t}), Value::Null)));
    out.push(chunk(json!({}), json!("stop")));
    let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-fake", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
    out.push(format!("data: {usage}\n\n"));
    out.push("data: [DONE]\n\n".to_owned());
    out
}

fn anthropic_frames(texts: &[&str]) -> Vec<String> {
    let event = |name: &str, value: Value| format!("event: {name}\ndata: {value}\n\n");
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1",
            "type": "message", "role": "assistant", "model": "claude-fake", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    out.extend(texts.iter().map(|t| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": t}}),
        )
    }));
    out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    out.push(event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}})));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}
