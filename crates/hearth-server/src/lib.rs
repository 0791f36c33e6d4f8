//! Hearth's HTTP edge: the axum application that serves the Cog container API, the OpenAI- and
//! Anthropic-compatible APIs and Hearth's own run API over a [`hearth_gateway::Gateway`].
//!
//! Each surface parses its own wire format once, validates it, and turns it into a canonical
//! request for the gateway (OpenAI chat, Anthropic messages, runs) or an engine request (Cog,
//! OpenAI completions); it encodes the events back into its own format. Bad input stops here
//! with a 4xx JSON answer that names the field. This crate must never know about tensors,
//! devices or tokenizers: it reaches models only through the gateway and `Engine` handles.

mod admin;
mod anthropic;
mod auth;
mod body;
mod cog;
mod config;
mod connections;
mod defaults;
mod health;
mod metrics;
mod openai;
mod relay;
mod router;
mod runs;
mod serve;
mod state;

pub use admin::{
    clean_staging, restore_adapters, restore_all_adapters, AdminSettings, AdminState, LoadedModel,
    ModelLoader,
};
pub use config::{ServerConfig, WebhookConfig};
pub use router::router;
pub use serve::serve;
pub use state::{AppState, StateError};
