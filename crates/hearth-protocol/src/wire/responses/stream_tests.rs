use serde_json::{json, Value};

use super::*;

fn encoder() -> StreamEncoder {
    StreamEncoder::new(ResponseHeader {
        id: "resp_abc".into(),
        created_at: 7,
        model: "m".into(),
        settings: Map::new(),
    })
}

fn start() -> CanonicalEvent {
    CanonicalEvent::MessageStart { model: "upstream-name".into() }
}

fn text(t: &str) -> CanonicalEvent {
    CanonicalEvent::TextDelta { text: t.into() }
}

/// Every event's data, checked to carry its own name as `type`.
fn encode_all(enc: &mut StreamEncoder, events: &[CanonicalEvent]) -> Vec<Value> {
    let mut out = Vec::new();
    for event in events {
        for (seq, frame) in enc.encode_numbered(event) {
            let data: Value = serde_json::from_str(&frame.data).unwrap();
            assert_eq!(data["type"], frame.event.unwrap());
            assert_eq!(data["sequence_number"], seq);
            out.push(data);
        }
    }
    out
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[test]
fn a_text_answer_streams_its_lifecycle_and_builds_the_response() {
    let usage = TokenUsage { input_tokens: 5, output_tokens: 2, cached_input_tokens: 3 };
    let mut enc = encoder();
    let events = encode_all(
        &mut enc,
        &[
            start(),
            text("Hel"),
            text("lo"),
            CanonicalEvent::Usage { usage },
            CanonicalEvent::Finish { reason: StopReason::Stop },
        ],
    );
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..10).collect::<Vec<u64>>());
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[0]["response"]["model"], "m");
    assert_eq!(events[4]["item_id"], "msg_abc_0");
    assert_eq!(events[6]["text"], "Hello");
    let done = &events[9]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 3);
    assert_eq!(done["usage"]["total_tokens"], 7);
    assert_eq!(serde_json::to_value(enc.response()).unwrap(), *done);
}

#[test]
fn reasoning_text_and_calls_are_items_in_order() {
    let mut enc = encoder();
    let events = encode_all(
        &mut enc,
        &[
            start(),
            CanonicalEvent::ReasoningDelta { text: "think".into() },
            text("Let me look."),
            CanonicalEvent::ToolCallStart { index: 0, id: "call_1".into(), name: "w".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"city\":".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "\"Oslo\"}".into() },
            CanonicalEvent::Finish { reason: StopReason::ToolCalls },
        ],
    );
    let kinds = types(&events);
    assert!(kinds.contains(&"response.reasoning_text.delta"));
    assert!(kinds.contains(&"response.reasoning_text.done"));
    assert_eq!(kinds.iter().filter(|k| **k == "response.function_call_arguments.delta").count(), 2);
    let args_done =
        events.iter().find(|e| e["type"] == "response.function_call_arguments.done").unwrap();
    assert_eq!(args_done["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(args_done["name"], "w");
    let response = enc.into_response();
    let output = serde_json::to_value(&response.output).unwrap();
    assert_eq!(output[0]["type"], "reasoning");
    assert_eq!(output[0]["content"][0], json!({"type": "reasoning_text", "text": "think"}));
    assert_eq!(output[1]["type"], "message");
    assert_eq!(
        output[2],
        json!({"type": "function_call", "id": "fc_abc_2", "call_id": "call_1", "name": "w",
               "arguments": "{\"city\":\"Oslo\"}", "status": "completed"})
    );
    assert_eq!(response.status, ResponseStatus::Completed);
}

#[test]
fn a_length_stop_is_incomplete_and_a_cancel_is_cancelled() {
    let mut enc = encoder();
    let events = encode_all(
        &mut enc,
        &[start(), text("a"), CanonicalEvent::Finish { reason: StopReason::Length }],
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");

    let mut enc = encoder();
    let events = encode_all(
        &mut enc,
        &[start(), text("a"), CanonicalEvent::error(ErrorKind::Cancelled, "cancelled by caller")],
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["status"], "cancelled");
    assert_eq!(last["response"]["error"]["code"], "cancelled");
    // Nothing follows the end.
    assert!(enc.encode(&text("late")).is_empty());
}

#[test]
fn the_same_events_encode_to_the_same_stream() {
    let events = [
        start(),
        text("x"),
        CanonicalEvent::ToolCallStart { index: 0, id: "c".into(), name: "f".into() },
        CanonicalEvent::ToolCallDelta { index: 0, arguments: "{}".into() },
        CanonicalEvent::Finish { reason: StopReason::ToolCalls },
    ];
    let once = encode_all(&mut encoder(), &events);
    let again = encode_all(&mut encoder(), &events);
    assert_eq!(once, again);
}
