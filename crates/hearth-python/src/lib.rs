//! Cog's Python predictors, run beside Hearth's native engine.
//!
//! A package whose predictor Hearth has no native engine for runs in its own Python: [`env`]
//! prepares an environment from `cog.yaml`'s build section, [`worker`] runs `worker.py` in it
//! under supervision and speaks Hearth's small worker [`protocol`] with it, and [`files`] turns
//! file inputs (URLs, data URIs) into local files and file outputs into data URIs or uploads.

pub mod env;
pub mod files;
pub mod protocol;
pub mod worker;

pub use env::{prepare, prepare_with, EnvError, Installer, PythonEnv, COG_SDK, COG_SDK_VERSION};
pub use protocol::Schema;
pub use worker::{
    Event, PredictError, Prediction, SetupReport, Worker, WorkerConfig, WorkerStatus,
};

use std::path::Path;
use std::time::Duration;

use hearth_package::CogConfig;

/// Why a package's predictor cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cog.yaml names no predictor (`run:` or `predict:`)")]
    NoPredictor,
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("could not start the Python worker: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Prepares the environment of the package in `dir` (from `cache_dir` when it was built
/// before) and starts its worker; setup goes on in the background.
pub fn start(
    name: &str,
    dir: &Path,
    cog: &CogConfig,
    cache_dir: &Path,
    setup_timeout: Option<Duration>,
    progress: &dyn Fn(&str),
) -> Result<Worker, StartError> {
    let predictor_ref = cog.predictor().ok_or(StartError::NoPredictor)?.to_owned();
    let env = prepare(dir, cog, cache_dir, progress)?;
    let config = WorkerConfig {
        name: name.to_owned(),
        python: env.python,
        package_dir: dir.to_path_buf(),
        predictor_ref,
        slots: cog.max_concurrency().unwrap_or(1),
        setup_timeout,
        environment: cog.environment.clone(),
    };
    Ok(Worker::start(config)?)
}
