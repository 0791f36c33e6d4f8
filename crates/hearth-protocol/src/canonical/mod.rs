//! The canonical chat model: one request type and one stream event type that every wire format
//! converts to and from.

mod event;
mod request;
mod response;

pub use event::{CanonicalEvent, ErrorKind, StopReason, StreamError, TokenUsage};
pub use request::{
    CanonicalRequest, ContentBlock, Message, MessageRole, RawPrompt, SamplingOptions, Thinking,
    ToolChoice, ToolDefinition,
};
pub(crate) use response::parse_arguments;
pub use response::{CanonicalResponse, ResponseAssembler};
