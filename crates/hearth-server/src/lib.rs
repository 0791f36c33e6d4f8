//! Hearth's HTTP edge: the axum application that serves the Cog container API and the
//! OpenAI-compatible API over the models in a [`hearth_gateway::Catalog`].
//!
//! Each surface parses its own wire format once, validates it, turns it into an engine request,
//! and encodes the engine's events back into its own format. Bad input stops here with a 4xx JSON
//! answer that names the field. This crate must never know about tensors, devices or tokenizers:
//! it reaches models only through `hearth_engine::Engine`'s handle.

mod body;
mod cog;
mod config;
mod generation;
mod health;
mod openai;
mod router;
mod serve;
mod state;

pub use config::{ServerConfig, WebhookConfig};
pub use router::router;
pub use serve::serve;
pub use state::{AppState, StateError};
