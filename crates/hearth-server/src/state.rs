//! The state every handler shares.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hearth_gateway::{Catalog, FileConfig, Gateway};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::state::AdminState;
use crate::cog::registry::Registry;
use crate::config::ServerConfig;
use crate::openai::ResponseStore;

/// Longest a file input's fetch or an output's upload may take.
const FILE_FETCH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not build the webhook HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Gateway,
    config: ServerConfig,
    webhooks: reqwest::Client,
    /// How Python predictors' files are fetched and returned.
    files: FileConfig,
    predictions: Registry,
    setup_started_at: DateTime<Utc>,
    setup_completed_at: DateTime<Utc>,
    /// Fired when the shutdown grace period runs out: every generation still running stops.
    cancel_all: CancellationToken,
    /// Fired by Cog's `POST /shutdown`; `serve` treats it like its own shutdown signal.
    shutdown_requested: CancellationToken,
    /// Background work that outlives its request (async predictions and their webhooks), so that
    /// shutdown can wait for it.
    tasks: TaskTracker,
    /// The admin API (push, list, remove), once [`AppState::enable_admin`] set it up.
    admin: OnceLock<Arc<AdminState>>,
    /// Stored responses of the Responses API.
    responses: ResponseStore,
}

impl AppState {
    /// The state over `gateway`, whose catalog holds every model served.
    pub fn new(gateway: Gateway, config: ServerConfig) -> Result<Self, StateError> {
        let webhooks =
            reqwest::Client::builder().timeout(config.webhook.request_timeout).build()?;
        let files = FileConfig {
            client: reqwest::Client::builder().timeout(FILE_FETCH_TIMEOUT).build()?,
            max_input_bytes: config.max_input_file_bytes,
            upload_url: config.upload_url.clone(),
        };
        let now = Utc::now();
        Ok(Self {
            inner: Arc::new(Inner {
                predictions: Registry::new(config.max_retained_predictions),
                responses: ResponseStore::new(config.responses_ttl, config.responses_max_bytes),
                setup_started_at: config.setup_started_at.unwrap_or(now),
                setup_completed_at: now,
                gateway,
                config,
                webhooks,
                files,
                cancel_all: CancellationToken::new(),
                shutdown_requested: CancellationToken::new(),
                tasks: TaskTracker::new(),
                admin: OnceLock::new(),
            }),
        })
    }

    /// The catalog as it is now: a snapshot, which a catalog update does not change.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.gateway.catalog()
    }

    /// Turns the admin API on; a second call is ignored.
    pub fn enable_admin(&self, admin: AdminState) {
        if self.inner.admin.set(Arc::new(admin)).is_err() {
            tracing::warn!("the admin API was already enabled");
        }
    }

    pub(crate) fn admin(&self) -> Option<&Arc<AdminState>> {
        self.inner.admin.get()
    }

    pub fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn webhooks(&self) -> &reqwest::Client {
        &self.inner.webhooks
    }

    pub(crate) fn files(&self) -> &FileConfig {
        &self.inner.files
    }

    pub(crate) fn responses(&self) -> &ResponseStore {
        &self.inner.responses
    }

    pub(crate) fn predictions(&self) -> &Registry {
        &self.inner.predictions
    }

    pub(crate) fn setup_started_at(&self) -> DateTime<Utc> {
        self.inner.setup_started_at
    }

    pub(crate) fn setup_completed_at(&self) -> DateTime<Utc> {
        self.inner.setup_completed_at
    }

    /// A token that fires when the server gives up waiting for in-flight work.
    pub(crate) fn cancel_all(&self) -> &CancellationToken {
        &self.inner.cancel_all
    }

    pub(crate) fn shutdown_requested(&self) -> &CancellationToken {
        &self.inner.shutdown_requested
    }

    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }
}
