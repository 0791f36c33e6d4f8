//! What a gateway's handles, its producers and its embedding runs share.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::ledger::Ledger;
use crate::router::{RetryPolicy, RouteHealth};
use crate::runs::RunStore;

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
    /// Every producer and embedding run, so shutdown can wait for their ledger records.
    pub tasks: TaskTracker,
}
