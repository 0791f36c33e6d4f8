//! What a gateway's handles, its producers and its embedding runs share.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::cache::ResponseCache;
use crate::catalog::Catalog;
use crate::keys::Keys;
use crate::ledger::Ledger;
use crate::limits::{Limiter, Limits};
use crate::live::LiveRuns;
use crate::router::{RetryPolicy, RouteHealth};
use crate::runs::RunStore;

/// Where the gateway keeps its state, as `/health` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backends {
    /// `memory` or `redis`.
    pub runs: &'static str,
    /// `sqlite` or `postgresql`.
    pub ledger: &'static str,
    /// How many `[[limits]]` are enforced, and where their counters are (`memory`, `redis`).
    pub limits: usize,
    pub limit_counters: &'static str,
    /// `memory` or `redis`.
    pub response_cache: &'static str,
    /// With counters in Redis: `open` or `closed` while Redis cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits_on_redis_error: Option<&'static str>,
}

impl Default for Backends {
    fn default() -> Self {
        Self {
            runs: "memory",
            ledger: "sqlite",
            limits: 0,
            limit_counters: "memory",
            response_cache: "memory",
            limits_on_redis_error: None,
        }
    }
}

pub(crate) struct Inner {
    /// Swapped whole when a package is pushed or removed at run time; a request resolves
    /// against the snapshot it loaded, so a swap never changes a model under it.
    pub catalog: ArcSwap<Catalog>,
    /// Serialises catalog updates, so two concurrent updates cannot lose one another.
    pub catalog_writer: Mutex<()>,
    pub policy: RetryPolicy,
    pub health: RouteHealth,
    pub runs: Arc<dyn RunStore>,
    pub ledger: Arc<dyn Ledger>,
    pub limits: Limits,
    pub limiter: Arc<dyn Limiter>,
    pub keys: Keys,
    pub cache: Arc<dyn ResponseCache>,
    pub backends: Backends,
    /// Every producer and embedding run, so shutdown can wait for their ledger records.
    pub tasks: TaskTracker,
    /// The runs this daemon's producers are making now.
    pub live: LiveRuns,
    /// What is kept of requests beyond their ledger records (`[logging]`).
    pub logging: crate::logging::LoggingSettings,
}
