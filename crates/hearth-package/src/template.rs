//! Chat templates from `tokenizer_config.json`, rendered with minijinja the way Hugging Face's
//! `apply_chat_template` renders them with Jinja2.

use hearth_protocol::reasoning::template_thinks;
use hearth_protocol::tools::{template_renders_tools, PythonFormatter, ToolFormat};
use hearth_protocol::Conversation;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::PackageError;

const TEMPLATE_NAME: &str = "chat";
/// The name of the template transformers picks when a request has tools, if the package has
/// one (`chat_template` given as a list of named templates).
const TOOL_TEMPLATE_NAME: &str = "tool_use";
/// What a template sees from Hearth itself, which request kwargs may not set.
const RESERVED_VARIABLES: [&str; 6] =
    ["messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception"];

/// A chat template compiled once at load time.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    has_tool_template: bool,
    /// Read off the template used for requests with tools.
    tool_format: ToolFormat,
    renders_tools: bool,
    /// The template prints `<think>` markers: the model reasons before it answers.
    thinks: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` and `eos_token` are the strings the template sees under
    /// those names (empty when the package defines none).
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, PackageError> {
        let mut env = Environment::new();
        // Transformers compiles templates with trim_blocks and lstrip_blocks; without them the
        // same template renders different whitespace and thus different tokens.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| PackageError::TemplateCompile { message: e.to_string() })?;
        env.set_syntax(syntax);
        // Templates written for Python call string methods such as .strip() and .startswith().
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // Jinja2's `tojson` as transformers defines it: Python's `json.dumps` (", " and ": "
        // separators, no HTML escaping), so tool schemas render as the model saw them.
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| PackageError::TemplateCompile { message: describe(&e) })?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
            has_tool_template: false,
            tool_format: ToolFormat::detect(source),
            renders_tools: template_renders_tools(source),
            thinks: template_thinks(source),
        })
    }

    /// Adds the package's `tool_use` template, which then renders requests that have tools.
    pub fn with_tool_template(mut self, source: &str) -> Result<Self, PackageError> {
        self.env
            .add_template_owned(TOOL_TEMPLATE_NAME, source.to_string())
            .map_err(|e| PackageError::TemplateCompile { message: describe(&e) })?;
        self.has_tool_template = true;
        self.tool_format = ToolFormat::detect(source);
        self.renders_tools = template_renders_tools(source);
        self.thinks |= template_thinks(source);
        Ok(self)
    }

    /// How the model writes tool calls, as its template shows them.
    pub fn tool_format(&self) -> ToolFormat {
        self.tool_format
    }

    /// Whether the template prints the `tools` it is given (else they would vanish).
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// Whether the model writes its reasoning between `<think>` markers.
    pub fn thinks(&self) -> bool {
        self.thinks
    }

    /// Renders a conversation. With `add_generation_prompt` the text ends with the prompt that
    /// opens an assistant turn. Extra template variables never replace the standard ones.
    pub fn render(
        &self,
        conversation: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<String, PackageError> {
        let render_error = |e: Error| PackageError::TemplateRender { message: describe(&e) };
        let name = if self.has_tool_template && !conversation.tools.is_empty() {
            TOOL_TEMPLATE_NAME
        } else {
            TEMPLATE_NAME
        };
        let template = self.env.get_template(name).map_err(render_error)?;
        // Extra variables never stand in for what Hearth sets, nor hide its functions.
        let mut context = conversation.template_kwargs.clone();
        for reserved in RESERVED_VARIABLES {
            context.remove(reserved);
        }
        let standard = [
            ("messages", serde_json::to_value(&conversation.messages).unwrap_or_default()),
            ("add_generation_prompt", add_generation_prompt.into()),
            ("bos_token", self.bos_token.clone().into()),
            ("eos_token", self.eos_token.clone().into()),
        ];
        for (key, value) in standard {
            context.insert(key.to_string(), value);
        }
        if !conversation.tools.is_empty() {
            context.insert("tools".into(), conversation.tools.clone().into());
        }
        template.render(Value::from(Serde(&context))).map_err(render_error)
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// Templates call `raise_exception("...")` to refuse conversations they cannot format (for
/// example roles that do not alternate); the message is the useful part.
fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson`, written as Python's `json.dumps` writes, with its `indent`, `sort_keys`
/// and `ensure_ascii` arguments (transformers' filter passes them through).
fn python_tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let bad = |e: serde_json::Error| Error::new(ErrorKind::BadSerialization, e.to_string());
    let mut json = serde_json::to_value(value).map_err(bad)?;
    if sort_keys == Some(true) {
        json.sort_all_objects();
    }
    let value = &json;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => {
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter))
        }
    };
    written.map_err(bad)?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let text = if ensure_ascii == Some(true) { escape_non_ascii(&text) } else { text };
    Ok(Value::from_safe_string(text))
}

/// Python's `ensure_ascii`: every non-ASCII character as `\uXXXX` (surrogate pairs above the
/// BMP). Outside strings JSON is ASCII, so the whole text can be escaped.
fn escape_non_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// minijinja's message plus its cause chain and the template line, when there is one.
fn describe(error: &Error) -> String {
    let mut text = match (error.kind(), error.detail()) {
        // The template's own words, not minijinja's category name.
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        _ => error.to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use hearth_protocol::{ChatMessage, ChatToolCall, Role};
    use serde_json::json;

    use super::*;

    const CHATML: &str = "{% for message in messages %}\
        {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
        {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn conversation() -> Conversation {
        Conversation::new(vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hi"),
        ])
    }

    #[test]
    fn renders_chatml() {
        let template = ChatTemplate::new(CHATML, None, Some("<|im_end|>")).unwrap();
        let text = template.render(&conversation(), true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert!(!template.render(&conversation(), false).unwrap().ends_with("assistant\n"));
    }

    #[test]
    fn python_methods_tojson_and_bos_work() {
        let source = "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}|\
                      {{ m.role | tojson }}{% endfor %}";
        let template = ChatTemplate::new(source, Some("<s>"), None).unwrap();
        let messages = Conversation::new(vec![ChatMessage::new(Role::User, "  hi  ")]);
        assert_eq!(template.render(&messages, false).unwrap(), "<s>HI|\"user\"");
    }

    #[test]
    fn block_whitespace_is_trimmed_like_transformers() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        assert_eq!(template.render(&conversation(), false).unwrap(), "[Hi]\n");
    }

    #[test]
    fn raise_exception_reaches_the_caller() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let error = template.render(&conversation(), false).unwrap_err().to_string();
        assert!(error.contains("first message must be from the user"), "{error}");
    }

    #[test]
    fn syntax_errors_fail_at_compile_time() {
        let error = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("tokenizer_config.json: chat_template does not compile"));
    }

    /// The tool parts of Qwen 2.5's template, which is what Hermes-format models ship.
    const QWEN_TOOLS: &str = "{%- if tools %}<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}</tools>\n{%- endif %}\
        {%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls is defined %}\
        {%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}\
        <tool_call>\n{\"name\": \"{{ tool_call.name }}\", \"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>\
        {%- endfor %}{%- elif message.role == 'tool' %}<tool_response>{{ message.content }}</tool_response>\
        {%- else %}[{{ message.role }}: {{ message.content }}]{%- endif %}{%- endfor %}\
        {%- if enable_thinking is defined and not enable_thinking %}<think></think>{%- endif %}";

    #[test]
    fn tools_calls_and_results_render_like_transformers() {
        let template = ChatTemplate::new(QWEN_TOOLS, None, None).unwrap();
        assert!(template.renders_tools());
        assert_eq!(template.tool_format(), ToolFormat::Hermes);
        let mut assistant = ChatMessage::new(Role::Assistant, "");
        assistant.tool_calls = vec![ChatToolCall::function(
            "c1",
            "get_weather",
            json!({"city": "Paris", "n": [1, 2]}),
        )];
        let mut result = ChatMessage::new(Role::Tool, "18C");
        result.tool_call_id = Some("c1".into());
        let mut conversation =
            Conversation::new(vec![ChatMessage::new(Role::User, "Weather?"), assistant, result]);
        conversation.tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        conversation.template_kwargs.insert("enable_thinking".into(), json!(false));
        let text = template.render(&conversation, false).unwrap();
        assert_eq!(
            text,
            // trim_blocks eats the newline after `{% for %}`, as in Jinja2.
            "<tools>{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}</tools>\
             [user: Weather?]<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
             {\"city\": \"Paris\", \"n\": [1, 2]}}\n</tool_call><tool_response>18C</tool_response>\
             <think></think>"
        );
    }

    #[test]
    fn tojson_takes_pythons_arguments() {
        let source = "{{ {'b': 'é', 'a': 1} | tojson(sort_keys=true, ensure_ascii=true) }}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let text = template.render(&conversation(), false).unwrap();
        assert_eq!(text, r#"{"a": 1, "b": "\u00e9"}"#);
    }

    #[test]
    fn tojson_takes_an_indent_and_does_not_escape_html() {
        let source = "{{ messages[0] | tojson(indent=2) }}|{{ '<b>' | tojson }}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let text =
            template.render(&Conversation::new(vec![ChatMessage::new(Role::User, "x")]), false);
        assert_eq!(text.unwrap(), "{\n  \"role\": \"user\",\n  \"content\": \"x\"\n}|\"<b>\"");
    }

    #[test]
    fn the_tool_use_template_renders_requests_with_tools() {
        let template = ChatTemplate::new("plain", None, None)
            .unwrap()
            .with_tool_template("{{ tools | length }} tools <tool_call>")
            .unwrap();
        let mut conversation = conversation();
        assert_eq!(template.render(&conversation, false).unwrap(), "plain");
        conversation.tools = vec![json!({}), json!({})];
        assert_eq!(template.render(&conversation, false).unwrap(), "2 tools <tool_call>");
        let kwargs_cannot_replace = {
            conversation.template_kwargs.insert("tools".into(), json!([]));
            template.render(&conversation, false).unwrap()
        };
        assert_eq!(kwargs_cannot_replace, "2 tools <tool_call>");
    }
}
