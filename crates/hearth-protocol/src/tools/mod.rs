//! How a local model writes tool calls: the text formats of the families Hearth serves, chosen
//! from the chat template (or set in `hearth.yaml`), with what each needs on the way in (a tool
//! prompt, when the template has none), on the way out (a streaming parser) and to force a call
//! (a grammar).
//!
//! The formats are the ones vLLM's parsers of the same names read:
//! - `hermes` (Hermes, Qwen 2.5/3, and Hearth's own prompt for templates without tools):
//!   `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, one block per call;
//! - `llama3_json` (Llama 3.1–3.3): the whole answer is `{"name": "f", "parameters": {...}}`,
//!   calls separated by `;`;
//! - `mistral`: `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]` (the marker is a
//!   special token, so the decoded text may start at the `[`).

mod grammar;
mod parse;
mod prompt;

pub use grammar::forced_call_grammar;
pub use parse::ToolCallParser;
pub use prompt::{
    calls_as_text, python_json, result_as_text, tool_declarations, tool_prompt, PythonFormatter,
};

use serde::{Deserialize, Serialize};

/// What Mistral's calls begin with: one special token in Mistral's own tokenizers.
pub(crate) const MISTRAL_MARKER: &str = "[TOOL_CALLS]";

/// A family's way of writing tool calls (`tool_parser` in `hearth.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    Hermes,
    #[serde(rename = "llama3_json")]
    Llama3Json,
    Mistral,
}

impl ToolFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral => "mistral",
        }
    }

    /// The format a chat template was written for, read off the markers it prints; Hermes for
    /// a template that prints none (Hearth then describes the tools itself, in Hermes form,
    /// which small instruction-tuned models follow best).
    pub fn detect(template: &str) -> Self {
        if template.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if template.contains("<|python_tag|>") || template.contains("ipython") {
            Self::Llama3Json
        } else {
            Self::Hermes
        }
    }

    /// The marker a format's calls begin with, where models have it as one special token;
    /// [`forced_call_grammar`] names it by id when the tokenizer has it.
    pub fn special_marker(self) -> Option<&'static str> {
        match self {
            Self::Mistral => Some(MISTRAL_MARKER),
            Self::Hermes | Self::Llama3Json => None,
        }
    }

    /// The key a call's arguments go under.
    pub(crate) fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3Json => "parameters",
            Self::Hermes | Self::Mistral => "arguments",
        }
    }
}

/// Whether a chat template renders the `tools` variable itself. One that does not would drop
/// the tools silently (as transformers does); Hearth adds its own tool prompt instead.
pub fn template_renders_tools(template: &str) -> bool {
    let bytes = template.as_bytes();
    template.match_indices("tools").any(|(at, word)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + word.len()).copied();
        let is_ident = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        !is_ident(before) && !is_ident(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_read_off_the_template() {
        assert_eq!(ToolFormat::detect("{{ '<tool_call>' }}"), ToolFormat::Hermes);
        assert_eq!(ToolFormat::detect("{{ '[TOOL_CALLS]' }}"), ToolFormat::Mistral);
        assert_eq!(ToolFormat::detect("<|python_tag|>"), ToolFormat::Llama3Json);
        assert_eq!(ToolFormat::detect("{{ messages }}"), ToolFormat::Hermes);
    }

    #[test]
    fn only_the_tools_variable_counts_as_rendering_tools() {
        assert!(template_renders_tools("{%- if tools %}{{ tools | tojson }}{% endif %}"));
        assert!(!template_renders_tools("{{ message.tool_calls }}{{ toolset }}"));
        assert!(!template_renders_tools("{% for m in messages %}{{ m.content }}{% endfor %}"));
    }

    #[test]
    fn hearth_yaml_names_parse() {
        let f: ToolFormat = serde_json::from_str("\"llama3_json\"").unwrap();
        assert_eq!(f, ToolFormat::Llama3Json);
        assert_eq!(f.as_str(), "llama3_json");
    }
}
