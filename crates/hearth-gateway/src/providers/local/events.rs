//! The engine's generation events as canonical events. The model's text is read twice on its
//! way out: its reasoning is split from its answer, and tool calls are read out of the answer.

use std::collections::VecDeque;

use futures::StreamExt;
use hearth_engine::GenerationStream;
use hearth_protocol::reasoning::{Piece, ReasoningParser};
use hearth_protocol::tools::ToolCallParser;
use hearth_protocol::{CanonicalEvent, FinishReason, GenerationEvent, StopReason, TokenUsage};

use super::super::{EventStream, ProviderError};
use crate::config::LOCAL_PROVIDER;

/// The readers a request's text goes through; `None` passes it on as answer text.
#[derive(Default)]
pub(super) struct Readers {
    /// Present when the model thinks before it answers.
    pub reasoning: Option<ReasoningParser>,
    /// Present when the request has tools the model may call.
    pub tools: Option<ToolCallParser>,
    /// At most one call (`parallel_tool_calls: false`), whatever the model writes; a grammar
    /// enforces it where there is one, this where there is none.
    pub single_call: bool,
}

pub(super) fn events(model: String, stream: GenerationStream, readers: Readers) -> EventStream {
    let first = VecDeque::from([
        Ok(CanonicalEvent::MessageStart { model: model.clone() }),
        // The prompt's size is known now: a run cut short still bills it.
        Ok(CanonicalEvent::Usage {
            usage: TokenUsage { input_tokens: stream.prompt_tokens as u64, ..Default::default() },
        }),
    ]);
    let mapper = EventMapper { model, readers };
    let state = (stream, first, false, mapper);
    futures::stream::unfold(state, |(mut stream, mut pending, mut done, mut mapper)| async move {
        loop {
            if let Some(item) = pending.pop_front() {
                return Some((item, (stream, pending, done, mapper)));
            }
            if done {
                return None;
            }
            let event = stream.recv().await;
            done = event.as_ref().is_none_or(GenerationEvent::is_terminal);
            pending.extend(mapper.map(event));
        }
    })
    .boxed()
}

struct EventMapper {
    model: String,
    readers: Readers,
}

impl EventMapper {
    /// One engine event → canonical events. `None` means the engine dropped the request.
    fn map(
        &mut self,
        event: Option<GenerationEvent>,
    ) -> Vec<Result<CanonicalEvent, ProviderError>> {
        match event {
            Some(GenerationEvent::Text { text, .. }) => {
                let pieces = match &mut self.readers.reasoning {
                    Some(reasoning) => reasoning.push(&text),
                    None => vec![Piece::Answer(text)],
                };
                self.read(pieces)
            }
            Some(GenerationEvent::Finished { reason, usage }) => self.finish(reason, usage),
            Some(GenerationEvent::Failed { message }) => vec![Err(ProviderError::Stream {
                provider: LOCAL_PROVIDER.into(),
                message: format!("local model `{}`: {message}", self.model),
            })],
            None => vec![Err(ProviderError::Stream {
                provider: LOCAL_PROVIDER.into(),
                message: format!("local model `{}` stopped without finishing", self.model),
            })],
        }
    }

    /// Reasoning goes out as it is; the answer through the tool-call reader, if any.
    fn read(&mut self, pieces: Vec<Piece>) -> Vec<Result<CanonicalEvent, ProviderError>> {
        let mut out = Vec::new();
        for piece in pieces {
            match (piece, &mut self.readers.tools) {
                (Piece::Reasoning(text), _) => out.push(CanonicalEvent::ReasoningDelta { text }),
                (Piece::Answer(text), Some(tools)) => out.extend(tools.push(&text)),
                (Piece::Answer(text), None) => out.push(CanonicalEvent::TextDelta { text }),
            }
        }
        self.calls_allowed(out)
    }

    /// Drops the calls after the first when only one is allowed (as vLLM does).
    fn calls_allowed(
        &self,
        events: Vec<CanonicalEvent>,
    ) -> Vec<Result<CanonicalEvent, ProviderError>> {
        let extra = |e: &CanonicalEvent| match e {
            CanonicalEvent::ToolCallStart { index, .. }
            | CanonicalEvent::ToolCallDelta { index, .. } => *index > 0,
            _ => false,
        };
        events.into_iter().filter(|e| !(self.readers.single_call && extra(e))).map(Ok).collect()
    }

    fn finish(
        &mut self,
        reason: FinishReason,
        usage: hearth_protocol::Usage,
    ) -> Vec<Result<CanonicalEvent, ProviderError>> {
        let pieces =
            self.readers.reasoning.as_mut().map(ReasoningParser::finish).unwrap_or_default();
        let mut out = self.read(pieces);
        if let Some(tools) = &mut self.readers.tools {
            let calls = tools.finish();
            out.extend(self.calls_allowed(calls));
        }
        let made_calls = self.readers.tools.as_ref().is_some_and(ToolCallParser::made_calls);
        let usage = TokenUsage {
            input_tokens: usage.prompt_tokens as u64,
            output_tokens: usage.completion_tokens as u64,
            cached_input_tokens: usage.cached_tokens as u64,
        };
        let reason = match reason {
            FinishReason::Length => StopReason::Length,
            FinishReason::Stop | FinishReason::Cancelled if made_calls => StopReason::ToolCalls,
            FinishReason::Stop | FinishReason::Cancelled => StopReason::Stop,
        };
        out.push(Ok(CanonicalEvent::Usage { usage }));
        out.push(Ok(CanonicalEvent::Finish { reason }));
        out
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::tools::ToolFormat;
    use hearth_protocol::Usage;

    use super::*;

    fn mapper(readers: Readers) -> EventMapper {
        EventMapper { model: "m".into(), readers }
    }

    fn finished(reason: FinishReason) -> Option<GenerationEvent> {
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 1 };
        Some(GenerationEvent::Finished { reason, usage })
    }

    #[test]
    fn engine_events_become_canonical_events() {
        let events: Vec<_> = mapper(Readers::default())
            .map(finished(FinishReason::Length))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            events,
            vec![
                CanonicalEvent::Usage {
                    usage: TokenUsage { input_tokens: 3, output_tokens: 2, cached_input_tokens: 1 }
                },
                CanonicalEvent::Finish { reason: StopReason::Length },
            ]
        );
        let failed = Some(GenerationEvent::Failed { message: "oom".into() });
        assert!(mapper(Readers::default()).map(failed)[0].is_err());
        assert!(mapper(Readers::default()).map(None)[0].is_err());
    }

    #[test]
    fn an_answer_with_calls_finishes_for_tool_calls() {
        let tools =
            ToolCallParser::new(ToolFormat::Hermes, vec!["f".into()], Box::new(|| "id".into()));
        let mut mapper =
            mapper(Readers { reasoning: None, tools: Some(tools), single_call: false });
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let mut events =
            mapper.map(Some(GenerationEvent::Text { text: text.into(), completion_tokens: 1 }));
        events.extend(mapper.map(finished(FinishReason::Stop)));
        let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events[0],
            CanonicalEvent::ToolCallStart { index: 0, id: "id".into(), name: "f".into() }
        );
        assert_eq!(events.last(), Some(&CanonicalEvent::Finish { reason: StopReason::ToolCalls }));
    }

    #[test]
    fn reasoning_goes_apart_and_calls_are_read_from_the_answer() {
        let tools =
            ToolCallParser::new(ToolFormat::Hermes, vec!["f".into()], Box::new(|| "id".into()));
        let reasoning = ReasoningParser::new(false);
        let mut mapper =
            mapper(Readers { reasoning: Some(reasoning), tools: Some(tools), single_call: false });
        let text = "<think>\nweather, so call it\n</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let mut events = Vec::new();
        for piece in text.split_inclusive(['>', '\n']) {
            let event = GenerationEvent::Text { text: piece.into(), completion_tokens: 1 };
            events.extend(mapper.map(Some(event)).into_iter().map(Result::unwrap));
        }
        events.extend(mapper.map(finished(FinishReason::Stop)).into_iter().map(Result::unwrap));
        let reasoning: String = events
            .iter()
            .filter_map(|e| match e {
                CanonicalEvent::ReasoningDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reasoning, "weather, so call it");
        assert!(
            !events.iter().any(|e| matches!(e, CanonicalEvent::TextDelta { .. })),
            "{events:?}"
        );
        assert!(events.contains(&CanonicalEvent::ToolCallStart {
            index: 0,
            id: "id".into(),
            name: "f".into()
        }));
        assert_eq!(events.last(), Some(&CanonicalEvent::Finish { reason: StopReason::ToolCalls }));
    }

    #[test]
    fn a_single_call_request_keeps_only_the_first_call() {
        let tools =
            ToolCallParser::new(ToolFormat::Hermes, vec!["f".into()], Box::new(|| "id".into()));
        let mut mapper = mapper(Readers { reasoning: None, tools: Some(tools), single_call: true });
        let call = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\n";
        let text = format!("{call}{call}");
        let mut events: Vec<_> = mapper
            .map(Some(GenerationEvent::Text { text, completion_tokens: 2 }))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        events.extend(mapper.map(finished(FinishReason::Stop)).into_iter().map(Result::unwrap));
        let starts = events.iter().filter(|e| matches!(e, CanonicalEvent::ToolCallStart { .. }));
        assert_eq!(starts.count(), 1, "{events:?}");
    }
}
