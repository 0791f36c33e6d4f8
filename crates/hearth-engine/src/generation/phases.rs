//! A request's phases as tracing spans, so that a trace shows where a local request's time went:
//! `queue` (submitted, waiting for its first prefill chunk), `prefill` (its prompt computed, up
//! to its first token) and `decode` (its tokens, up to its end). Each is a child of the span
//! that submitted the request (the gateway's attempt span). The spans are DEBUG, like the
//! gateway's own: they cost next to nothing while no trace is exported.

use tracing::field::Empty;
use tracing::Span;

#[derive(Debug)]
pub(crate) struct Phases {
    /// The submitter's span, the parent of each phase.
    parent: Span,
    /// The phase the request is in; its span closes when the next one opens.
    current: Span,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queue,
    Prefill,
    Decode,
}

impl Phases {
    /// Opens the `queue` phase under the current span (call it on the submitter's side).
    pub fn start(prompt_tokens: usize) -> Self {
        let parent = Span::current();
        let current =
            tracing::debug_span!(parent: &parent, "queue", hearth.prompt_tokens = prompt_tokens);
        Phases { parent, current, phase: Phase::Queue }
    }

    /// The request's first prefill chunk is scheduled: `queue` ends, `prefill` begins.
    pub fn scheduled(&mut self, cached_tokens: usize) {
        if self.phase == Phase::Queue {
            self.close_current();
            self.current = tracing::debug_span!(
                parent: &self.parent,
                "prefill",
                hearth.cached_tokens = cached_tokens,
            );
            self.phase = Phase::Prefill;
        }
    }

    /// The request's first token is sampled: `prefill` ends, `decode` begins.
    pub fn first_token(&mut self) {
        if self.phase != Phase::Decode {
            self.close_current();
            self.current = tracing::debug_span!(
                parent: &self.parent,
                "decode",
                gen_ai.usage.output_tokens = Empty,
            );
            self.phase = Phase::Decode;
        }
    }

    /// Ends the current phase's span before the next one starts, so that phases never overlap.
    fn close_current(&mut self) {
        self.current = Span::none();
    }

    /// The request ended with `completion_tokens` generated: its last phase closes.
    pub fn end(self, completion_tokens: usize) {
        if self.phase == Phase::Decode {
            self.current.record("gen_ai.usage.output_tokens", completion_tokens);
        }
    }
}
