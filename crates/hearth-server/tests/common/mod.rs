//! Shared test setup: the tiny model package, an app over it, and request helpers.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod fake;
pub mod harness;
pub mod ledger;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use candle_core::Device;
use hearth_engine::{Engine, EngineConfig};
use hearth_gateway::{Catalog, Gateway, GatewaySettings, LocalModel};
use hearth_package::Package;
use hearth_server::{router, AppState, ServerConfig};
use serde_json::Value;
use tower::ServiceExt;

pub const MODEL: &str = "tiny-llama";
pub const CONTEXT_LENGTH: usize = 2048;

fn package_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-llama"))
}

/// A fresh engine over the tiny model; tests that watch the engine's memory or stop it use
/// their own so that other tests cannot disturb them.
pub fn local_model(config: EngineConfig) -> LocalModel {
    let package = Package::load(package_dir()).expect("models/tiny-llama must be a valid package");
    let engine = Engine::start(&package, config, &Device::Cpu, &|_, _| {}).expect("engine starts");
    LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() }
}

/// One engine shared by the tests of a binary that do not care who else uses it.
pub fn shared_model() -> LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| local_model(EngineConfig::default())).clone()
}

/// A catalog with the tiny model (the default) and one package that failed to load.
pub fn catalog_with(model: LocalModel) -> Catalog {
    let mut catalog = Catalog::new();
    catalog.insert_ready(MODEL.to_owned(), model);
    catalog.insert_failed("broken".to_owned(), "config.json: missing `hidden_size`".to_owned());
    catalog.set_default(None);
    catalog
}

pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.webhook.initial_backoff = Duration::from_millis(20);
    config.webhook.output_interval = Duration::from_millis(0);
    config
}

/// An app over `catalog`, its gateway keeping the ledger in memory.
pub fn app_with(catalog: Catalog, config: ServerConfig) -> (AppState, Router) {
    let settings = GatewaySettings::default();
    let runs = hearth_gateway::runs::InMemoryRunStore::from_settings(&settings);
    let ledger = ledger::MemoryLedger::default();
    let gateway = Gateway::new(catalog, &settings, Arc::new(runs), Arc::new(ledger));
    app_over(gateway, config)
}

pub fn app_over(gateway: Gateway, config: ServerConfig) -> (AppState, Router) {
    let state = AppState::new(gateway, config).expect("state builds");
    (state.clone(), router(state))
}

pub fn app() -> Router {
    app_with(catalog_with(shared_model()), test_config()).1
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX).await.expect("body reads").to_vec();
    Reply { status, headers, body }
}

pub fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder =
        Request::builder().method(method).uri(uri).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("request builds")
}

pub async fn get(app: &Router, uri: &str) -> Reply {
    send(app, request(Method::GET, uri, &[], Body::empty())).await
}

pub async fn post(app: &Router, uri: &str, body: Value) -> Reply {
    send(app, request(Method::POST, uri, &[], body.to_string())).await
}

pub async fn post_with(app: &Router, uri: &str, headers: &[(&str, &str)], body: Value) -> Reply {
    send(app, request(Method::POST, uri, headers, body.to_string())).await
}

pub async fn put(app: &Router, uri: &str, body: Value) -> Reply {
    send(app, request(Method::PUT, uri, &[], body.to_string())).await
}

/// `(event name, data)` of each SSE event in `text`, comments skipped.
pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = Some(value.trim_start().to_owned());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            }
        }
        if name.is_some() || !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

/// Polls `/health` until `check` holds for the tiny model's entry; panics after a generous bound
/// (this waits for an effect, it does not measure time).
pub async fn wait_for_health(app: &Router, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let health = get(app, "/health").await.json();
        let model = health["models"][MODEL].clone();
        if check(&model) {
            return model;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the model's health never reached the expected state");
}

/// One SSE frame with its `id:`, read as `(event seq, frame index within the event)`: `7` is
/// `(7, 0)`, `7.2` is `(7, 2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<(u64, usize)>,
    pub event: Option<String>,
    pub data: String,
}

/// Every frame of `text` with its id, comments skipped.
pub fn sse_frames(text: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        let mut frame = Frame { id: None, event: None, data: String::new() };
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                frame.id = parse_frame_id(v.trim());
            } else if let Some(v) = line.strip_prefix("event:") {
                frame.event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            }
        }
        if !data.is_empty() {
            frame.data = data.join("\n");
            frames.push(frame);
        }
    }
    frames
}

fn parse_frame_id(text: &str) -> Option<(u64, usize)> {
    match text.split_once('.') {
        Some((seq, index)) => Some((seq.parse().ok()?, index.parse().ok()?)),
        None => Some((text.parse().ok()?, 0)),
    }
}

impl Frame {
    /// The id as the server wrote it, for a `Last-Event-ID` header.
    pub fn id_text(&self) -> String {
        match self.id.expect("the frame has an id") {
            (seq, 0) => seq.to_string(),
            (seq, index) => format!("{seq}.{index}"),
        }
    }
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}
