//! OpenAI's Responses API: whole and streamed answers built from the same events, tool calls,
//! conversations continued with `previous_response_id`, and background responses that outlive
//! their caller, are resumed with `starting_after` and cancelled.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use common::fake::{FakeProvider, Fault};
use common::harness::gateway_app;
use common::*;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The data of each event of a Responses stream, checked to be numbered 0, 1, 2, … (or from
/// `first`) and named by its `type`.
fn numbered_events(text: &str, first: u64) -> Vec<Value> {
    let frames = sse_frames(text);
    let events: Vec<Value> =
        frames.iter().map(|f| serde_json::from_str(&f.data).unwrap()).collect();
    for (i, (frame, event)) in frames.iter().zip(&events).enumerate() {
        assert_eq!(event["sequence_number"], first + i as u64, "{event}");
        assert_eq!(frame.event.as_deref(), event["type"].as_str());
    }
    events
}

fn output_text(response: &Value) -> String {
    let items = response["output"].as_array().unwrap();
    items
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap())
        .map(|c| c["text"].as_str().unwrap())
        .collect()
}

fn deltas(events: &[Value], kind: &str) -> String {
    events.iter().filter(|e| e["type"] == kind).map(|e| e["delta"].as_str().unwrap()).collect()
}

async fn get_response(app: &Router, id: &str) -> Value {
    let reply = get(app, &format!("/v1/responses/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// Polls until the stored response has ended (this waits for an effect; it measures nothing).
async fn wait_until_final(app: &Router, id: &str) -> Value {
    for _ in 0..400 {
        let response = get_response(app, id).await;
        if !matches!(response["status"].as_str(), Some("in_progress" | "queued")) {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("response {id} never ended");
}

#[tokio::test]
async fn a_local_response_streams_exactly_what_it_answers_whole() {
    let app = app();
    let body = json!({
        "model": MODEL, "instructions": "Be brief.", "input": "Hello there",
        "max_output_tokens": 12, "temperature": 0, "metadata": {"team": "search"},
    });
    let whole = post(&app, "/v1/responses", body.clone()).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["object"], "response");
    assert!(whole["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(whole["model"], MODEL);
    assert_eq!(whole["instructions"], "Be brief.");
    assert_eq!(whole["metadata"], json!({"team": "search"}));
    let usage = &whole["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0);
    let text = output_text(&whole);
    assert!(!text.is_empty());
    // The random model either stops or runs into the limit; the status says which.
    match whole["status"].as_str().unwrap() {
        "incomplete" => {
            assert_eq!(whole["incomplete_details"]["reason"], "max_output_tokens");
            assert_eq!(usage["output_tokens"], 12);
        }
        status => assert_eq!(status, "completed"),
    }

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let reply = post(&app, "/v1/responses", streamed).await;
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let events = numbered_events(&reply.text(), 0);
    assert_eq!(events[0]["type"], "response.created");
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[1]["type"], "response.in_progress");
    assert_eq!(deltas(&events, "response.output_text.delta"), text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], format!("response.{}", whole["status"].as_str().unwrap()));
    assert_eq!(output_text(&last["response"]), text);
    // Token counts as the whole answer's (the second time, the prompt is in the prefix cache).
    for count in ["input_tokens", "output_tokens"] {
        assert_eq!(last["response"]["usage"][count], whole["usage"][count]);
    }
}

fn weather_tool() -> Value {
    json!({
        "type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false,
        },
    })
}

#[tokio::test]
async fn a_forced_tool_call_streams_its_arguments_and_is_answered_in_a_second_turn() {
    let app = app();
    let body = json!({
        "model": MODEL, "input": "Weather in Paris?", "tools": [weather_tool()],
        "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": false,
        "max_output_tokens": 250, "temperature": 0,
    });
    let whole = post(&app, "/v1/responses", body.clone()).await.json();
    assert_eq!(whole["status"], "completed", "{whole}");
    let calls: Vec<&Value> = whole["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 1, "{whole}");
    let call = calls[0];
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["status"], "completed");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string() && arguments["unit"].is_string(), "{arguments}");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let events = numbered_events(&post(&app, "/v1/responses", streamed).await.text(), 0);
    assert_eq!(
        deltas(&events, "response.function_call_arguments.delta"),
        call["arguments"].as_str().unwrap()
    );
    let added = events.iter().find(|e| e["type"] == "response.output_item.added").unwrap();
    assert_eq!(added["item"]["type"], "function_call");
    let done = &events.last().unwrap()["response"]["output"][0];
    assert_eq!(added["item"]["call_id"], done["call_id"]);
    assert_eq!(done["arguments"], call["arguments"]);

    // The caller runs the tool and continues the conversation with its output.
    let next = json!({
        "model": MODEL, "previous_response_id": whole["id"], "tools": [weather_tool()],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18 C, sunny"}],
        "max_output_tokens": 4, "temperature": 0,
    });
    let reply = post(&app, "/v1/responses", next).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let second = reply.json();
    assert_eq!(second["previous_response_id"], whole["id"]);
    let first_tokens = whole["usage"]["input_tokens"].as_u64().unwrap();
    assert!(second["usage"]["input_tokens"].as_u64().unwrap() > first_tokens);
}

#[tokio::test]
async fn stored_responses_are_retrieved_continued_and_deleted() {
    let app = app();
    let first = json!({"model": MODEL, "input": "My name is Ada.", "max_output_tokens": 4, "temperature": 0});
    let first = post(&app, "/v1/responses", first).await.json();
    let id = first["id"].as_str().unwrap();
    assert_eq!(get_response(&app, id).await, first);

    let next = json!({"model": MODEL, "input": "What is my name?", "previous_response_id": id,
                      "max_output_tokens": 4, "temperature": 0});
    let next = post(&app, "/v1/responses", next).await.json();
    let alone = json!({"model": MODEL, "input": "What is my name?", "max_output_tokens": 4, "temperature": 0});
    let alone = post(&app, "/v1/responses", alone).await.json();
    let tokens = |r: &Value| r["usage"]["input_tokens"].as_u64().unwrap();
    assert!(tokens(&next) > tokens(&alone) + tokens(&first) - 1, "the earlier turns were sent");

    let unknown = json!({"model": MODEL, "input": "x", "previous_response_id": "resp_nope"});
    let unknown = post(&app, "/v1/responses", unknown).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json()["error"]["param"], "previous_response_id");

    let unstored = json!({"model": MODEL, "input": "x", "max_output_tokens": 2, "store": false});
    let unstored = post(&app, "/v1/responses", unstored).await.json();
    let missing = get(&app, &format!("/v1/responses/{}", unstored["id"].as_str().unwrap())).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"]["message"].as_str().unwrap().contains("not found"));

    let deleted =
        send(&app, request(Method::DELETE, &format!("/v1/responses/{id}"), &[], "")).await;
    assert_eq!(deleted.json(), json!({"id": id, "object": "response.deleted", "deleted": true}));
    assert_eq!(get(&app, &format!("/v1/responses/{id}")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_it_cannot_serve_are_refused_by_field() {
    let app = app();
    let cases = [
        (json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:"}]}]}),
            "input[0].content[0].type",
        ),
        (json!({"model": MODEL, "input": "x", "conversation": "conv_1"}), "conversation"),
        (json!({"model": MODEL, "input": "x", "background": true, "store": false}), "background"),
        (json!({"model": MODEL, "input": 5}), "input"),
        (
            json!({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "a b"}}}),
            "text.format.name",
        ),
    ];
    for (body, param) in cases {
        let reply = post(&app, "/v1/responses", body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.text());
        assert_eq!(reply.json()["error"]["param"], param, "{body}");
    }
    let not_background =
        post(&app, "/v1/responses", json!({"model": MODEL, "input": "x", "max_output_tokens": 2}))
            .await
            .json();
    let cancel = post(
        &app,
        &format!("/v1/responses/{}/cancel", not_background["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(cancel.status, StatusCode::BAD_REQUEST);
}

/// Through an upstream route: a background response answers at once, goes on without its
/// caller, and its events are streamed again from any point with `starting_after`.
#[tokio::test]
async fn a_background_response_outlives_its_caller_and_resumes_after_any_event() {
    let fake = FakeProvider::start(&["a", "b", "c", "d", "e"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    let release = Arc::new(Notify::new());
    fake.push(Fault::PauseAfter(6, release.clone()));
    let body = json!({"model": "chat", "input": "Hi", "background": true});
    let started = post(&g.app, "/v1/responses", body).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text());
    let started = started.json();
    assert_eq!(started["status"], "in_progress");
    assert_eq!(started["background"], true);
    let id = started["id"].as_str().unwrap().to_owned();

    // Paused after "b": the response so far holds what has arrived.
    assert_eq!(output_text(&get_response(&g.app, &id).await), "ab");
    release.notify_one();
    let finished = wait_until_final(&g.app, &id).await;
    assert_eq!(finished["status"], "completed");
    assert_eq!(output_text(&finished), "abcde");
    assert_eq!(fake.paths(), ["/v1/responses"], "OpenAI is called on its own Responses API");

    let uri = format!("/v1/responses/{id}?stream=true");
    let all = numbered_events(&get(&g.app, &uri).await.text(), 0);
    assert_eq!(all.last().unwrap()["response"], finished);
    for after in [0, 4, all.len() as u64 - 2] {
        let tail = get(&g.app, &format!("{uri}&starting_after={after}")).await.text();
        assert_eq!(numbered_events(&tail, after + 1), all[after as usize + 1..]);
    }
}

#[tokio::test]
async fn cancelling_a_background_response_stops_its_run() {
    let fake = FakeProvider::start(&["a", "b", "c", "d", "e"]).await;
    let g = gateway_app(&fake, &["oa/gpt-fake"]).await;
    // Paused after "b" and never released: only the cancel ends it.
    fake.push(Fault::PauseAfter(6, Arc::new(Notify::new())));
    let body = json!({"model": "chat", "input": "Hi", "background": true});
    let id = post(&g.app, "/v1/responses", body).await.json()["id"].as_str().unwrap().to_owned();
    let cancelled = post(&g.app, &format!("/v1/responses/{id}/cancel"), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());
    let cancelled = cancelled.json();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(get_response(&g.app, &id).await["status"], "cancelled");
    let events =
        numbered_events(&get(&g.app, &format!("/v1/responses/{id}?stream=true")).await.text(), 0);
    assert_eq!(events.last().unwrap()["type"], "response.failed");
}

/// OpenAI is called on its Responses API, Anthropic through its Messages API; either way the
/// caller gets the same response, and the upstream's usage is billed.
#[tokio::test]
async fn upstream_routes_answer_natively_or_translated() {
    let fake = FakeProvider::start(&["Hello", " from", " upstream"]).await;
    for route in ["oa/gpt-fake", "an/claude-fake"] {
        let g = gateway_app(&fake, &[route]).await;
        let body = json!({"model": "chat", "input": "Hi", "max_output_tokens": 20});
        let reply = post(&g.app, "/v1/responses", body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("x-hearth-route"), route);
        let whole = reply.json();
        assert_eq!(output_text(&whole), "Hello from upstream");
        assert_eq!(whole["model"], "chat", "the id the caller asked for");
        assert_eq!(whole["usage"]["input_tokens"], 11);
        assert_eq!(whole["usage"]["input_tokens_details"]["cached_tokens"], 3);
        assert_eq!(whole["usage"]["output_tokens"], 7);
        let run_id = reply.header("x-hearth-run-id").to_owned();
        assert_eq!(g.record(&run_id).await.output_tokens, 7);

        let mut streamed = body;
        streamed["stream"] = json!(true);
        let events = numbered_events(&post(&g.app, "/v1/responses", streamed).await.text(), 0);
        assert_eq!(deltas(&events, "response.output_text.delta"), "Hello from upstream");
    }
    let paths = fake.paths();
    assert_eq!(&paths[..2], ["/v1/responses", "/v1/responses"]);
    assert_eq!(&paths[2..], ["/v1/messages", "/v1/messages"]);
}
