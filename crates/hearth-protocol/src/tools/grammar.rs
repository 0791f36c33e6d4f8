//! Grammars that make a model's tool calls well-formed: with `tool_choice` `required` or a
//! named tool the answer is nothing but calls; with `auto` the model may answer in text, and a
//! call it starts is held to its tool's schema (llguidance's lazy lexemes end the free text at
//! the first call marker, and text containing the marker is not text).

use serde_json::{json, Value};

use super::prompt::parameters_schema;
use super::ToolFormat;
use crate::canonical::{ToolChoice, ToolDefinition};
use crate::OutputConstraint;

/// The grammar for a request's tools, or `None` when the output is free (`tool_choice` `none`).
/// `marker_token` is the token id of the format's call marker when the model's tokenizer has it
/// as one special token ([`ToolFormat::special_marker`]: Mistral's `[TOOL_CALLS]`), which the
/// grammar then names by id, as the model was trained to write it.
pub fn forced_call_grammar(
    format: ToolFormat,
    tools: &[ToolDefinition],
    choice: &ToolChoice,
    parallel: bool,
    marker_token: Option<u32>,
) -> Option<OutputConstraint> {
    let callable: Vec<&ToolDefinition> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Tool { name } => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if callable.is_empty() {
        return None;
    }
    let forced = !matches!(choice, ToolChoice::Auto);
    let body = format!("body: %json {}", call_schema(format, &callable));
    let grammar = match (format, forced) {
        (ToolFormat::Hermes, true) => {
            let repeat = if parallel { " (\"\\n\" call)*" } else { "" };
            format!("start: call{repeat}\n{HERMES_CALL}\n{body}\n")
        }
        (ToolFormat::Hermes, false) => {
            let repeat = if parallel { " (\"\\n\" call)*" } else { "" };
            format!(
                "start: TEXT | lead body \"\\n</tool_call>\"{repeat}\n\
                 lead[lazy]: /(?s:.*)<tool_call>\\n/\n\
                 TEXT: /(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/\n{HERMES_CALL}\n{body}\n"
            )
        }
        (ToolFormat::Llama3Json, forced) => {
            let calls = if parallel { "body (\"; \" body)*" } else { "body" };
            let text = if forced { "" } else { "TEXT | " };
            format!("start: {text}{calls}\nTEXT: /(?s:.*)/ & ~/[ \\t\\n]*\\{{(?s:.*)/\n{body}\n")
        }
        (ToolFormat::Mistral, forced) => {
            let mut list = json!({ "type": "array", "items": call_schema_value(format, &callable), "minItems": 1 });
            if !parallel {
                list["maxItems"] = json!(1);
            }
            list["x-guidance"] = separators();
            let marker = match marker_token {
                Some(id) => format!("<[{id}]>"),
                None => format!("{:?}", super::MISTRAL_MARKER),
            };
            // Free text may not open a list: an answer starting `[` is read as calls.
            let text = if forced { "" } else { "TEXT | " };
            format!(
                "start: {text}{marker} calls\ncalls: %json {list}\n\
                 TEXT: /(?s:.*)/ & ~/[ \\t\\n]*\\[(?s:.*)/\n"
            )
        }
    };
    Some(OutputConstraint::Lark { grammar })
}

const HERMES_CALL: &str = "call: \"<tool_call>\\n\" body \"\\n</tool_call>\"";

/// A call object naming one of `tools`, its arguments valid against that tool's parameters.
fn call_schema(format: ToolFormat, tools: &[&ToolDefinition]) -> Value {
    let mut schema = call_schema_value(format, tools);
    schema["x-guidance"] = separators();
    schema
}

fn call_schema_value(format: ToolFormat, tools: &[&ToolDefinition]) -> Value {
    let key = format.arguments_key();
    let mut calls: Vec<Value> = tools
        .iter()
        .map(|tool| {
            json!({
                "type": "object",
                "properties": {
                    "name": { "const": tool.name },
                    key: parameters_schema(&tool.parameters),
                },
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    if calls.len() == 1 {
        calls.remove(0)
    } else {
        json!({ "anyOf": calls })
    }
}

/// Python's separators, the way templates print calls in the history the model was trained on;
/// and no `\uXXXX` escapes, so that arguments reprinted from their parsed value (a whole
/// answer) read exactly as they streamed.
fn separators() -> Value {
    json!({
        "item_separator": ", ",
        "key_separator": ": ",
        "whitespace_flexible": false,
        "json_allowed_escapes": "nrbtf\"\\",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolDefinition> {
        ["a", "b"]
            .iter()
            .map(|name| ToolDefinition {
                name: name.to_string(),
                description: None,
                parameters: json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
            })
            .collect()
    }

    fn grammar(format: ToolFormat, choice: ToolChoice, parallel: bool) -> String {
        match forced_call_grammar(format, &tools(), &choice, parallel, None) {
            Some(OutputConstraint::Lark { grammar }) => grammar,
            other => panic!("expected a Lark grammar, got {other:?}"),
        }
    }

    #[test]
    fn a_named_tool_is_the_only_one_in_the_grammar() {
        let g = grammar(ToolFormat::Hermes, ToolChoice::Tool { name: "b".into() }, false);
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(g.contains(r#""const":"b""#) && !g.contains(r#""const":"a""#), "{g}");
    }

    #[test]
    fn auto_leaves_room_for_text_and_parallel_calls_repeat() {
        let g = grammar(ToolFormat::Hermes, ToolChoice::Auto, true);
        assert!(g.starts_with("start: TEXT | lead body"), "{g}");
        assert!(g.contains("(\"\\n\" call)*"), "{g}");
        let llama = grammar(ToolFormat::Llama3Json, ToolChoice::Required, true);
        assert!(llama.starts_with("start: body (\"; \" body)*"), "{llama}");
        assert!(llama.contains(r#""parameters""#), "{llama}");
    }

    #[test]
    fn no_grammar_when_calls_are_not_wanted() {
        assert!(forced_call_grammar(ToolFormat::Hermes, &tools(), &ToolChoice::None, true, None)
            .is_none());
    }

    #[test]
    fn mistral_calls_follow_their_marker_named_by_id_when_it_is_one_token() {
        let mistral = grammar(ToolFormat::Mistral, ToolChoice::Required, false);
        assert!(mistral.starts_with(r#"start: "[TOOL_CALLS]" calls"#), "{mistral}");
        assert!(mistral.contains(r#""maxItems":1"#), "{mistral}");
        let auto =
            forced_call_grammar(ToolFormat::Mistral, &tools(), &ToolChoice::Auto, true, Some(5));
        let Some(OutputConstraint::Lark { grammar }) = auto else { panic!("{auto:?}") };
        assert!(grammar.starts_with("start: TEXT | <[5]> calls"), "{grammar}");
    }
}
