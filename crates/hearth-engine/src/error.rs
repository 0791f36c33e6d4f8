//! Every way the engine crate refuses or fails: loading a model, a generation request, an
//! embedding request. They carry kinds and the values at fault; what HTTP status each becomes
//! is decided at the edge.

use hearth_protocol::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("package `{package}`: {message}")]
    Load { package: String, message: String },
    #[error(transparent)]
    Package(#[from] hearth_package::PackageError),
    #[error("model has no chat template; use the completions endpoint or a package with one")]
    NoChatTemplate,
    #[error("chat template failed: {0}")]
    Template(String),
}

/// Why a generation request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the model is overloaded: {num_waiting} requests are already waiting")]
    Overloaded { num_waiting: usize },
    #[error("the prompt has {prompt_tokens} tokens; this model's context holds {context_length}")]
    PromptTooLong { prompt_tokens: usize, context_length: usize },
    #[error(
        "the request needs {needed_tokens} tokens of KV cache; this engine has {capacity_tokens}"
    )]
    TooLarge { needed_tokens: usize, capacity_tokens: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    BadToken { token: u32, vocab_size: usize },
    #[error("could not tokenize the prompt: {0}")]
    Tokenize(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The requested output grammar (a JSON Schema, a regular expression, ...) cannot be used.
    #[error("the output grammar cannot be used: {0}")]
    Grammar(String),
    /// The request names a LoRA adapter the model does not serve, or one that failed to load.
    #[error("{0}")]
    Adapter(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("preparing the request failed: {0}")]
    Internal(String),
}

/// Why a request was not embedded. Input errors carry the input's index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    #[error("there is nothing to embed")]
    NoInputs,
    #[error("{count} inputs is more than the {max} one request may hold")]
    TooManyInputs { count: usize, max: usize },
    #[error("input {index} is empty")]
    EmptyInput { index: usize },
    #[error("input {index} has {tokens} tokens; this model takes at most {max_tokens}")]
    TooLong { index: usize, tokens: usize, max_tokens: usize },
    #[error("input {index}: token id {token} is outside the vocabulary (size {vocab_size})")]
    BadToken { index: usize, token: u32, vocab_size: usize },
    #[error("input {index} could not be tokenized: {message}")]
    Tokenize { index: usize, message: String },
    #[error("the model is overloaded: {num_waiting} requests are already waiting")]
    Overloaded { num_waiting: usize },
    #[error("the embedder is shutting down")]
    ShuttingDown,
    #[error("embedding failed: {0}")]
    Failed(String),
}

impl EmbedError {
    /// The index of the input at fault, for errors about one input.
    pub fn input_index(&self) -> Option<usize> {
        match self {
            Self::EmptyInput { index }
            | Self::TooLong { index, .. }
            | Self::BadToken { index, .. }
            | Self::Tokenize { index, .. } => Some(*index),
            _ => None,
        }
    }
}
