use super::*;

fn parser(format: ToolFormat) -> ToolCallParser {
    let mut n = 0;
    let names = ["get_weather", "now", "f", "g"].map(String::from).to_vec();
    ToolCallParser::new(
        format,
        names,
        Box::new(move || {
            n += 1;
            format!("call_{n}")
        }),
    )
}

/// Feeds `text` in pieces of `size` bytes (on char boundaries) and returns every event.
fn run(format: ToolFormat, text: &str, size: usize) -> Vec<CanonicalEvent> {
    let mut p = parser(format);
    let mut out = Vec::new();
    for chunk in crate::marker::chunks(text, size) {
        out.extend(p.push(chunk));
    }
    out.extend(p.finish());
    out
}

/// Text, and each call as (id, name, arguments), reassembled from events.
fn assemble(events: &[CanonicalEvent]) -> (String, Vec<(String, String, String)>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for event in events {
        match event {
            CanonicalEvent::TextDelta { text: t } => text.push_str(t),
            CanonicalEvent::ToolCallStart { index, id, name } => {
                assert_eq!(*index as usize, calls.len(), "indexes count up from 0");
                calls.push((id.clone(), name.clone(), String::new()));
            }
            CanonicalEvent::ToolCallDelta { index, arguments } => {
                calls[*index as usize].2.push_str(arguments)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (text, calls)
}

const HERMES: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                      {\"city\": \"Paris}\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n\
                      {\"name\": \"now\", \"arguments\": {}}\n</tool_call>";

#[test]
fn hermes_calls_reassemble_the_same_at_every_chunk_size() {
    for size in 1..HERMES.len() {
        let events = run(ToolFormat::Hermes, HERMES, size);
        let (text, calls) = assemble(&events);
        assert_eq!(text, "Let me check.", "chunk size {size}");
        assert_eq!(
            calls,
            vec![
                ("call_1".into(), "get_weather".into(), r#"{"city":"Paris}","days":[1,2]}"#.into()),
                ("call_2".into(), "now".into(), "{}".into()),
            ],
            "chunk size {size}"
        );
    }
}

#[test]
fn hermes_arguments_stream_before_the_call_ends() {
    let mut p = parser(ToolFormat::Hermes);
    let events = p.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"xy");
    assert_eq!(
        events,
        vec![
            CanonicalEvent::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"a\":\"xy".into() },
        ]
    );
    assert!(p.made_calls());
}

#[test]
fn plain_text_passes_through_exactly() {
    let text = "No tools needed: a < b, and <tool is not a call.  \n";
    for size in [1, 3, 100] {
        let (out, calls) = assemble(&run(ToolFormat::Hermes, text, size));
        assert_eq!(out, text);
        assert!(calls.is_empty());
    }
}

#[test]
fn a_malformed_call_is_left_as_text() {
    let text = "<tool_call>\nnot json\n</tool_call>";
    let (out, calls) = assemble(&run(ToolFormat::Hermes, text, 4));
    assert_eq!(out, text);
    assert!(calls.is_empty());
}

#[test]
fn keys_in_another_order_are_read_whole() {
    let text = "<tool_call>{\"arguments\": {\"x\": 1}, \"name\": \"f\"}</tool_call>";
    let (_, calls) = assemble(&run(ToolFormat::Hermes, text, 5));
    assert_eq!(calls, vec![("call_1".into(), "f".into(), r#"{"x":1}"#.into())]);
}

#[test]
fn an_unclosed_call_at_the_end_still_counts() {
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n";
    for size in [7, 100] {
        let (_, calls) = assemble(&run(ToolFormat::Hermes, text, size));
        assert_eq!(calls, vec![("call_1".into(), "f".into(), r#"{"x":1}"#.into())]);
    }
}

#[test]
fn llama3_answers_that_are_calls_become_calls() {
    let text = "{\"name\": \"f\", \"parameters\": {\"x\": \"a;b\"}}; {\"name\": \"g\", \"parameters\": {}}";
    let (out, calls) = assemble(&run(ToolFormat::Llama3Json, text, 6));
    assert_eq!(out, "");
    assert_eq!(
        calls,
        vec![
            ("call_1".into(), "f".into(), r#"{"x":"a;b"}"#.into()),
            ("call_2".into(), "g".into(), "{}".into()),
        ]
    );
    let (out, calls) = assemble(&run(ToolFormat::Llama3Json, "{not a call}", 3));
    assert_eq!((out.as_str(), calls.len()), ("{not a call}", 0));
    let (out, _) = assemble(&run(ToolFormat::Llama3Json, "Hello {there}", 2));
    assert_eq!(out, "Hello {there}");
}

#[test]
fn mistral_calls_with_or_without_the_marker() {
    for text in [
        "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": 1}}]",
        " [{\"name\": \"f\", \"arguments\": {\"x\": 1}}]",
    ] {
        let (out, calls) = assemble(&run(ToolFormat::Mistral, text, 4));
        assert_eq!(out, "");
        assert_eq!(calls, vec![("call_1".into(), "f".into(), r#"{"x":1}"#.into())]);
    }
    let (out, calls) = assemble(&run(ToolFormat::Mistral, "[1] is a footnote", 4));
    assert_eq!((out.as_str(), calls.len()), ("[1] is a footnote", 0));
}

#[test]
fn blanks_inside_strings_survive_compaction() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"q\": \"a \\\" b\", \"n\": [1, 2]}}</tool_call>";
    for size in [1, 2, 200] {
        let (_, calls) = assemble(&run(ToolFormat::Hermes, text, size));
        assert_eq!(calls[0].2, r#"{"q":"a \" b","n":[1,2]}"#, "chunk size {size}");
    }
}

#[test]
fn json_that_is_not_a_declared_call_stays_text() {
    for text in [r#"{"name": "Alice", "age": 30}"#, r#"{"name": "f"}"#] {
        let (out, calls) = assemble(&run(ToolFormat::Llama3Json, text, 5));
        assert_eq!((out.as_str(), calls.len()), (text, 0));
    }
    let block = "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>";
    let (out, calls) = assemble(&run(ToolFormat::Hermes, block, 3));
    assert_eq!((out.as_str(), calls.len()), (block, 0));
}

#[test]
fn a_closing_marker_cut_short_and_trailing_blanks_are_dropped() {
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_ca";
    let (out, calls) = assemble(&run(ToolFormat::Hermes, text, 100));
    assert_eq!((out.as_str(), calls[0].2.as_str()), ("", r#"{"x":1}"#));
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\n";
    let (out, calls) = assemble(&run(ToolFormat::Hermes, text, 4));
    assert_eq!((out.as_str(), calls.len()), ("", 1));
}
