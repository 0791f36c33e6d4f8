//! One submitted request's events, as every surface reads them.
//!
//! [`Generation`] owns the engine's [`GenerationStream`], so whoever owns the `Generation` (a
//! handler future, an SSE body, a background task) decides the request's lifetime: when it is
//! dropped — the client went away, the task was aborted — the stream drops and the engine cancels
//! the request and frees its KV memory. A cancellation token ends it early too, which is how
//! Cog's cancel route and the shutdown deadline stop work that is still running.

use hearth_engine::GenerationStream;
use hearth_protocol::{FinishReason, GenerationEvent, Usage};
use tokio_util::sync::CancellationToken;

/// Shown when the engine closes a stream without a terminal event, which it never should.
const STREAM_LOST: &str = "the engine stopped this request without finishing it";

pub(crate) struct Generation {
    stream: Option<GenerationStream>,
    stop: CancellationToken,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Generation {
    pub(crate) fn new(stream: GenerationStream, stop: CancellationToken) -> Self {
        Self {
            prompt_tokens: stream.prompt_tokens,
            stream: Some(stream),
            stop,
            completion_tokens: 0,
        }
    }

    /// Usage so far, for a request that ends without the engine's own count.
    pub(crate) fn usage_so_far(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: 0,
        }
    }

    /// The next event; after a terminal event, `None`. When the stop token fires first, the
    /// engine request is cancelled and a `Finished { reason: Cancelled }` event stands in for the
    /// rest, so readers handle one terminal shape.
    pub(crate) async fn next(&mut self) -> Option<GenerationEvent> {
        let stream = self.stream.as_mut()?;
        let event = tokio::select! {
            // A cancel wins over events already queued: a fast engine must not starve it.
            biased;
            () = self.stop.cancelled() => GenerationEvent::Finished {
                reason: FinishReason::Cancelled,
                usage: self.usage_so_far(),
            },
            event = stream.recv() => event.unwrap_or_else(|| GenerationEvent::Failed {
                message: STREAM_LOST.to_owned(),
            }),
        };
        match &event {
            GenerationEvent::Text { completion_tokens, .. } => {
                self.completion_tokens = *completion_tokens;
            }
            // Dropping the stream here, not later, frees the engine's memory right away.
            _ => self.stream = None,
        }
        Some(event)
    }
}
