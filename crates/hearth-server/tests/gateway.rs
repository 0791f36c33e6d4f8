//! The surfaces that go through the gateway — OpenAI chat, Anthropic messages and the run API —
//! against fake upstream providers and the tiny local model: routing, headers, failover, errors
//! after the first event, rate limits, metadata and keys.

mod common;

use axum::http::StatusCode;
use common::fake::{FakeProvider, Fault, SECRET_KEY};
use common::harness::gateway_app;
use common::*;
use hearth_gateway::LedgerStatus;
use serde_json::{json, Value};

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 5 })
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

fn anthropic(model: &str) -> Value {
    json!({ "model": model, "max_tokens": 5, "messages": [{ "role": "user", "content": "Hi" }] })
}

#[tokio::test]
async fn openai_chat_reaches_an_upstream_with_run_headers_and_a_ledger_record() {
    let fake = FakeProvider::start(&["Hello", " world"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    let reply = post(&g.app, "/v1/chat/completions", chat("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let run_id = reply.header("x-hearth-run-id").to_owned();
    assert!(run_id.starts_with("run_"), "{run_id}");
    assert_eq!(reply.header("x-hearth-route"), "oa/gpt-fake");
    let body = reply.json();
    assert_eq!(body["id"], format!("chatcmpl-{}", &run_id[4..]));
    assert_eq!(body["model"], "chat", "the id the caller asked for");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);

    let record = g.record(&run_id).await;
    assert_eq!(
        (record.status, record.route.as_deref()),
        (LedgerStatus::Finished, Some("oa/gpt-fake"))
    );
    // 8 uncached × 1 + 3 cached × 0.5 + 7 out × 2 = 23.5 per million.
    assert_eq!(record.cost, Some("0.0000235".parse().unwrap()));

    let mut body = streamed(chat("chat"));
    body["stream_options"] = json!({ "include_usage": true });
    let reply = post(&g.app, "/v1/chat/completions", body).await;
    assert_eq!(reply.header("x-hearth-route"), "oa/gpt-fake");
    let frames = sse_frames(&reply.text());
    assert!(frames.iter().all(|f| f.id.is_some()), "every frame carries its event's seq");
    assert_eq!(frames.last().unwrap().data, "[DONE]");
    let text: String = frames
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(&f.data).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello world");
}

#[tokio::test]
async fn anthropic_messages_serve_upstream_and_local_models() {
    let fake = FakeProvider::start(&["Hello", " world"]).await;
    let g = gateway_app(&fake, &["an/claude-fake"]).await;
    let reply = post(&g.app, "/v1/messages", anthropic("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-hearth-route"), "an/claude-fake");
    let body = reply.json();
    assert_eq!(body["type"], "message");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["content"], json!([{ "type": "text", "text": "Hello world" }]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 8);
    assert_eq!(body["usage"]["cache_read_input_tokens"], 3);

    let reply = post(&g.app, "/v1/messages", streamed(anthropic(MODEL))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-hearth-route"), "local/tiny-llama");
    let names: Vec<String> =
        sse_frames(&reply.text()).into_iter().filter_map(|f| f.event).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("message_stop"), "{names:?}");
    assert!(names.contains(&"content_block_delta".to_owned()), "{names:?}");
}

#[tokio::test]
async fn anthropic_errors_use_anthropic_shapes() {
    let fake = FakeProvider::start(&["x"]).await;
    let g = gateway_app(&fake, &["an/claude-fake"]).await;
    let mut no_max = anthropic("chat");
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let mut thinking = anthropic("chat");
    thinking["thinking"] = json!({ "type": "sometimes" });
    let mut empty_stop = anthropic("chat");
    empty_stop["stop_sequences"] = json!([""]);
    let cases = [
        (no_max, StatusCode::BAD_REQUEST, "invalid_request_error", "max_tokens"),
        (thinking, StatusCode::BAD_REQUEST, "invalid_request_error", "thinking"),
        (empty_stop, StatusCode::BAD_REQUEST, "invalid_request_error", "`stop_sequences`"),
        (anthropic("ghost"), StatusCode::NOT_FOUND, "not_found_error", "ghost"),
        (
            json!({ "model": "chat" }),
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens",
        ),
    ];
    for (body, status, kind, named) in cases {
        let reply = post(&g.app, "/v1/messages", body).await;
        assert_eq!(reply.status, status, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(named), "{body}");
    }
    let reply = send(&g.app, request(axum::http::Method::POST, "/v1/messages", &[], "{oops")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn failover_before_the_first_event_is_invisible() {
    let fake = FakeProvider::start(&["Hello"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake", "an/claude-fake"]).await;
    fake.push(Fault::Status(500)).push(Fault::Status(503));
    let reply = post(&g.app, "/v1/chat/completions", chat("chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-hearth-route"), "an/claude-fake");
    assert_eq!(reply.json()["choices"][0]["message"]["content"], "Hello");
    assert_eq!(fake.calls(), 3, "two attempts on the first route, one on the second");
}

#[tokio::test]
async fn a_stream_cut_after_its_first_event_ends_with_an_explicit_error() {
    let fake = FakeProvider::start(&["Hello", " world"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;

    // OpenAI: the role chunk and "Hello", then the connection breaks.
    fake.push(Fault::ResetAfter(2));
    let reply = post(&g.app, "/v1/chat/completions", streamed(chat("chat"))).await;
    let frames = sse_frames(&reply.text());
    assert!(frames.iter().all(|f| f.data != "[DONE]"), "no clean end: {frames:?}");
    let last: Value = serde_json::from_str(&frames.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{last}");
    let record = g.record(reply.header("x-hearth-run-id")).await;
    assert_eq!(record.status, LedgerStatus::Failed);

    // Anthropic: message_start, the block start, a ping and "Hello", then the break.
    fake.push(Fault::ResetAfter(4));
    let reply = post(&g.app, "/v1/messages", streamed(anthropic("an/claude-fake"))).await;
    let frames = sse_frames(&reply.text());
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("error"), "{frames:?}");
    assert!(frames.iter().all(|f| f.event.as_deref() != Some("message_stop")));

    // The run API names the event `error`; a caller who asked for a whole answer gets a 502.
    fake.push(Fault::ResetAfter(2));
    let reply = post(&g.app, "/v1/run/chat", json!({ "input": "Hi", "stream": true })).await;
    let frames = sse_frames(&reply.text());
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("error"), "{frames:?}");
    fake.push(Fault::ResetAfter(2));
    let reply = post(&g.app, "/v1/chat/completions", chat("chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(reply.header("x-hearth-run-id").starts_with("run_"));
    assert_eq!(reply.header("x-hearth-route"), "oa/gpt-fake");
}

#[tokio::test]
async fn rate_limited_routes_answer_429_with_retry_after() {
    let fake = FakeProvider::start(&["x"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    // Longer than `retry_after_max_secs`: not waited out, so the only route fails at once.
    fake.push(Fault::RateLimited { retry_after_secs: 60 });
    let reply = post(&g.app, "/v1/chat/completions", chat("chat")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    assert!(reply.header("x-hearth-run-id").starts_with("run_"));

    fake.push(Fault::RateLimited { retry_after_secs: 60 });
    let reply = post(&g.app, "/v1/messages", anthropic("chat")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn provider_keys_never_reach_a_caller_or_the_ledger() {
    let fake = FakeProvider::start(&["x"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    fake.push(Fault::EchoKey);
    let reply = post(&g.app, "/v1/chat/completions", chat("chat")).await;
    assert!(reply.status.is_client_error(), "{}", reply.text());
    assert!(!reply.text().contains(SECRET_KEY), "{}", reply.text());
    let run_id = reply.header("x-hearth-run-id").to_owned();
    let record = g.record(&run_id).await;
    assert!(record.error.as_deref().is_some_and(|e| e.contains("[redacted]")), "{record:?}");
    let status = get(&g.app, &format!("/v1/runs/{run_id}")).await;
    assert!(!status.text().contains(SECRET_KEY), "{}", status.text());
}

#[tokio::test]
async fn the_run_api_answers_any_model_whole_and_streamed() {
    let fake = FakeProvider::start(&["Hello", " world"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    let reply = post(&g.app, "/v1/run/chat", json!({ "input": "Hi" })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["run_id"], reply.header("x-hearth-run-id"));
    assert_eq!((&body["model"], &body["route"]), (&json!("chat"), &json!("oa/gpt-fake")));
    assert_eq!(body["output"], "Hello world");
    assert_eq!(body["stop_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 11, "output_tokens": 7, "cached_input_tokens": 3})
    );
    assert_eq!(body["cost"], "0.0000235");

    let messages = json!({ "messages": [
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Hi" },
    ], "stream": true });
    let reply = post(&g.app, "/v1/run/an/claude-direct", messages).await;
    assert_eq!(
        reply.header("x-hearth-route"),
        "an/claude-direct",
        "provider/model ids route directly"
    );
    let frames = sse_frames(&reply.text());
    let ids: Vec<(u64, usize)> = frames.iter().map(|f| f.id.unwrap()).collect();
    let one_per_event: Vec<(u64, usize)> = (0..frames.len() as u64).map(|seq| (seq, 0)).collect();
    assert_eq!(ids, one_per_event, "one frame per event");
    assert_eq!(frames[0].event.as_deref(), Some("message_start"));
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("finish"));
    let delta: Value = serde_json::from_str(&frames[2].data).unwrap();
    assert_eq!(delta, json!({ "type": "text_delta", "text": "Hello" }));

    let local = post(&g.app, "/v1/run/tiny-llama", json!({ "input": "Hi", "max_tokens": 3 })).await;
    assert_eq!(local.header("x-hearth-route"), "local/tiny-llama");
    assert!(local.json()["usage"]["output_tokens"].as_u64().unwrap() <= 3);
}

#[tokio::test]
async fn bad_run_requests_are_400_naming_the_problem() {
    let fake = FakeProvider::start(&["x"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    let both = json!({ "input": "a", "messages": [{ "role": "user", "content": "b" }] });
    let cases = [
        (json!({}), "input"),
        (both, "input"),
        (json!({ "input": "a", "temprature": 1 }), "temprature"),
        (json!({ "input": "a", "temperature": 900 }), "temperature"),
        (json!({ "input": "a", "metadata": { "nested": { "no": 1 } } }), "metadata"),
        (json!({ "messages": [{ "role": "tool", "content": "x" }] }), "messages[0].role"),
    ];
    for (body, named) in cases {
        let reply = post(&g.app, "/v1/run/chat", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        assert!(error["param"] == named || message.contains(named), "{named}: {error}");
    }
    let reply = post(&g.app, "/v1/run/ghost", json!({ "input": "a" })).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn metadata_groups_spend_and_bad_metadata_is_refused_by_name() {
    let fake = FakeProvider::start(&["Hello"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    for team in ["red", "red", "blue"] {
        let meta = format!(r#"{{"team": "{team}", "n": 1}}"#);
        let reply = post_with(
            &g.app,
            "/v1/chat/completions",
            &[("x-hearth-metadata", &meta)],
            chat("chat"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let body = json!({ "input": "Hi", "metadata": { "team": "red" } });
    assert_eq!(post(&g.app, "/v1/run/chat", body).await.status, StatusCode::OK);
    g.state.gateway().wait_idle().await;

    let usage = get(&g.app, "/v1/usage?group_by=metadata.team").await.json();
    let groups: Vec<(Value, Value)> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].clone(), g["requests"].clone()))
        .collect();
    assert_eq!(groups, vec![(json!("blue"), json!(1)), (json!("red"), json!(3))], "{usage}");
    let by_route = get(&g.app, "/v1/usage?group_by=route").await.json();
    assert_eq!(by_route["data"][0]["key"], "oa/gpt-fake");
    assert_eq!(by_route["data"][0]["output_tokens"], 28);
    assert_eq!(by_route["data"][0]["cost"], "0.000094");
    let future = get(&g.app, "/v1/usage?since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(future["data"], json!([]));

    let bad_headers = ["{", r#"{"a": [1]}"#, r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}"#];
    for meta in bad_headers {
        let reply =
            post_with(&g.app, "/v1/chat/completions", &[("x-hearth-metadata", meta)], chat("chat"))
                .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{meta}");
        assert_eq!(reply.json()["error"]["param"], "x-hearth-metadata");
    }
    for (query, param) in
        [("group_by=cost", "group_by"), ("since=yesterday", "since"), ("until=1", "until")]
    {
        let reply = get(&g.app, &format!("/v1/usage?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.json()["error"]["param"], param);
    }
}

#[tokio::test]
async fn models_list_local_and_upstream_models_with_prices() {
    let fake = FakeProvider::start(&["x"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake", "local/tiny-llama"]).await;
    let list = get(&g.app, "/v1/models").await.json();
    let chat = list["data"].as_array().unwrap().iter().find(|m| m["id"] == "chat").unwrap().clone();
    assert_eq!(chat["kind"], "upstream");
    assert_eq!(chat["providers"], json!(["oa", "local"]));
    assert_eq!(chat["context_length"], 8192);
    assert_eq!(chat["prices"]["input_per_mtok"], "1");
    assert_eq!(get(&g.app, "/v1/models/chat").await.json()["id"], "chat");
}
