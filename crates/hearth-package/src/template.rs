//! Chat templates from `tokenizer_config.json`, rendered with minijinja the way Hugging Face's
//! `apply_chat_template` renders them with Jinja2.

use hearth_protocol::ChatMessage;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value};

use crate::error::PackageError;

const TEMPLATE_NAME: &str = "chat";

/// A chat template compiled once at load time.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
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
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| PackageError::TemplateCompile { message: describe(&e) })?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Renders a conversation. With `add_generation_prompt` the text ends with the prompt that
    /// opens an assistant turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, PackageError> {
        let render_error = |e: Error| PackageError::TemplateRender { message: describe(&e) };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_error)?;
        template
            .render(context! {
                messages => Value::from(Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(render_error)
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
    use hearth_protocol::Role;

    use super::*;

    const CHATML: &str = "{% for message in messages %}\
        {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
        {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn conversation() -> Vec<ChatMessage> {
        vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hi")]
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
        let messages = [ChatMessage::new(Role::User, "  hi  ")];
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
}
