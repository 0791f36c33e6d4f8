//! A fake upstream provider on 127.0.0.1 speaking OpenAI's and Anthropic's streaming wire
//! formats (hand-written frames shaped like the vendors' own, not made by Hearth's encoders),
//! with faults injected on demand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The API key every test provider is configured with; it must never come back to a caller.
pub const SECRET_KEY: &str = "sk-test-secret-do-not-leak";

/// What the next call does; with an empty script calls answer normally.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    RateLimited {
        retry_after_secs: u64,
    },
    /// 401 whose body echoes the key it was sent, as some providers do.
    EchoKey,
    /// The first `n` frames, then the connection breaks.
    ResetAfter(usize),
    /// The first `n` frames, then waits for the notify before the rest.
    PauseAfter(usize, Arc<Notify>),
}

#[derive(Clone)]
pub struct FakeProvider {
    pub addr: std::net::SocketAddr,
    state: Arc<FakeState>,
}

struct FakeState {
    texts: Vec<&'static str>,
    calls: AtomicUsize,
    /// The path of every call, in order.
    paths: Mutex<Vec<String>>,
    script: Mutex<VecDeque<Fault>>,
}

impl FakeProvider {
    /// A provider whose answers are `texts`, one delta each.
    pub async fn start(texts: &[&'static str]) -> FakeProvider {
        let state = Arc::new(FakeState {
            texts: texts.to_vec(),
            calls: AtomicUsize::new(0),
            paths: Mutex::default(),
            script: Mutex::default(),
        });
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProvider { addr, state }
    }

    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn anthropic_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, fault: Fault) -> &Self {
        self.state.script.lock().unwrap().push_back(fault);
        self
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The path of every call so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }
}

async fn handle(State(state): State<Arc<FakeState>>, uri: Uri, headers: HeaderMap) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    state.paths.lock().unwrap().push(uri.path().to_owned());
    let anthropic = uri.path().ends_with("/messages");
    let fault = state.script.lock().unwrap().pop_front();
    let frames = if anthropic {
        anthropic_frames(&state.texts)
    } else if uri.path().ends_with("/responses") {
        responses_frames(&state.texts)
    } else {
        openai_frames(&state.texts)
    };
    match fault {
        None => sse(frames, usize::MAX, None),
        Some(Fault::Status(status)) => error_response(anthropic, status, "scripted failure"),
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = error_response(anthropic, 429, "rate limited");
            response.headers_mut().insert("retry-after", retry_after_secs.into());
            response
        }
        Some(Fault::EchoKey) => {
            let key = headers
                .get("x-api-key")
                .or_else(|| headers.get("authorization"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            error_response(anthropic, 401, &format!("Incorrect API key provided: {key}"))
        }
        Some(Fault::ResetAfter(n)) => sse(frames, n, None),
        Some(Fault::PauseAfter(n, gate)) => sse(frames, n, Some(gate)),
    }
}

type Chunk = Result<Bytes, std::io::Error>;

/// The first `n` frames; then the rest after `gate` fires, or (no gate, frames left) a reset.
fn sse(frames: Vec<String>, n: usize, gate: Option<Arc<Notify>>) -> Response {
    let split = n.min(frames.len());
    let chunk = |f: &String| -> Chunk { Ok(Bytes::from(f.clone())) };
    let head = futures::stream::iter(frames[..split].iter().map(chunk).collect::<Vec<_>>());
    let rest: Vec<Chunk> = frames[split..].iter().map(chunk).collect();
    let body = match gate {
        Some(gate) => {
            let wait = futures::stream::once(async move { gate.notified().await })
                .filter_map(|()| async { None });
            head.chain(wait).chain(futures::stream::iter(rest)).boxed()
        }
        None if rest.is_empty() => head.boxed(),
        None => {
            // hyper drops unflushed chunks when a body fails; let the head go out first.
            let broken = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
            });
            head.chain(broken).boxed()
        }
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn error_response(anthropic: bool, status: u16, message: &str) -> Response {
    let body = if anthropic {
        json!({"type": "error", "error": {"type": "api_error", "message": message}})
    } else {
        json!({"error": {"message": message, "type": "server_error", "code": null}})
    };
    let status = StatusCode::from_u16(status).unwrap();
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn data(value: Value) -> String {
    format!("data: {value}\n\n")
}

/// Usage: 11 prompt tokens (3 of them cached), 7 completion tokens.
fn openai_frames(texts: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        data(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-fake", "choices": [{"index": 0, "delta": delta, "logprobs": null,
            "finish_reason": finish}]}))
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    out.extend(texts.iter().map(|t| chunk(json!({"content": t}), Value::Null)));
    out.push(chunk(json!({}), json!("stop")));
    out.push(data(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-fake", "choices": [], "usage": {"prompt_tokens": 11,
        "completion_tokens": 7, "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 3}}})));
    out.push("data: [DONE]\n\n".to_owned());
    out
}

/// OpenAI's Responses API stream, with the same usage as [`openai_frames`]: lifecycle events
/// carry the response object, text arrives as `response.output_text.delta`.
fn responses_frames(texts: &[&str]) -> Vec<String> {
    let event =
        |value: Value| format!("event: {}\ndata: {value}\n\n", value["type"].as_str().unwrap());
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_up", "object": "response", "created_at": 1, "status": status,
            "model": "gpt-fake-2025", "output": output, "usage": usage, "error": null,
            "incomplete_details": null, "store": false})
    };
    let text: String = texts.concat();
    let message = |status: &str, text: &str| {
        json!({"type": "message", "id": "msg_up",
        "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let mut out = vec![
        event(json!({"type": "response.created", "sequence_number": 0,
            "response": response("in_progress", json!([]), Value::Null)})),
        event(json!({"type": "response.in_progress", "sequence_number": 1,
            "response": response("in_progress", json!([]), Value::Null)})),
        event(json!({"type": "response.output_item.added", "sequence_number": 2,
            "output_index": 0, "item": {"type": "message", "id": "msg_up",
            "status": "in_progress", "role": "assistant", "content": []}})),
        event(json!({"type": "response.content_part.added", "sequence_number": 3,
            "item_id": "msg_up", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}})),
    ];
    for (i, t) in texts.iter().enumerate() {
        out.push(event(json!({"type": "response.output_text.delta", "sequence_number": 4 + i,
            "item_id": "msg_up", "output_index": 0, "content_index": 0, "delta": t, "logprobs": []})));
    }
    let n = 4 + texts.len();
    let usage = json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 3},
        "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18});
    out.push(event(json!({"type": "response.output_text.done", "sequence_number": n,
        "item_id": "msg_up", "output_index": 0, "content_index": 0, "text": text, "logprobs": []})));
    out.push(event(json!({"type": "response.output_item.done", "sequence_number": n + 1,
        "output_index": 0, "item": message("completed", &text)})));
    out.push(event(json!({"type": "response.completed", "sequence_number": n + 2,
        "response": response("completed", json!([message("completed", &text)]), usage)})));
    out
}

/// The same usage as [`openai_frames`], in Anthropic's terms (cache reads apart from input).
fn anthropic_frames(texts: &[&str]) -> Vec<String> {
    let event = |name: &str, value: Value| format!("event: {name}\ndata: {value}\n\n");
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1",
            "type": "message", "role": "assistant", "model": "claude-fake", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 8,
            "cache_read_input_tokens": 3, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
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
