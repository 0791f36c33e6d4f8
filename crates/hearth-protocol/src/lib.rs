//! The canonical request and event model shared by every Hearth crate.
//!
//! Every HTTP surface (Cog, OpenAI, and later Anthropic and the run API) parses its own wire
//! format into these types once, and every producer (a local engine, later an upstream provider)
//! answers with the same events. This crate is pure data: it must never know about HTTP, candle,
//! tokio or any other I/O.

pub mod canonical;
mod chat;
mod constraint;
mod events;
mod marker;
pub mod reasoning;
mod sampling;
pub mod tools;
pub mod wire;

pub use canonical::{
    CanonicalEvent, CanonicalRequest, CanonicalResponse, ContentBlock, ErrorKind, Message,
    MessageRole, RawPrompt, ResponseAssembler, SamplingOptions, StopReason, StreamError, Thinking,
    TokenUsage, ToolChoice, ToolDefinition,
};
pub use chat::{ChatFunctionCall, ChatMessage, ChatToolCall, Conversation, Role};
pub use constraint::OutputConstraint;
pub use events::{FinishReason, GenerationEvent, Usage};
pub use sampling::{SamplingParams, ValidSampling, ValidationError};
