//! What a model reads about tools: declarations in the shape chat templates take, and, for a
//! template that does not render tools, Hearth's own tool prompt and history in the format's
//! text.

use serde_json::{json, Value};

use super::ToolFormat;
use crate::canonical::ToolDefinition;

/// Tool declarations in OpenAI's shape, which is what transformers hands templates as `tools`.
pub fn tool_declarations(tools: &[ToolDefinition]) -> Vec<Value> {
    tools
        .iter()
        .map(|tool| {
            let mut function = json!({ "name": tool.name });
            if let Some(description) = &tool.description {
                function["description"] = json!(description);
            }
            function["parameters"] = parameters_schema(&tool.parameters);
            json!({ "type": "function", "function": function })
        })
        .collect()
}

/// A tool's parameters schema; none declared means an object with anything in it.
pub(crate) fn parameters_schema(parameters: &Value) -> Value {
    match parameters {
        Value::Null => json!({ "type": "object", "properties": {} }),
        schema => schema.clone(),
    }
}

/// The system-prompt section that tells a model about `tools` when its template does not: the
/// wording of Qwen 2.5's template, adapted to each format's call syntax.
pub fn tool_prompt(format: ToolFormat, tools: &[ToolDefinition]) -> String {
    let declarations: Vec<String> = tool_declarations(tools).iter().map(python_json).collect();
    let key = format.arguments_key();
    let how = match format {
        ToolFormat::Hermes => format!(
            "For each function call, return a json object with function name and arguments \
             within <tool_call></tool_call> XML tags:\n<tool_call>\n\
             {{\"name\": <function-name>, \"{key}\": <args-json-object>}}\n</tool_call>"
        ),
        ToolFormat::Llama3Json => format!(
            "To call a function, respond only with a JSON object of the form \
             {{\"name\": <function-name>, \"{key}\": <args-json-object>}}; separate several \
             calls with \"; \"."
        ),
        ToolFormat::Mistral => format!(
            "To call functions, respond only with [TOOL_CALLS] followed by a JSON list of \
             objects of the form {{\"name\": <function-name>, \"{key}\": <args-json-object>}}."
        ),
    };
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
         {}\n</tools>\n\n{how}",
        declarations.join("\n")
    )
}

/// Past calls of an assistant turn, as the model would have written them.
pub fn calls_as_text(format: ToolFormat, calls: &[(String, Value)]) -> String {
    let key = format.arguments_key();
    let objects: Vec<String> = calls
        .iter()
        .map(|(name, arguments)| python_json(&json!({ "name": name, key: arguments })))
        .collect();
    match format {
        ToolFormat::Hermes => objects
            .iter()
            .map(|o| format!("<tool_call>\n{o}\n</tool_call>"))
            .collect::<Vec<_>>()
            .join("\n"),
        ToolFormat::Llama3Json => objects.join("; "),
        ToolFormat::Mistral => format!("[TOOL_CALLS][{}]", objects.join(", ")),
    }
}

/// A tool's answer, as a user turn the model can read (Qwen's wording).
pub fn result_as_text(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// JSON the way Python's `json.dumps` writes it (`", "` and `": "` separators), which is how
/// templates and training data print tool calls.
pub fn python_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde::Serialize::serialize(value, &mut serializer);
    String::from_utf8(out).unwrap_or_default()
}

/// `", "` before every item but the first, in arrays and objects alike.
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

/// serde_json's compact formatter with Python's default separators.
pub struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolDefinition {
        ToolDefinition {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }
    }

    #[test]
    fn json_is_written_with_pythons_separators() {
        assert_eq!(python_json(&json!({"a": [1, 2], "b": "<x>"})), r#"{"a": [1, 2], "b": "<x>"}"#);
    }

    #[test]
    fn the_tool_prompt_lists_every_tool_and_the_call_syntax() {
        let prompt = tool_prompt(ToolFormat::Hermes, &[weather()]);
        assert!(prompt.contains(r#"{"type": "function", "function": {"name": "get_weather""#));
        assert!(prompt.contains("<tool_call>\n{\"name\": <function-name>, \"arguments\""));
        assert!(tool_prompt(ToolFormat::Llama3Json, &[weather()]).contains("\"parameters\""));
    }

    #[test]
    fn past_calls_are_written_in_the_formats_syntax() {
        let calls = vec![("f".to_string(), json!({"x": 1})), ("g".to_string(), json!({}))];
        assert_eq!(
            calls_as_text(ToolFormat::Hermes, &calls),
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>"
        );
        assert_eq!(
            calls_as_text(ToolFormat::Mistral, &calls[..1]),
            "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": 1}}]"
        );
    }

    #[test]
    fn a_tool_without_parameters_takes_an_object() {
        let tool =
            ToolDefinition { name: "now".into(), description: None, parameters: Value::Null };
        let declared = tool_declarations(&[tool]);
        assert_eq!(declared[0]["function"]["parameters"]["type"], "object");
    }
}
