//! A fake OpenAI-compatible streaming server on 127.0.0.1:0 for the load generator's tests.
//!
//! It streams `max_tokens` tokens in chunks of `tokens_per_chunk`, writing each SSE event in two
//! pieces with a pause between them so the client really sees events split across reads. It
//! counts prompt tokens as whitespace-separated words and reports as cached the longest prefix
//! shared with any earlier prompt — a crude prefix cache, enough to check that an agent's
//! re-sent history would be reusable.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub tokens_per_chunk: usize,
    pub chunk_delay: Duration,
    /// Answer every n-th request (1-based) with HTTP 503.
    pub fail_every: Option<usize>,
    pub send_usage: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            tokens_per_chunk: 1,
            chunk_delay: Duration::from_millis(1),
            fail_every: None,
            send_usage: true,
        }
    }
}

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub body: Value,
    pub body_len: usize,
    pub prompt_words: Vec<String>,
    pub reply: String,
}

#[derive(Clone)]
struct AppState {
    cfg: FakeConfig,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
}

pub struct FakeServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub async fn start(cfg: FakeConfig) -> FakeServer {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = AppState { cfg, seen: seen.clone(), count: Arc::new(AtomicUsize::new(0)) };
    let app = Router::new()
        .route("/v1/completions", post(handle))
        .route("/v1/chat/completions", post(handle))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeServer { url, seen }
}

/// The prompt as text: the raw prompt, or every message's content in order.
fn prompt_text(body: &Value) -> String {
    if let Some(p) = body["prompt"].as_str() {
        return p.to_string();
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join(" ")
}

fn common_prefix(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

async fn handle(
    State(st): State<AppState>,
    uri: axum::http::Uri,
    Json(body): Json<Value>,
) -> Response {
    let n = st.count.fetch_add(1, Ordering::SeqCst) + 1;
    let chat = uri.path().ends_with("/chat/completions");
    let words: Vec<String> = prompt_text(&body).split_whitespace().map(String::from).collect();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let reply_tokens: Vec<String> = (0..max_tokens).map(|i| format!("r{n}t{i} ")).collect();
    let cached = {
        let mut seen = st.seen.lock().unwrap();
        let cached = seen.iter().map(|s| common_prefix(&s.prompt_words, &words)).max().unwrap_or(0);
        seen.push(Seen {
            path: uri.path().to_string(),
            body_len: body.to_string().len(),
            body: body.clone(),
            prompt_words: words.clone(),
            reply: reply_tokens.concat(),
        });
        cached.min(words.len().saturating_sub(1))
    };
    if st.cfg.fail_every.is_some_and(|k| n % k == 0) {
        let err = json!({"error": {"message": "fake overload", "type": "server_error"}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(err)).into_response();
    }
    let usage = json!({
        "prompt_tokens": words.len(),
        "completion_tokens": max_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    });
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(stream_reply(st.cfg.clone(), chat, reply_tokens, usage, tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn chunk(chat: bool, text: &str) -> Value {
    if chat {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})
    } else {
        json!({"object": "text_completion", "choices": [{"index": 0, "text": text}]})
    }
}

/// Sends one SSE event in two writes with a pause between, splitting it mid-payload.
async fn send_split(tx: &mpsc::Sender<Bytes>, data: &str, pause: Duration) -> bool {
    let event = format!("data: {data}\n\n").into_bytes();
    let mid = event.len() / 2;
    if tx.send(Bytes::copy_from_slice(&event[..mid])).await.is_err() {
        return false;
    }
    tokio::time::sleep(pause).await;
    tx.send(Bytes::copy_from_slice(&event[mid..])).await.is_ok()
}

async fn stream_reply(
    cfg: FakeConfig,
    chat: bool,
    tokens: Vec<String>,
    usage: Value,
    tx: mpsc::Sender<Bytes>,
) {
    let pause = cfg.chunk_delay / 2;
    if chat {
        let role = json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]});
        send_split(&tx, &role.to_string(), pause).await;
    }
    for group in tokens.chunks(cfg.tokens_per_chunk.max(1)) {
        tokio::time::sleep(pause).await;
        if !send_split(&tx, &chunk(chat, &group.concat()).to_string(), pause).await {
            return;
        }
    }
    if cfg.send_usage {
        send_split(&tx, &json!({"choices": [], "usage": usage}).to_string(), pause).await;
    }
    send_split(&tx, "[DONE]", pause).await;
}
