//! Runs after they started: a caller that leaves comes back at event k and gets exactly the
//! rest, in the format of the request that started the run; status, cancel and unknown runs.

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::Router;
use common::fake::{FakeProvider, Fault};
use common::harness::gateway_app;
use common::*;
use futures::StreamExt;
use hearth_gateway::LedgerStatus;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tower::ServiceExt;

const LETTERS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Starts a streamed request and reads it until a frame carries `needle`; then the caller
/// leaves. Returns the run id and the frames it read.
async fn read_until_then_leave(
    app: &Router,
    uri: &str,
    body: Value,
    needle: &str,
) -> (String, Vec<Frame>) {
    let request = request(Method::POST, uri, &[], body.to_string());
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let run_id = response.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    loop {
        let chunk = body.next().await.expect("the stream goes on").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        // Only whole frames count; a frame ends with a blank line.
        let whole = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
        let frames = sse_frames(whole);
        if frames.iter().any(|f| f.data.contains(needle)) {
            return (run_id, frames);
        }
    }
}

async fn resume(app: &Router, run_id: &str, query: &str, headers: &[(&str, &str)]) -> Reply {
    let uri = format!("/v1/runs/{run_id}/events{query}");
    send(app, request(Method::GET, &uri, headers, axum::body::Body::empty())).await
}

/// For each surface: leave after the frame carrying "b", let the provider finish, resume from
/// the next event. The resumed frames are exactly the tail of a full replay, so the caller sees
/// the same bytes it would have seen had it stayed.
#[tokio::test]
async fn a_stream_resumes_where_its_caller_left_in_the_original_format() {
    let fake = FakeProvider::start(&LETTERS).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    let surfaces = [
        (
            "/v1/chat/completions",
            json!({ "model": "chat", "messages": [{ "role": "user", "content": "Hi" }], "stream": true, "stream_options": { "include_usage": true } }),
        ),
        (
            "/v1/messages",
            json!({ "model": "chat", "max_tokens": 9, "messages": [{ "role": "user", "content": "Hi" }], "stream": true }),
        ),
        ("/v1/run/chat", json!({ "input": "Hi", "stream": true })),
    ];
    for (uri, body) in surfaces {
        let gate = Arc::new(Notify::new());
        // The role chunk, "a" and "b"; then the provider waits.
        fake.push(Fault::PauseAfter(3, gate.clone()));
        let (run_id, seen) = read_until_then_leave(&g.app, uri, body, "\"b\"").await;
        let last = seen.last().unwrap().id.unwrap();
        gate.notify_one();

        let rest = resume(&g.app, &run_id, &format!("?from={}", last.0 + 1), &[]).await;
        assert_eq!(rest.status, StatusCode::OK, "{uri}: {}", rest.text());
        assert_eq!(rest.header("x-hearth-route"), "oa/gpt-fake");
        let rest = sse_frames(&rest.text());
        let replay = sse_frames(&resume(&g.app, &run_id, "", &[]).await.text());
        let tail: Vec<Frame> =
            replay.iter().filter(|f| f.id.unwrap().0 > last.0).cloned().collect();
        assert_eq!(rest, tail, "{uri}: the rest, once, as first encoded");
        assert_eq!(seen, replay[..seen.len()], "{uri}: a replay starts with what was seen");
        let text: String = rest.iter().map(|f| f.data.as_str()).collect();
        assert!(text.contains("\"e\"") && !text.contains("\"b\""), "{uri}: {text}");

        let ids: Vec<_> = replay.iter().map(|f| f.id.unwrap()).collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique, ids, "{uri}: every frame has an id of its own");
        for (i, frame) in replay.iter().enumerate() {
            let header = [("last-event-id", frame.id_text())];
            let header: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let rest = sse_frames(&resume(&g.app, &run_id, "", &header).await.text());
            assert_eq!(
                rest,
                replay[i + 1..],
                "{uri}: Last-Event-ID {} resumes after it",
                frame.id_text()
            );
        }
        let record = g.record(&run_id).await;
        assert_eq!(record.status, LedgerStatus::Finished, "{uri}");
        assert_eq!((record.input_tokens, record.output_tokens), (11, 7), "{uri}");
    }
}

#[tokio::test]
async fn unknown_runs_and_cursors_past_the_end_are_refused() {
    let fake = FakeProvider::start(&LETTERS).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    for path in ["/v1/runs/run_nope", "/v1/runs/run_nope/events"] {
        let reply = get(&g.app, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["error"]["code"], "run_not_found");
    }
    let cancel = post(&g.app, "/v1/runs/run_nope/cancel", json!({})).await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);

    let reply = post(&g.app, "/v1/run/chat", json!({ "input": "Hi" })).await;
    let run_id = reply.header("x-hearth-run-id").to_owned();
    g.state.gateway().wait_idle().await;
    let past = resume(&g.app, &run_id, "?from=99", &[]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", past.text());
    let bad = resume(&g.app, &run_id, "?from=x", &[]).await;
    assert_eq!(
        (bad.status, bad.json()["error"]["param"].clone()),
        (StatusCode::BAD_REQUEST, json!("from"))
    );
    let bad = resume(&g.app, &run_id, "", &[("last-event-id", "x")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let status = get(&g.app, &format!("/v1/runs/{run_id}")).await.json();
    assert_eq!(status["status"], "finished");
    assert_eq!(status["route"], "oa/gpt-fake");
    assert_eq!(status["ledger"]["output_tokens"], 7);
}

#[tokio::test]
async fn cancel_ends_a_running_run_with_an_explicit_error() {
    let fake = FakeProvider::start(&LETTERS).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    // The provider pauses after "b" and is never released: only a cancel ends the run.
    fake.push(Fault::PauseAfter(3, Arc::new(Notify::new())));
    let body = json!({ "input": "Hi", "stream": true });
    let (run_id, _) = read_until_then_leave(&g.app, "/v1/run/chat", body, "\"b\"").await;
    let cancelled = post(&g.app, &format!("/v1/runs/{run_id}/cancel"), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());

    let events = sse_frames(&resume(&g.app, &run_id, "?from=0", &[]).await.text());
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(serde_json::from_str::<Value>(&last.data).unwrap()["error"]["kind"], "cancelled");
    let record = g.record(&run_id).await;
    assert_eq!(record.status, LedgerStatus::Cancelled);
    assert_eq!(get(&g.app, &format!("/v1/runs/{run_id}")).await.json()["status"], "cancelled");
}
