//! A package served by this daemon's own engine, behind the same trait as the upstreams, so
//! the router, run buffers and ledger treat it like any route.

use std::collections::VecDeque;

use futures::StreamExt;
use hearth_engine::{
    run_blocking, Engine, EngineError, GenerateRequest, GenerationStream, Prompt, SubmitError,
};
use hearth_protocol::{
    CanonicalEvent, CanonicalRequest, ChatMessage, FinishReason, GenerationEvent, MessageRole,
    OutputConstraint, RawPrompt, Role, SamplingParams, StopReason, TokenUsage,
};

use super::{EventStream, Provider, ProviderError};
use crate::config::LOCAL_PROVIDER;

// Constants.

/// How long the router waits before retrying a local engine whose queue was full.
const LOCAL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

// Struct.

pub struct LocalProvider {
    engine: Engine,
}

impl LocalProvider {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

// Credentials: none; the engine is in this process.

// Trait impl.

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        LOCAL_PROVIDER
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        let input = prompt_input(request, model)?;
        let sampling = sampling_params(request, self.engine.info().context_length)
            .validated()
            .map_err(|e| submit_error(model, SubmitError::Invalid(e)))?;
        let constraint = request.response_format.clone();
        // Rendering and tokenizing a long history is CPU work for a blocking thread.
        let submitted = run_blocking(self.engine.clone(), move |engine| {
            let prompt = match input {
                PromptInput::Raw(RawPrompt::Text(text)) => Prompt::Text(text),
                PromptInput::Raw(RawPrompt::Tokens(ids)) => Prompt::Tokens(ids),
                PromptInput::Chat(messages) => {
                    Prompt::Templated(engine.render_chat(&messages).map_err(Refusal::Template)?)
                }
            };
            engine.submit(GenerateRequest { prompt, sampling, constraint }).map_err(Refusal::Submit)
        })
        .await
        .map_err(|e| submit_error(model, e))?;
        let stream = submitted.map_err(|refusal| match refusal {
            Refusal::Template(e) => {
                ProviderError::Unsupported { message: format!("local model `{model}`: {e}") }
            }
            Refusal::Submit(e) => submit_error(model, e),
        })?;
        Ok(events(model.to_string(), stream))
    }

    fn takes_raw_prompts(&self) -> bool {
        true
    }

    /// The engine enforces every kind of constraint, token by token, when its tokenizer can be
    /// constrained at all.
    fn enforces(&self, _constraint: &OutputConstraint) -> bool {
        self.engine.can_constrain()
    }
}

// Request.

/// What the engine is given: a conversation for the chat template, or a raw prompt.
enum PromptInput {
    Chat(Vec<ChatMessage>),
    Raw(RawPrompt),
}

fn prompt_input(request: &CanonicalRequest, model: &str) -> Result<PromptInput, ProviderError> {
    match &request.prompt {
        Some(_) if request.uses_tools() => Err(ProviderError::Unsupported {
            message: format!("local model `{model}` takes tools only with messages"),
        }),
        Some(raw) => Ok(PromptInput::Raw(raw.clone())),
        None => chat_messages(request, model).map(PromptInput::Chat),
    }
}

/// Why the engine did not take a request.
enum Refusal {
    Template(EngineError),
    Submit(SubmitError),
}

/// Local chat templates take plain text turns; tool calls need a model and template trained
/// for them, so a request using tools is refused here (and may fail over to another route).
fn chat_messages(
    request: &CanonicalRequest,
    model: &str,
) -> Result<Vec<ChatMessage>, ProviderError> {
    if request.uses_tools() {
        return Err(ProviderError::Unsupported {
            message: format!("local model `{model}` does not support tools"),
        });
    }
    let system = request.system.iter().map(|s| ChatMessage::new(Role::System, s.clone()));
    let turns = request.messages.iter().map(|m| {
        let role = match m.role {
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        };
        ChatMessage::new(role, m.joined_text())
    });
    Ok(system.chain(turns).collect())
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
        SubmitError::Internal(_) => ProviderError::Rejected { message, param: None, code: None },
    }
}

// Response conversion.

fn events(model: String, stream: GenerationStream) -> EventStream {
    let first = VecDeque::from([
        Ok(CanonicalEvent::MessageStart { model: model.clone() }),
        // The prompt's size is known now: a run cut short still bills it.
        Ok(CanonicalEvent::Usage {
            usage: TokenUsage { input_tokens: stream.prompt_tokens as u64, ..Default::default() },
        }),
    ]);
    let state = (stream, first, false, model);
    futures::stream::unfold(state, |(mut stream, mut pending, mut done, model)| async move {
        loop {
            if let Some(item) = pending.pop_front() {
                return Some((item, (stream, pending, done, model)));
            }
            if done {
                return None;
            }
            let event = stream.recv().await;
            done = event.as_ref().is_none_or(GenerationEvent::is_terminal);
            pending.extend(map_event(&model, event));
        }
    })
    .boxed()
}

/// One engine event → canonical events. `None` means the engine dropped the request.
fn map_event(
    model: &str,
    event: Option<GenerationEvent>,
) -> Vec<Result<CanonicalEvent, ProviderError>> {
    match event {
        Some(GenerationEvent::Text { text, .. }) => vec![Ok(CanonicalEvent::TextDelta { text })],
        Some(GenerationEvent::Finished { reason, usage }) => {
            let usage = TokenUsage {
                input_tokens: usage.prompt_tokens as u64,
                output_tokens: usage.completion_tokens as u64,
                cached_input_tokens: usage.cached_tokens as u64,
            };
            let reason = match reason {
                FinishReason::Length => StopReason::Length,
                FinishReason::Stop | FinishReason::Cancelled => StopReason::Stop,
            };
            vec![Ok(CanonicalEvent::Usage { usage }), Ok(CanonicalEvent::Finish { reason })]
        }
        Some(GenerationEvent::Failed { message }) => vec![Err(ProviderError::Stream {
            provider: LOCAL_PROVIDER.into(),
            message: format!("local model `{model}`: {message}"),
        })],
        None => vec![Err(ProviderError::Stream {
            provider: LOCAL_PROVIDER.into(),
            message: format!("local model `{model}` stopped without finishing"),
        })],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{ContentBlock, Message, Usage};

    #[test]
    fn tools_are_refused_and_text_turns_keep_their_roles() {
        let mut request = CanonicalRequest {
            model: "smol".into(),
            system: Some("sys".into()),
            messages: vec![Message::text(MessageRole::User, "hi")],
            ..Default::default()
        };
        let messages = chat_messages(&request, "smol").unwrap();
        assert_eq!(
            messages,
            vec![ChatMessage::new(Role::System, "sys"), ChatMessage::new(Role::User, "hi")]
        );
        request.messages.push(Message {
            role: MessageRole::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "c".into(),
                name: "f".into(),
                input: serde_json::json!({}),
            }],
        });
        let err = chat_messages(&request, "smol").unwrap_err();
        assert_eq!(err.to_string(), "local model `smol` does not support tools");
        assert_eq!(err.disposition(), super::super::Disposition::NextRoute);
    }

    #[test]
    fn engine_events_become_canonical_events() {
        let finished = GenerationEvent::Finished {
            reason: FinishReason::Length,
            usage: Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 1 },
        };
        let events: Vec<_> =
            map_event("m", Some(finished)).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                CanonicalEvent::Usage {
                    usage: TokenUsage { input_tokens: 3, output_tokens: 2, cached_input_tokens: 1 }
                },
                CanonicalEvent::Finish { reason: StopReason::Length },
            ]
        );
        assert!(map_event("m", Some(GenerationEvent::Failed { message: "oom".into() }))[0].is_err());
        assert!(map_event("m", None)[0].is_err());
    }

    #[test]
    fn sampling_defaults_fill_what_the_caller_left_out() {
        let request = CanonicalRequest { max_tokens: Some(9), ..Default::default() };
        let params = sampling_params(&request, 2048);
        assert_eq!((params.max_tokens, params.top_p), (9, 1.0));
        let default = CanonicalRequest::default();
        assert_eq!(sampling_params(&default, 2048).max_tokens, 2048, "up to the context");
    }
}
