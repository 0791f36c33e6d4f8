//! A package served by this daemon's own engine, behind the same trait as the upstreams, so
//! the router, run buffers and ledger treat it like any route.
//!
//! A request with tools is rendered through the model's own chat template
//! ([`conversation`]), held to a grammar where calls are required ([`forced_call_grammar`]),
//! and its text read back into tool-call events ([`ToolCallParser`]).
//!
//! [`forced_call_grammar`]: hearth_protocol::tools::forced_call_grammar

mod conversation;
mod events;

use hearth_engine::{
    run_blocking, ChatTraits, Engine, EngineError, GenerateRequest, GenerationStream, Prompt,
    SubmitError,
};
use hearth_protocol::reasoning::{after_thinking, prompt_opens_thinking, ReasoningParser};
use hearth_protocol::tools::{ToolCallParser, ToolFormat};
use hearth_protocol::{
    CanonicalRequest, Conversation, OutputConstraint, RawPrompt, SamplingParams, ValidSampling,
};
use rand::distr::{Alphanumeric, SampleString};

use super::{EventStream, Provider, ProviderError};
use crate::config::LOCAL_PROVIDER;

// Constants.

/// How long the router waits before retrying a local engine whose queue was full.
const LOCAL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

// Struct.

pub struct LocalProvider {
    engine: Engine,
    /// The LoRA adapter every request through this provider runs with.
    adapter: Option<String>,
}

impl LocalProvider {
    pub fn new(engine: Engine) -> Self {
        Self { engine, adapter: None }
    }

    pub fn with_adapter(self, adapter: Option<String>) -> Self {
        Self { adapter, ..self }
    }
}

// Credentials: none; the engine is in this process.

// Trait impl.

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        LOCAL_PROVIDER
    }

    fn system(&self) -> &'static str {
        "hearth"
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        let traits = self.engine.chat_traits();
        let input = prompt_input(request, model, traits)?;
        let is_chat = matches!(input, PromptInput::Chat(_));
        let sampling = sampling_params(request, self.engine.info().context_length)
            .validated()
            .map_err(|e| submit_error(model, SubmitError::Invalid(e)))?;
        let mut constraint = conversation::output_constraint(request, traits);
        if constraint != request.response_format && !self.engine.can_constrain() {
            // A tokenizer llguidance cannot read: `auto` reads calls from free text, and a
            // forced call is left to another route.
            if conversation::forces_calls(request) {
                return Err(ProviderError::Unsupported {
                    message: format!("local model `{model}` cannot force tool calls"),
                });
            }
            constraint = request.response_format.clone();
        }
        // A grammar that fails to compile is the tools' fault when it came from them.
        let grammar_param =
            if constraint == request.response_format { "response_format" } else { "tools" };
        let request_for_engine =
            EngineInput { input, sampling, constraint, thinks: is_chat && traits.thinks };
        let (stream, opens_thinking) = self
            .submit(request_for_engine)
            .await
            .map_err(|e| submit_error(model, e))?
            .map_err(|refusal| refusal.into_error(model, grammar_param))?;
        let names = request.tools.iter().map(|t| t.name.clone()).collect();
        let readers = events::Readers {
            reasoning: (is_chat && traits.thinks).then(|| ReasoningParser::new(opens_thinking)),
            tools: conversation::parses_tool_calls(request)
                .then(|| ToolCallParser::new(traits.format, names, call_ids(traits.format))),
            single_call: request.parallel_tool_calls == Some(false),
        };
        Ok(events::events(model.to_string(), stream, readers))
    }

    fn takes_raw_prompts(&self) -> bool {
        true
    }

    fn first_content_has_deadline(&self) -> bool {
        false
    }

    /// The engine enforces every kind of constraint, token by token, when its tokenizer can be
    /// constrained at all.
    fn enforces(&self, _constraint: &OutputConstraint) -> bool {
        self.engine.can_constrain()
    }
}

// Request.

impl LocalProvider {
    /// Renders and queues a request on a blocking thread (rendering and tokenizing a long
    /// history is CPU work). Also says whether the rendered prompt left the model inside its
    /// thinking.
    async fn submit(
        &self,
        request: EngineInput,
    ) -> Result<Result<(GenerationStream, bool), Refusal>, SubmitError> {
        let adapter = self.adapter.clone();
        run_blocking(self.engine.clone(), move |engine| {
            let EngineInput { input, sampling, mut constraint, thinks } = request;
            let prompt = match input {
                PromptInput::Raw(RawPrompt::Text(text)) => Prompt::Text(text),
                PromptInput::Raw(RawPrompt::Tokens(ids)) => Prompt::Tokens(ids),
                PromptInput::Chat(conversation) => {
                    Prompt::Templated(engine.render_chat(&conversation).map_err(Refusal::Template)?)
                }
            };
            let opens_thinking =
                matches!(&prompt, Prompt::Templated(text) if prompt_opens_thinking(text));
            if thinks {
                constraint = constraint.map(|c| after_thinking(c, opens_thinking));
            }
            let request = GenerateRequest { prompt, sampling, constraint, adapter };
            let stream = engine.submit(request).map_err(Refusal::Submit)?;
            Ok((stream, opens_thinking))
        })
        .await
    }
}

/// Everything the engine is handed for one request.
struct EngineInput {
    input: PromptInput,
    sampling: ValidSampling,
    constraint: Option<OutputConstraint>,
    /// The model thinks first: the constraint holds only after its reasoning.
    thinks: bool,
}

/// What the engine is given: a conversation for the chat template, or a raw prompt.
enum PromptInput {
    Chat(Conversation),
    Raw(RawPrompt),
}

fn prompt_input(
    request: &CanonicalRequest,
    model: &str,
    tools: ChatTraits,
) -> Result<PromptInput, ProviderError> {
    match &request.prompt {
        Some(_) if request.uses_tools() => Err(ProviderError::Unsupported {
            message: format!("local model `{model}` takes tools only with messages"),
        }),
        Some(raw) => Ok(PromptInput::Raw(raw.clone())),
        None => Ok(PromptInput::Chat(conversation::conversation(request, tools))),
    }
}

/// Tool call ids as OpenAI writes them; Mistral's templates insist on nine characters.
fn call_ids(format: ToolFormat) -> Box<dyn FnMut() -> String + Send> {
    match format {
        ToolFormat::Mistral => Box::new(|| Alphanumeric.sample_string(&mut rand::rng(), 9)),
        _ => Box::new(|| format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))),
    }
}

/// Why the engine did not take a request.
enum Refusal {
    Template(EngineError),
    Submit(SubmitError),
}

impl Refusal {
    /// `grammar_param` names the field whose grammar failed to compile.
    fn into_error(self, model: &str, grammar_param: &str) -> ProviderError {
        match self {
            Refusal::Template(e) => {
                ProviderError::Unsupported { message: format!("local model `{model}`: {e}") }
            }
            Refusal::Submit(SubmitError::Grammar(e)) => ProviderError::Rejected {
                message: format!("local model `{model}`: {}", SubmitError::Grammar(e)),
                param: Some(grammar_param.into()),
                code: None,
            },
            Refusal::Submit(e) => submit_error(model, e),
        }
    }
}

fn sampling_params(request: &CanonicalRequest, context_length: usize) -> SamplingParams {
    let s = &request.sampling;
    let defaults = SamplingParams::default();
    SamplingParams {
        temperature: s.temperature.unwrap_or(defaults.temperature),
        top_k: s.top_k.map_or(defaults.top_k, |k| k as usize),
        top_p: s.top_p.unwrap_or(defaults.top_p),
        presence_penalty: s.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: s.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        min_p: s.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: s.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        ignore_eos: s.ignore_eos.unwrap_or(defaults.ignore_eos),
        seed: s.seed,
        // No limit given: up to the end of the context (the engine stops the request there,
        // with `length`), as OpenAI documents for its APIs.
        max_tokens: request.max_tokens.map_or(context_length, |m| m as usize),
        stop: request.stop.clone(),
    }
}

fn submit_error(model: &str, error: SubmitError) -> ProviderError {
    let message = format!("local model `{model}`: {error}");
    match error {
        SubmitError::Overloaded { .. } => ProviderError::Overloaded {
            provider: LOCAL_PROVIDER.into(),
            message,
            retry_after: Some(LOCAL_RETRY_AFTER),
        },
        SubmitError::ShuttingDown => ProviderError::Unsupported { message },
        SubmitError::PromptTooLong { .. } => ProviderError::Rejected {
            message,
            param: Some("prompt".into()),
            code: Some("context_length_exceeded".into()),
        },
        SubmitError::Invalid(ref invalid) => {
            let param = Some(invalid.field.clone());
            ProviderError::Rejected { message, param, code: None }
        }
        SubmitError::TooLarge { .. } => {
            ProviderError::Rejected { message, param: Some("max_tokens".into()), code: None }
        }
        SubmitError::EmptyPrompt | SubmitError::BadToken { .. } | SubmitError::Tokenize(_) => {
            ProviderError::Rejected { message, param: Some("prompt".into()), code: None }
        }
        SubmitError::Grammar(_) => {
            ProviderError::Rejected { message, param: Some("response_format".into()), code: None }
        }
        SubmitError::Adapter(_) => {
            ProviderError::Rejected { message, param: Some("model".into()), code: None }
        }
        SubmitError::Internal(_) => ProviderError::Rejected { message, param: None, code: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_defaults_fill_what_the_caller_left_out() {
        let request = CanonicalRequest { max_tokens: Some(9), ..Default::default() };
        let params = sampling_params(&request, 2048);
        assert_eq!((params.max_tokens, params.top_p), (9, 1.0));
        let default = CanonicalRequest::default();
        assert_eq!(sampling_params(&default, 2048).max_tokens, 2048, "up to the context");
    }

    #[test]
    fn raw_prompts_take_no_tools() {
        let request = CanonicalRequest {
            prompt: Some(RawPrompt::Text("hi".into())),
            tools: vec![hearth_protocol::ToolDefinition {
                name: "f".into(),
                description: None,
                parameters: serde_json::Value::Null,
            }],
            ..Default::default()
        };
        let support = ChatTraits {
            format: ToolFormat::Hermes,
            template_renders_tools: true,
            thinks: false,
            call_marker_token: None,
        };
        let Err(err) = prompt_input(&request, "smol", support) else { panic!("accepted") };
        assert_eq!(err.disposition(), super::super::Disposition::NextRoute);
    }
}
