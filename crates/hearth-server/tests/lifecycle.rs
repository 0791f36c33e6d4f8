//! Predictions over time: async runs and webhooks, cancellation, client disconnects, overload,
//! and graceful shutdown. Tests that watch engine memory use an engine of their own.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::{Json, Router};
use common::*;
use futures::StreamExt;
use hearth_engine::EngineConfig;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// A webhook receiver on loopback. It answers each delivery with the next status of `statuses`
/// (200 once they run out) and forwards every payload it got.
async fn webhook_receiver(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Value>) {
    type Shared = (mpsc::UnboundedSender<Value>, std::sync::Arc<std::sync::Mutex<Vec<u16>>>);
    async fn hook(State((tx, statuses)): State<Shared>, Json(body): Json<Value>) -> StatusCode {
        let _ = tx.send(body);
        let next = statuses.lock().unwrap().pop();
        StatusCode::from_u16(next.unwrap_or(200)).unwrap()
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut statuses = statuses;
    statuses.reverse();
    let state: Shared = (tx, std::sync::Arc::new(std::sync::Mutex::new(statuses)));
    let app = Router::new().route("/hook", axum::routing::post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

async fn next_webhook(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    // A bound so a broken sender fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("a webhook arrives")
        .unwrap()
}

async fn wait_for_terminal(rx: &mut mpsc::UnboundedReceiver<Value>) -> (Vec<Value>, Value) {
    let mut seen = Vec::new();
    loop {
        let hook = next_webhook(rx).await;
        if ["succeeded", "failed", "canceled"].contains(&hook["status"].as_str().unwrap()) {
            return (seen, hook);
        }
        seen.push(hook);
    }
}

#[tokio::test]
async fn async_prediction_sends_webhooks_in_order() {
    let (url, mut hooks) = webhook_receiver(Vec::new()).await;
    let body = json!({
        "id": "async-hooks",
        "input": { "prompt": "Tell me", "max_tokens": 8, "temperature": 0 },
        "webhook": url,
    });
    let reply = post_with(&app(), "/predictions", &[("prefer", "respond-async")], body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let accepted = reply.json();
    assert_eq!(accepted["status"], "starting");
    assert_eq!(accepted["id"], "async-hooks");

    let (before, terminal) = wait_for_terminal(&mut hooks).await;
    assert_eq!(
        before.first().map(|h| h["status"].clone()),
        Some(json!("processing")),
        "start webhook first"
    );
    assert_eq!(terminal["status"], "succeeded");
    assert_eq!(terminal["id"], "async-hooks");
    assert!(terminal["metrics"]["predict_time"].is_f64());
}

#[tokio::test]
async fn terminal_webhook_is_retried_and_filter_is_honoured() {
    // The first delivery gets a 503; with only `completed` asked for, that is the terminal one.
    let (url, mut hooks) = webhook_receiver(vec![503]).await;
    let body = json!({
        "input": { "prompt": "Hi", "max_tokens": 4 },
        "webhook": url,
        "webhook_events_filter": ["completed"],
    });
    let reply = post_with(&app(), "/predictions", &[("prefer", "respond-async")], body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let first = next_webhook(&mut hooks).await;
    let retried = next_webhook(&mut hooks).await;
    assert_eq!(first["status"], "succeeded");
    assert_eq!(retried["status"], "succeeded");
    assert_eq!(first["id"], retried["id"]);
}

#[tokio::test]
async fn webhook_filter_rejects_unknown_events() {
    let body = json!({ "input": { "prompt": "Hi" }, "webhook": "http://127.0.0.1:9/x", "webhook_events_filter": ["boom"] });
    let reply = post_with(&app(), "/predictions", &[("prefer", "respond-async")], body).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["detail"][0]["loc"], json!(["body", "webhook_events_filter"]));
}

#[tokio::test]
async fn cancelling_an_async_prediction_stops_it_and_frees_memory() {
    let (url, mut hooks) = webhook_receiver(Vec::new()).await;
    let (_, app) = app_with(catalog_with(local_model(EngineConfig::default())), test_config());
    let body = json!({
        "id": "to-cancel",
        "input": { "prompt": "Count forever", "max_tokens": 1500, "temperature": 0 },
        "webhook": url,
        "webhook_events_filter": ["completed"],
    });
    let reply = post_with(&app, "/predictions", &[("prefer", "respond-async")], body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);

    let cancel = post(&app, "/predictions/to-cancel/cancel", json!({})).await;
    assert_eq!(cancel.status, StatusCode::OK);
    assert_eq!(cancel.json(), json!({}));

    let terminal = next_webhook(&mut hooks).await;
    assert_eq!(terminal["status"], "canceled");
    assert!(terminal["completed_at"].is_string());
    // The same id again reports the canceled prediction instead of running it anew.
    let again = put(&app, "/predictions/to-cancel", json!({ "input": { "prompt": "x" } })).await;
    assert_eq!(again.json()["status"], "canceled");
    wait_for_health(&app, |m| m["kv_blocks_used"] == 0 && m["running"] == 0).await;
}

/// A completion is a run like a chat request: a client that leaves does not stop it, and the
/// rest is there to resume, in the completions format, ending with `[DONE]`.
#[tokio::test]
async fn a_completion_whose_client_leaves_runs_on_and_resumes() {
    let (state, app) = app_with(catalog_with(local_model(EngineConfig::default())), test_config());
    let body = json!({
        "model": MODEL,
        "prompt": "Go on and on",
        "max_tokens": 40,
        "ignore_eos": true,
        "stream": true,
    });
    let request = request(Method::POST, "/v1/completions", &[], body.to_string());
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let run_id = response.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    let mut frames = response.into_body().into_data_stream();
    let first = frames.next().await.expect("a first chunk").unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    drop(frames); // the client goes away

    state.gateway().wait_idle().await;
    let replay = get(&app, &format!("/v1/runs/{run_id}/events")).await;
    let frames = sse_frames(&replay.text());
    assert_eq!(frames.last().unwrap().data, "[DONE]", "{}", replay.text());
    let chunk: Value = serde_json::from_str(&frames[0].data).unwrap();
    assert_eq!(chunk["object"], "text_completion");
    let status = get(&app, &format!("/v1/runs/{run_id}")).await.json();
    assert_eq!(status["ledger"]["output_tokens"], 40, "{status}");
    wait_for_health(&app, |m| m["kv_blocks_used"] == 0 && m["running"] == 0).await;
}

#[tokio::test]
async fn cog_sse_disconnect_marks_the_prediction_canceled() {
    let app = app();
    let body = json!({ "input": { "prompt": "Go", "max_tokens": 1500, "temperature": 0 } });
    let request = request(
        Method::PUT,
        "/predictions/sse-drop",
        &[("accept", "text/event-stream")],
        body.to_string(),
    );
    let response = app.clone().oneshot(request).await.unwrap();
    let mut frames = response.into_body().into_data_stream();
    let first = frames.next().await.expect("the start event").unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: start"));
    drop(frames);
    let again = put(&app, "/predictions/sse-drop", json!({ "input": { "prompt": "Go" } })).await;
    assert_eq!(again.json()["status"], "canceled");
}

/// Overload is answered alike on every surface: 429 with `Retry-After`.
#[tokio::test]
async fn an_overloaded_engine_is_429_with_retry_after_on_every_surface() {
    let mut config = EngineConfig::default();
    config.scheduler.max_waiting = 0;
    let (_, app) = app_with(catalog_with(local_model(config)), test_config());
    let chat = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }] });
    let cases = [
        ("/predictions", json!({ "input": { "prompt": "hi" } })),
        ("/v1/completions", json!({ "model": MODEL, "prompt": "hi" })),
        ("/v1/chat/completions", chat.clone()),
        ("/v1/messages", json!({ "model": MODEL, "max_tokens": 4, "messages": chat["messages"] })),
        ("/v1/run/tiny-llama", json!({ "input": "hi" })),
    ];
    for (path, body) in cases {
        let reply = post(&app, path, body).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{path}: {}", reply.text());
        assert_eq!(reply.header("retry-after"), "1", "{path}");
    }
}

#[tokio::test]
async fn health_lists_ready_and_failed_models() {
    let health = get(&app(), "/health").await.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models"][MODEL]["state"], "ready");
    assert!(health["models"][MODEL]["kv_blocks_total"].as_u64().unwrap() > 0);
    assert_eq!(health["models"]["broken"]["state"], "failed");
    assert!(health["models"]["broken"]["reason"].is_string());
}

#[tokio::test]
async fn graceful_shutdown_cancels_what_outlives_the_grace_period() {
    let mut config = test_config();
    config.shutdown_grace = Duration::ZERO;
    let (state, _) = app_with(catalog_with(local_model(EngineConfig::default())), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hearth_server::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));

    let body = json!({ "model": MODEL, "prompt": "Long story", "max_tokens": 1500, "ignore_eos": true, "stream": true });
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let mut text = String::from_utf8_lossy(&chunks.next().await.unwrap().unwrap()).into_owned();

    stop_tx.send(()).unwrap();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => break,
        }
    }
    let result =
        tokio::time::timeout(Duration::from_secs(120), server).await.expect("serve returns");
    result.unwrap().unwrap();
    assert!(!text.contains("[DONE]"), "a cut-off stream must not look complete");
    assert!(text.contains("cancelled"), "{text}");
}

#[tokio::test]
async fn empty_body_types_are_rejected_not_panicking() {
    let app = app();
    // An empty body is not JSON: 400, as Cog's server answers.
    let reply = send(&app, request(Method::POST, "/predictions", &[], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = send(&app, request(Method::POST, "/v1/completions", &[], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}
