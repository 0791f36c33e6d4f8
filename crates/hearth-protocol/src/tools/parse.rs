//! Tool calls out of a model's streamed text. Text outside calls passes through as it comes
//! (less a tail that may be the start of a call marker); a Hermes call's arguments stream as
//! the model writes them once its name is known, the way OpenAI streams them: the call's id
//! and name once, then fragments of the arguments that concatenate to the whole.

use serde_json::Value;

use super::{ToolFormat, MISTRAL_MARKER};
use crate::canonical::CanonicalEvent;
use crate::marker::partial_suffix;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const LLAMA_MARKER: &str = "<|python_tag|>";

/// Makes a new tool call id.
pub type IdSource = Box<dyn FnMut() -> String + Send>;

pub struct ToolCallParser {
    format: ToolFormat,
    /// The declared tools: a call to any other name is not a call.
    names: Vec<String>,
    new_id: IdSource,
    /// Text received and not yet classified.
    pending: String,
    state: State,
    calls: u32,
}

enum State {
    /// Before anything but whitespace (where Llama 3 and Mistral calls begin).
    Start,
    Text,
    /// Inside a Hermes `<tool_call>` block.
    Call(CallBlock),
    /// A Llama 3 or Mistral answer that began like calls: read whole at the end.
    Whole,
}

#[derive(Default)]
struct CallBlock {
    body: String,
    streaming: Streaming,
}

#[derive(Default)]
enum Streaming {
    /// The body's start has not yet shown whether its name comes first.
    #[default]
    Undecided,
    /// The name came first; arguments stream from `start`, `sent` bytes so far.
    Arguments { index: u32, start: usize, sent: usize, compact: Minifier },
    /// Keys in another order: the call is read whole at its end.
    Whole,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat, names: Vec<String>, new_id: IdSource) -> Self {
        Self { format, names, new_id, pending: String::new(), state: State::Start, calls: 0 }
    }

    /// Whether the answer so far made any tool call.
    pub fn made_calls(&self) -> bool {
        self.calls > 0
    }

    /// Reads the next piece of generated text.
    pub fn push(&mut self, text: &str) -> Vec<CanonicalEvent> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            let progressed = match &mut self.state {
                State::Start => self.start(),
                State::Text => self.text(&mut out),
                State::Call(_) => self.call(&mut out),
                State::Whole => false,
            };
            if !progressed {
                return out;
            }
        }
    }

    /// The text has ended: whatever is held back is resolved.
    pub fn finish(&mut self) -> Vec<CanonicalEvent> {
        let mut out = Vec::new();
        if let State::Call(block) = &mut self.state {
            // A closing marker cut short by the token limit is not part of the call.
            let pending = std::mem::take(&mut self.pending);
            let cut = pending.trim();
            if cut.is_empty() || !CLOSE.starts_with(cut) {
                block.body.push_str(&pending);
            }
            self.stream_arguments(&mut out);
        }
        let pending = std::mem::take(&mut self.pending);
        match std::mem::replace(&mut self.state, State::Text) {
            // Blanks after the last call are layout.
            State::Start | State::Text if self.calls > 0 && pending.trim().is_empty() => {}
            State::Start | State::Text => push_text(&mut out, pending),
            State::Call(block) => self.end_call(block, &mut out),
            State::Whole => {
                if let Some(calls) = whole_calls(self.format, &self.names, &pending) {
                    for (name, arguments) in calls {
                        self.emit_call(name, arguments.to_string(), &mut out);
                    }
                } else {
                    push_text(&mut out, pending);
                }
            }
        }
        out
    }

    /// Decides, at the first non-blank text, whether a Llama 3 or Mistral answer is calls.
    fn start(&mut self) -> bool {
        let head = self.pending.trim_start();
        if head.is_empty() {
            return false;
        }
        let opens_calls = match self.format {
            ToolFormat::Hermes => false,
            ToolFormat::Llama3Json => head.starts_with('{') || head.starts_with(LLAMA_MARKER),
            ToolFormat::Mistral => head.starts_with('[') || head.starts_with(MISTRAL_MARKER),
        };
        let could_open = match self.format {
            ToolFormat::Llama3Json => LLAMA_MARKER.starts_with(head),
            ToolFormat::Mistral => MISTRAL_MARKER.starts_with(head),
            ToolFormat::Hermes => false,
        };
        if could_open && !opens_calls {
            return false;
        }
        self.state = if opens_calls { State::Whole } else { State::Text };
        true
    }

    fn text(&mut self, out: &mut Vec<CanonicalEvent>) -> bool {
        if self.format == ToolFormat::Hermes {
            if let Some(at) = self.pending.find(OPEN) {
                let before: String = self.pending.drain(..at + OPEN.len()).collect();
                // Blank text between calls is layout, not an answer.
                push_text(out, before[..at].trim_end().to_string());
                self.state = State::Call(CallBlock::default());
                return true;
            }
        }
        // Held back: a tail that may begin a marker, and trailing blanks (dropped if a call
        // follows them).
        let keep = partial_suffix(&self.pending, OPEN);
        let send = self.pending[..self.pending.len() - keep].trim_end().len();
        let text: String = self.pending.drain(..send).collect();
        push_text(out, text);
        false
    }

    fn call(&mut self, out: &mut Vec<CanonicalEvent>) -> bool {
        let State::Call(block) = &mut self.state else { return false };
        if let Some(at) = self.pending.find(CLOSE) {
            block.body.push_str(&self.pending[..at]);
            self.pending.drain(..at + CLOSE.len());
            // The same reading whether the call came in pieces or at once.
            self.stream_arguments(out);
            let State::Call(block) = std::mem::replace(&mut self.state, State::Text) else {
                return false;
            };
            self.end_call(block, out);
            return true;
        }
        let keep = partial_suffix(&self.pending, CLOSE);
        let take = self.pending.len() - keep;
        block.body.extend(self.pending.drain(..take));
        self.stream_arguments(out);
        false
    }

    /// Sends what is certain of a call's arguments: up to the last `}` seen, which may be the
    /// call object's own closing brace.
    fn stream_arguments(&mut self, out: &mut Vec<CanonicalEvent>) {
        let State::Call(block) = &mut self.state else { return };
        if let Streaming::Undecided = block.streaming {
            match name_first(&block.body) {
                Prefix::Incomplete => return,
                Prefix::Other => {
                    block.streaming = Streaming::Whole;
                    return;
                }
                // Not a declared tool: the block is read whole, and stays text.
                Prefix::NameFirst { name, .. } if !declared(&self.names, &name) => {
                    block.streaming = Streaming::Whole;
                    return;
                }
                Prefix::NameFirst { name, arguments_at } => {
                    let index = self.calls;
                    self.calls += 1;
                    let id = (self.new_id)();
                    out.push(CanonicalEvent::ToolCallStart { index, id, name });
                    block.streaming = Streaming::Arguments {
                        index,
                        start: arguments_at,
                        sent: 0,
                        compact: Minifier::default(),
                    };
                }
            }
        }
        if let Streaming::Arguments { index, start, sent, compact } = &mut block.streaming {
            let region = &block.body[*start..];
            let certain =
                region.rfind('}').map_or(region.len(), |brace| region[..brace].trim_end().len());
            if certain > *sent {
                let arguments = compact.feed(&region[*sent..certain]);
                *sent = certain;
                if !arguments.is_empty() {
                    out.push(CanonicalEvent::ToolCallDelta { index: *index, arguments });
                }
            }
        }
    }

    fn end_call(&mut self, block: CallBlock, out: &mut Vec<CanonicalEvent>) {
        match block.streaming {
            Streaming::Arguments { index, start, sent, mut compact } => {
                let region = block.body[start..].trim_end();
                let whole = region.strip_suffix('}').unwrap_or(region).trim_end();
                let arguments = compact.feed(whole.get(sent..).unwrap_or_default());
                if !arguments.is_empty() {
                    out.push(CanonicalEvent::ToolCallDelta { index, arguments });
                }
            }
            Streaming::Undecided | Streaming::Whole => {
                match self.call_object(&block.body) {
                    Some((name, arguments)) => self.emit_call(name, arguments.to_string(), out),
                    // Not a call after all: the model's text, as it wrote it.
                    None => push_text(out, format!("{OPEN}{}{CLOSE}", block.body)),
                }
            }
        }
    }

    fn emit_call(&mut self, name: String, arguments: String, out: &mut Vec<CanonicalEvent>) {
        let index = self.calls;
        self.calls += 1;
        let id = (self.new_id)();
        out.push(CanonicalEvent::ToolCallStart { index, id, name });
        out.push(CanonicalEvent::ToolCallDelta { index, arguments });
    }
}

/// Drops the blanks between JSON tokens as text streams through, so streamed arguments read
/// the same as the whole answer's, which are printed compact (as OpenAI prints them).
#[derive(Default)]
struct Minifier {
    in_string: bool,
    escaped: bool,
}

impl Minifier {
    fn feed(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => self.in_string = false,
                    _ => {}
                }
            } else if c == '"' {
                self.in_string = true;
            } else if c.is_whitespace() {
                continue;
            }
            out.push(c);
        }
        out
    }
}

fn push_text(out: &mut Vec<CanonicalEvent>, text: String) {
    if !text.is_empty() {
        out.push(CanonicalEvent::TextDelta { text });
    }
}

enum Prefix {
    Incomplete,
    Other,
    NameFirst { name: String, arguments_at: usize },
}

/// Reads `{"name": "<name>", "arguments": ` off the start of a call body.
fn name_first(body: &str) -> Prefix {
    let mut rest = body;
    for literal in ["{", "\"name\"", ":"] {
        match expect(rest, literal) {
            Ok(after) => rest = after,
            Err(prefix) => return prefix,
        }
    }
    let trimmed = rest.trim_start();
    let mut strings = serde_json::Deserializer::from_str(trimmed).into_iter::<String>();
    let name = match strings.next() {
        Some(Ok(name)) => name,
        Some(Err(e)) if e.is_eof() => return Prefix::Incomplete,
        None => return Prefix::Incomplete,
        Some(Err(_)) => return Prefix::Other,
    };
    rest = &trimmed[strings.byte_offset()..];
    for literal in [",", "\"arguments\"", ":"] {
        match expect(rest, literal) {
            Ok(after) => rest = after,
            Err(prefix) => return prefix,
        }
    }
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Prefix::Incomplete;
    }
    Prefix::NameFirst { name, arguments_at: body.len() - rest.len() }
}

/// `text` after optional blanks and `literal`; else whether it may still come.
fn expect<'a>(text: &'a str, literal: &str) -> Result<&'a str, Prefix> {
    let text = text.trim_start();
    if let Some(after) = text.strip_prefix(literal) {
        Ok(after)
    } else if literal.starts_with(text) {
        Err(Prefix::Incomplete)
    } else {
        Err(Prefix::Other)
    }
}

impl ToolCallParser {
    /// A Hermes block's call object: `{"name": ..., "arguments": {...}}` (arguments may be
    /// left out when there are none).
    fn call_object(&self, text: &str) -> Option<(String, Value)> {
        let value: Value = serde_json::from_str(text.trim()).ok()?;
        object_call(self.format, &self.names, value, false)
    }
}

fn declared(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name)
}

/// `{"name": ..., "arguments" | "parameters": {...}}` naming a declared tool. A whole answer
/// (`require_arguments`) must carry the arguments key, or a plain JSON answer that happens to
/// have a `name` would read as a call.
fn object_call(
    format: ToolFormat,
    names: &[String],
    value: Value,
    require_arguments: bool,
) -> Option<(String, Value)> {
    let Value::Object(mut object) = value else { return None };
    let name = match object.remove("name")? {
        Value::String(name) if declared(names, &name) => name,
        _ => return None,
    };
    let arguments = object
        .remove(format.arguments_key())
        .or_else(|| object.remove("arguments"))
        .or_else(|| object.remove("parameters"));
    let arguments = match arguments {
        Some(arguments) => arguments,
        None if require_arguments => return None,
        None => Value::Object(Default::default()),
    };
    arguments.is_object().then_some((name, arguments))
}

/// A whole Llama 3 answer (`;`-separated objects) or Mistral answer (a list) as calls.
fn whole_calls(format: ToolFormat, names: &[String], text: &str) -> Option<Vec<(String, Value)>> {
    let text = text.trim();
    let values: Vec<Value> = match format {
        ToolFormat::Mistral => {
            let list = text.strip_prefix(MISTRAL_MARKER).unwrap_or(text);
            match serde_json::from_str(list.trim()).ok()? {
                Value::Array(items) => items,
                object => vec![object],
            }
        }
        ToolFormat::Llama3Json => {
            let text = text.strip_prefix(LLAMA_MARKER).unwrap_or(text);
            let mut values = Vec::new();
            for part in split_top_level(text, ';') {
                values.push(serde_json::from_str(part.trim()).ok()?);
            }
            values
        }
        ToolFormat::Hermes => return None,
    };
    values.into_iter().map(|v| object_call(format, names, v, true)).collect()
}

/// Splits at `separator` outside JSON strings and brackets.
fn split_top_level(text: &str, separator: char) -> Vec<&str> {
    let (mut parts, mut depth, mut in_string, mut escaped, mut from) =
        (Vec::new(), 0i32, false, false, 0);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => depth += 1,
            '}' | ']' if !in_string => depth -= 1,
            c if c == separator && !in_string && depth == 0 => {
                parts.push(&text[from..at]);
                from = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[from..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
