//! Load generator for OpenAI-compatible serving endpoints (Hearth, llama.cpp's `llama-server`,
//! mistral.rs, vLLM): throughput/latency sweeps, a multi-turn agent workload, and side-by-side
//! comparison of saved runs. The binary in `main.rs` is a thin CLI over these modules.
//!
//! It knows nothing of Hearth's crates on purpose: it must measure every server the same way,
//! through the wire protocol alone.

pub mod agent;
pub mod client;
pub mod compare;
pub mod dist;
pub mod machine;
pub mod plot;
pub mod prompt;
pub mod report;
pub mod sse;
pub mod stats;
pub mod sweep;

/// Everything that can go wrong inside the library. Per-request failures are not errors here:
/// they are recorded (as text) in that request's record and counted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad length distribution `{spec}`: {why}")]
    Dist { spec: String, why: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("stream transport: {0}")]
    Transport(String),
    #[error("server error in stream: {0}")]
    ServerStream(String),
    #[error("malformed stream chunk: {0}")]
    BadChunk(String),
    #[error("stream ended before [DONE]")]
    Truncated,
    #[error("warm-up request failed ({0}); is the server up and is the model name right?")]
    WarmUp(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("plot {path}: {why}")]
    Plot { path: String, why: String },
}
