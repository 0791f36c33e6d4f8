//! A reasoning model's thinking, split from its answer: the text between `<think>` and
//! `</think>` (Qwen3, DeepSeek-R1, QwQ) is reasoning, the rest the answer. Templates that open
//! the thinking themselves (the generation prompt ends with `<think>`) start the model inside
//! it, so only `</think>` appears in the output.

use crate::marker::partial_suffix;
use crate::OutputConstraint;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a template can make a model think (it prints the thinking markers).
pub fn template_thinks(template: &str) -> bool {
    template.contains(OPEN) && template.contains(CLOSE)
}

/// `constraint` for a model that thinks first: its reasoning is free, and the grammar holds
/// from `</think>` on. `opened` when the rendered prompt already opened the thinking (then it
/// must be closed before the answer); otherwise the model may think first or answer at once.
/// Without this, a forced tool call or a `response_format` would either keep the model from
/// thinking or, when the prompt opened the thinking, be read as reasoning.
pub fn after_thinking(constraint: OutputConstraint, opened: bool) -> OutputConstraint {
    let (answer_rules, answer) = match constraint {
        OutputConstraint::Lark { grammar } => {
            // The answer grammar keeps its rules; its `start` becomes `answer`.
            let renamed = grammar
                .lines()
                .map(|line| match line.strip_prefix("start:") {
                    Some(rest) => format!("answer:{rest}"),
                    None => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            (renamed, String::new())
        }
        OutputConstraint::Regex { pattern } => {
            (String::new(), format!("answer: /{}/", pattern.replace('/', "\\/")))
        }
        json => {
            let mut schema = match json.json_schema() {
                Some(serde_json::Value::Bool(true)) | None => serde_json::json!({}),
                Some(schema) => schema,
            };
            if schema.is_object() && schema.get("x-guidance").is_none() {
                schema["x-guidance"] = serde_json::json!({ "whitespace_flexible": false });
            }
            (String::new(), format!("answer: %json {schema}"))
        }
    };
    let (think, start) = if opened {
        ("/(?s:.*)<\\/think>/", "start: think answer | think GAP answer")
    } else {
        ("/<think>(?s:.*)<\\/think>/", "start: answer | think answer | think GAP answer")
    };
    let grammar =
        format!("{start}\nthink[lazy]: {think}\nGAP: /[ \\t\\r\\n]+/\n{answer}\n{answer_rules}\n");
    OutputConstraint::Lark { grammar }
}

/// Whether a rendered prompt leaves the model inside its thinking.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

/// A piece of the model's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Reasoning(String),
    Answer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but blanks yet: the text may still open with `<think>`.
    Start,
    Thinking,
    /// Just past `</think>`: the blanks that follow it are layout.
    Closed,
    Answer,
}

/// Splits streamed text into reasoning and answer, holding back only what may be part of a
/// marker. Blanks around the reasoning and before the answer are dropped.
#[derive(Debug)]
pub struct ReasoningParser {
    state: State,
    pending: String,
    /// Whether any reasoning went out yet (blanks before it are dropped).
    reasoned: bool,
}

impl ReasoningParser {
    /// `inside` when the prompt already opened the thinking.
    pub fn new(inside: bool) -> Self {
        let state = if inside { State::Thinking } else { State::Start };
        Self { state, pending: String::new(), reasoned: false }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The text has ended: what is held back goes where it was headed.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        match self.state {
            State::Thinking => {
                let rest = if self.reasoned { rest.trim_end() } else { rest.trim() };
                push(&mut out, Piece::Reasoning(rest.to_string()))
            }
            State::Start | State::Answer => push(&mut out, Piece::Answer(rest)),
            State::Closed => {}
        }
        out
    }

    /// One move; false when more text is needed.
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.state {
            State::Start => {
                let head = self.pending.trim_start();
                if let Some(after) = head.strip_prefix(OPEN) {
                    self.pending = after.trim_start().to_string();
                    self.state = State::Thinking;
                    true
                } else if OPEN.starts_with(head) {
                    false
                } else {
                    self.state = State::Answer;
                    true
                }
            }
            State::Thinking => {
                if !self.reasoned {
                    self.pending = self.pending.trim_start().to_string();
                }
                if let Some(at) = self.pending.find(CLOSE) {
                    // Leading blanks went already, when reasoning was sent before.
                    let reasoning = self.pending[..at].trim_end().to_string();
                    self.pending.drain(..at + CLOSE.len());
                    push(out, Piece::Reasoning(reasoning));
                    self.state = State::Closed;
                    return true;
                }
                // Held back: a tail that may begin `</think>`, and trailing blanks.
                let keep = partial_suffix(&self.pending, CLOSE);
                let send = self.pending[..self.pending.len() - keep].trim_end().len();
                let text: String = self.pending.drain(..send).collect();
                self.reasoned |= !text.is_empty();
                push(out, Piece::Reasoning(text));
                false
            }
            State::Closed => {
                let trimmed = self.pending.trim_start();
                if trimmed.is_empty() {
                    self.pending.clear();
                    return false;
                }
                self.pending = trimmed.to_string();
                self.state = State::Answer;
                true
            }
            State::Answer => {
                let text = std::mem::take(&mut self.pending);
                push(out, Piece::Answer(text));
                false
            }
        }
    }
}

fn push(out: &mut Vec<Piece>, piece: Piece) {
    let empty = match &piece {
        Piece::Reasoning(text) | Piece::Answer(text) => text.is_empty(),
    };
    if !empty {
        out.push(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, inside: bool, size: usize) -> (String, String) {
        let mut parser = ReasoningParser::new(inside);
        let mut pieces = Vec::new();
        for chunk in crate::marker::chunks(text, size) {
            pieces.extend(parser.push(chunk));
        }
        pieces.extend(parser.finish());
        let (mut reasoning, mut answer) = (String::new(), String::new());
        for piece in pieces {
            match piece {
                Piece::Reasoning(t) => reasoning.push_str(&t),
                Piece::Answer(t) => answer.push_str(&t),
            }
        }
        (reasoning, answer)
    }

    #[test]
    fn thinking_and_answer_split_at_every_chunk_size() {
        let text = "<think>\nThe user wants 2+2.\nThat is 4.\n</think>\n\nIt is 4.";
        for size in 1..text.len() {
            assert_eq!(
                split(text, false, size),
                ("The user wants 2+2.\nThat is 4.".into(), "It is 4.".into()),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn a_prompt_that_opened_the_thinking_starts_inside_it() {
        assert_eq!(
            split("hmm, < maybe\n</think>\nYes.", true, 3),
            ("hmm, < maybe".into(), "Yes.".into())
        );
        assert_eq!(
            split("still thinking when cut", true, 4),
            ("still thinking when cut".into(), String::new())
        );
    }

    #[test]
    fn an_answer_without_thinking_passes_through() {
        for text in ["Hello <b>there</b>", "<thin air>", "  Hi  "] {
            assert_eq!(split(text, false, 2), (String::new(), text.to_string()));
        }
        assert_eq!(split("<think>\n\n</think>\n\nHi", false, 1), (String::new(), "Hi".into()));
    }

    #[test]
    fn a_grammar_after_thinking_keeps_its_rules_under_a_new_start() {
        let tool = OutputConstraint::Lark { grammar: "start: call\ncall: \"x\"\n".into() };
        let OutputConstraint::Lark { grammar } = after_thinking(tool, true) else { panic!() };
        assert!(grammar.starts_with("start: think answer | think GAP answer\n"), "{grammar}");
        assert!(grammar.contains("answer: call\ncall: \"x\""), "{grammar}");
        let schema = OutputConstraint::schema(serde_json::json!({"type": "object"}));
        let OutputConstraint::Lark { grammar } = after_thinking(schema, false) else { panic!() };
        assert!(grammar.starts_with("start: answer | think answer"), "{grammar}");
        assert!(
            grammar.contains(
                r#"answer: %json {"type":"object","x-guidance":{"whitespace_flexible":false}}"#
            ),
            "{grammar}"
        );
    }

    #[test]
    fn templates_and_prompts_are_recognised() {
        assert!(template_thinks("{{ '<think>\\n' }}{% if x %}</think>{% endif %}"));
        assert!(!template_thinks("{{ messages }}"));
        assert!(prompt_opens_thinking("<|im_start|>assistant\n<think>\n"));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    }
}
