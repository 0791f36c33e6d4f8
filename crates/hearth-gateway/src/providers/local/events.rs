//! The engine's generation events as canonical events: text, or tool calls read out of it.

use std::collections::VecDeque;

use futures::StreamExt;
use hearth_engine::GenerationStream;
use hearth_protocol::tools::ToolCallParser;
use hearth_protocol::{CanonicalEvent, FinishReason, GenerationEvent, StopReason, TokenUsage};

use super::super::{EventStream, ProviderError};
use crate::config::LOCAL_PROVIDER;

pub(super) fn events(
    model: String,
    stream: GenerationStream,
    parser: Option<ToolCallParser>,
) -> EventStream {
    let first = VecDeque::from([
        Ok(CanonicalEvent::MessageStart { model: model.clone() }),
        // The prompt's size is known now: a run cut short still bills it.
        Ok(CanonicalEvent::Usage {
            usage: TokenUsage { input_tokens: stream.prompt_tokens as u64, ..Default::default() },
        }),
    ]);
    let mapper = EventMapper { model, parser };
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
    /// Present when the request has tools the model may call.
    parser: Option<ToolCallParser>,
}

impl EventMapper {
    /// One engine event → canonical events. `None` means the engine dropped the request.
    fn map(
        &mut self,
        event: Option<GenerationEvent>,
    ) -> Vec<Result<CanonicalEvent, ProviderError>> {
        match event {
            Some(GenerationEvent::Text { text, .. }) => match &mut self.parser {
                Some(parser) => parser.push(&text).into_iter().map(Ok).collect(),
                None => vec![Ok(CanonicalEvent::TextDelta { text })],
            },
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

    fn finish(
        &mut self,
        reason: FinishReason,
        usage: hearth_protocol::Usage,
    ) -> Vec<Result<CanonicalEvent, ProviderError>> {
        let mut out: Vec<_> = match &mut self.parser {
            Some(parser) => parser.finish().into_iter().map(Ok).collect(),
            None => Vec::new(),
        };
        let made_calls = self.parser.as_ref().is_some_and(ToolCallParser::made_calls);
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

    fn mapper(parser: Option<ToolCallParser>) -> EventMapper {
        EventMapper { model: "m".into(), parser }
    }

    fn finished(reason: FinishReason) -> Option<GenerationEvent> {
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2, cached_tokens: 1 };
        Some(GenerationEvent::Finished { reason, usage })
    }

    #[test]
    fn engine_events_become_canonical_events() {
        let events: Vec<_> = mapper(None)
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
        assert!(mapper(None).map(failed)[0].is_err());
        assert!(mapper(None).map(None)[0].is_err());
    }

    #[test]
    fn an_answer_with_calls_finishes_for_tool_calls() {
        let parser = ToolCallParser::new(ToolFormat::Hermes, Box::new(|| "id".into()));
        let mut mapper = mapper(Some(parser));
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
}
