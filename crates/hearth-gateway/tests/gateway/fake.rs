//! Fake upstream providers on 127.0.0.1 that speak each real wire format (hand-written frames,
//! shaped like the vendors' own, not produced by Hearth's encoders) and inject faults on demand.

use std::collections::VecDeque;
use std::net::SocketAddr;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What the fake answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// "Hello world" in two deltas.
    Text,
    /// A short text, then a `get_weather` call with `{"city": "Oslo"}`.
    Tool,
    /// Five one-letter deltas "a".."e".
    Letters,
}

/// One scripted behaviour, used by the next call; with an empty script calls answer normally.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    RateLimited {
        retry_after_secs: u64,
    },
    /// 401 whose body echoes the key it was sent, as some providers do.
    EchoKey,
    StallBeforeFirstByte,
    /// The first `n` frames, then silence.
    StallAfter(usize),
    /// The first `n` frames, then the connection breaks.
    ResetAfter(usize),
    /// The first `n` frames, then a frame that is not JSON.
    MalformedAfter(usize),
    /// Anthropic only: `message_start`, then an in-band `overloaded_error` event.
    InBandOverloaded,
    /// The first `n` frames, then waits for the notify before the rest.
    PauseAfter(usize, Arc<Notify>),
    /// OpenAI only: the whole answer as one `chat.completion` JSON body, as compatible
    /// servers that ignore `stream: true` answer.
    WholeJson,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    pub wire: Wire,
    state: Arc<FakeState>,
}

struct FakeState {
    wire: Wire,
    answer: Answer,
    calls: AtomicUsize,
    script: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<Recorded>>,
}

impl FakeProvider {
    pub async fn start(wire: Wire, answer: Answer) -> FakeProvider {
        let state = Arc::new(FakeState {
            wire,
            answer,
            calls: AtomicUsize::new(0),
            script: Mutex::default(),
            requests: Mutex::default(),
        });
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProvider { addr, wire, state }
    }

    /// The base URL a provider of this wire format is configured with.
    pub fn base_url(&self) -> String {
        match self.wire {
            Wire::OpenAi => format!("http://{}/v1", self.addr),
            Wire::Anthropic => format!("http://{}", self.addr),
            Wire::Gemini => format!("http://{}/v1beta", self.addr),
        }
    }

    pub fn push(&self, fault: Fault) -> &Self {
        self.state.script.lock().unwrap().push_back(fault);
        self
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
}

/// How many frames of a normal answer it takes to reach its first text.
pub fn frames_to_first_text(wire: Wire) -> usize {
    match wire {
        Wire::OpenAi => 2,
        Wire::Anthropic => 4,
        Wire::Gemini => 1,
    }
}

/// A base URL where nothing listens: connections are refused.
pub async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    state.requests.lock().unwrap().push(Recorded { path, headers: headers.clone(), body });
    let fault = state.script.lock().unwrap().pop_front();
    let frames = frames(state.wire, state.answer);
    match fault {
        None => sse(stream_frames(frames, usize::MAX, Tail::End)),
        Some(Fault::Status(status)) => error_response(state.wire, status, "scripted failure"),
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = error_response(state.wire, 429, "rate limited");
            response.headers_mut().insert("retry-after", retry_after_secs.into());
            response
        }
        Some(Fault::EchoKey) => {
            let key = sent_key(&headers);
            error_response(state.wire, 401, &format!("Incorrect API key provided: {key}"))
        }
        Some(Fault::StallBeforeFirstByte) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Some(Fault::StallAfter(n)) => sse(stream_frames(frames, n, Tail::Stall)),
        Some(Fault::ResetAfter(n)) => sse(stream_frames(frames, n, Tail::Reset)),
        Some(Fault::MalformedAfter(n)) => sse(stream_frames(frames, n, Tail::Malformed)),
        Some(Fault::PauseAfter(n, gate)) => sse(stream_frames(frames, n, Tail::Resume(gate))),
        Some(Fault::WholeJson) => {
            let completion = json!({
                "id": "chatcmpl-whole", "object": "chat.completion", "created": 1, "model": "gpt",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": texts(state.answer).concat()}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                    "prompt_tokens_details": {"cached_tokens": 3}},
            });
            axum::Json(completion).into_response()
        }
        Some(Fault::InBandOverloaded) => {
            let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
            let frames = vec![frames[0].clone(), format!("event: error\ndata: {error}\n\n")];
            sse(stream_frames(frames, usize::MAX, Tail::End))
        }
    }
}

fn sent_key(headers: &HeaderMap) -> String {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    get("x-api-key")
        .or_else(|| get("x-goog-api-key"))
        .or_else(|| get("authorization").map(|v| v.trim_start_matches("Bearer ").to_string()))
        .unwrap_or_default()
}

enum Tail {
    End,
    Stall,
    Reset,
    Malformed,
    Resume(Arc<Notify>),
}

type Chunk = Result<Bytes, std::io::Error>;

fn stream_frames(
    frames: Vec<String>,
    n: usize,
    tail: Tail,
) -> futures::stream::BoxStream<'static, Chunk> {
    let split = n.min(frames.len());
    let head: Vec<Chunk> = frames[..split].iter().map(|f| Ok(Bytes::from(f.clone()))).collect();
    let rest: Vec<Chunk> = frames[split..].iter().map(|f| Ok(Bytes::from(f.clone()))).collect();
    let head = futures::stream::iter(head);
    match tail {
        Tail::End => head.chain(futures::stream::iter(rest)).boxed(),
        Tail::Stall => head.chain(futures::stream::pending()).boxed(),
        Tail::Reset => {
            // hyper drops unflushed chunks when a body fails; let the head go out first.
            let broken = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
            });
            head.chain(broken).boxed()
        }
        Tail::Malformed => {
            let garbage: Chunk = Ok(Bytes::from_static(b"data: {\"choices\": [oops\n\n"));
            head.chain(futures::stream::iter([garbage])).boxed()
        }
        Tail::Resume(gate) => {
            let wait = futures::stream::once(async move { gate.notified().await })
                .filter_map(|()| async { None });
            head.chain(wait).chain(futures::stream::iter(rest)).boxed()
        }
    }
}

fn sse(body: futures::stream::BoxStream<'static, Chunk>) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn error_response(wire: Wire, status: u16, message: &str) -> Response {
    let body = match wire {
        Wire::OpenAi => {
            json!({"error": {"message": message, "type": "server_error", "code": null}})
        }
        Wire::Anthropic => {
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        }
        Wire::Gemini => {
            json!({"error": {"code": status, "message": message, "status": "UNAVAILABLE"}})
        }
    };
    let status = StatusCode::from_u16(status).unwrap();
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

/// The answer's SSE frames, each a complete `event:`/`data:` block.
fn frames(wire: Wire, answer: Answer) -> Vec<String> {
    match wire {
        Wire::OpenAi => openai_frames(answer),
        Wire::Anthropic => anthropic_frames(answer),
        Wire::Gemini => gemini_frames(answer),
    }
}

fn texts(answer: Answer) -> Vec<&'static str> {
    match answer {
        Answer::Text => vec!["Hello", " world"],
        Answer::Tool => vec!["Let me check."],
        Answer::Letters => vec!["a", "b", "c", "d", "e"],
    }
}

fn data(value: Value) -> String {
    format!("data: {value}\n\n")
}

fn openai_frames(answer: Answer) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        data(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-fake", "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null}))
    };
    let mut out =
        vec![chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)];
    out.extend(texts(answer).into_iter().map(|t| chunk(json!({"content": t}), Value::Null)));
    let finish = if answer == Answer::Tool {
        out.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ));
        for part in ["{\"city\":", "\"Oslo\"}"] {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
        "tool_calls"
    } else {
        "stop"
    };
    out.push(chunk(json!({}), json!(finish)));
    out.push(data(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-fake", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7,
        "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 3}}})));
    out.push("data: [DONE]\n\n".to_string());
    out
}

fn anthropic_frames(answer: Answer) -> Vec<String> {
    let event = |name: &str, value: Value| format!("event: {name}\ndata: {value}\n\n");
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude-fake", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for t in texts(answer) {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": t}}),
        ));
    }
    out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    let stop = if answer == Answer::Tool {
        out.push(event("content_block_start", json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}})));
        for part in ["", "{\"city\":", "\"Oslo\"}"] {
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 1})));
        "tool_use"
    } else {
        "end_turn"
    };
    out.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 7}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

fn gemini_frames(answer: Answer) -> Vec<String> {
    let record = |parts: Value, finish: Option<&str>, usage: Value| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        data(json!({"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": "gemini-fake", "responseId": "resp_1"}))
    };
    let partial = json!({"promptTokenCount": 11, "totalTokenCount": 11});
    let full = json!({"promptTokenCount": 11, "candidatesTokenCount": 7, "totalTokenCount": 18, "cachedContentTokenCount": 3});
    let texts = texts(answer);
    let (last, init) = texts.split_last().unwrap();
    let mut out: Vec<String> =
        init.iter().map(|t| record(json!([{"text": t}]), None, partial.clone())).collect();
    if answer == Answer::Tool {
        out.push(record(json!([{"text": last}]), None, partial.clone()));
        out.push(record(
            json!([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]),
            Some("STOP"),
            full,
        ));
    } else {
        out.push(record(json!([{"text": last}]), Some("STOP"), full));
    }
    out
}
