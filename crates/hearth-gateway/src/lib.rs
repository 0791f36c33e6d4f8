//! Hearth's routing front: the catalog of model ids and their routes, provider adapters that
//! speak each upstream's wire format, failover with retries and cooldowns, resumable run
//! buffers, and the spend ledger.
//!
//! The HTTP layer parses a request into a [`hearth_protocol::CanonicalRequest`], calls
//! [`Gateway::start_run`], and encodes the run's canonical events in its own wire format.
//!
//! This crate must never know about axum or any HTTP server type.

pub mod cache;
mod catalog;
pub mod config;
mod embeddings;
mod gateway;
pub mod keys;
pub mod ledger;
pub mod limits;
mod live;
pub mod logging;
mod pricing;
mod producer;
pub mod providers;
mod python;
mod router;
pub mod runs;
mod shared;
mod wiring;

pub use catalog::{
    Catalog, CatalogEntry, CatalogError, EmbeddingModel, LocalModel, ModelListing, PythonModel,
    ResolvedModel, Route, RouteKind,
};
pub use config::{
    ConfigError, FailureMode, GatewayConfig, GatewaySettings, LedgerSettings, ModelConfig,
    ProviderConfig, ProviderKind, StateSettings,
};
pub use embeddings::{EmbedRunError, EmbeddingRun};
pub use gateway::{Caller, Gateway, RunOpening, StartError, StartedRun};
/// The engine's types that are part of the gateway's own interface: embedding inputs and
/// refusals (`Gateway::embed`), and the load and latency figures of a local model that the
/// edge exports as metrics. The edge depends on the gateway alone.
pub use hearth_engine::metrics::{HistogramSnapshot, LATENCY_BUCKETS_SECONDS};
pub use hearth_engine::{
    AdapterLookupError, AdapterStats, EmbedError, EmbedInput, Engine, EngineStats, MetricsSnapshot,
};
/// The Python bridge's types that are part of the gateway's interface.
pub use hearth_python::{
    files::FileConfig, Event as PredictionEvent, Schema as PredictorSchema, SetupReport, Worker,
    WorkerStatus, COG_SDK_VERSION,
};
pub use ledger::{
    GroupBy, Ledger, LedgerRecord, LedgerStatus, RunPayload, UsageBucket, UsageGroup, UsageQuery,
    UsageRow,
};
pub use limits::{LimitConfig, LimitError};
pub use live::LiveRunView;
pub use pricing::Prices;
pub use python::{PredictRunError, PredictionRun};
pub use runs::{
    InMemoryRunStore, NewRun, OrphanedRun, RedisRunStore, RunError, RunEvent, RunInfo, RunStatus,
    RunStore, Subscription,
};
pub use shared::Backends;
pub use wiring::OpenError;
