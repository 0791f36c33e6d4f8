//! `hearth serve`: load packages, add the configured providers and models to the catalog, open
//! the gateway (with its ledger), then serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hearth_engine::{EngineConfig, KvCacheSize};
use hearth_gateway::{Catalog, Gateway};
use hearth_server::{AppState, ServerConfig};

use crate::config::Config;
use crate::load::load_all;
use crate::serve_admin::AdminWiring;

#[derive(Args)]
pub struct ServeArgs {
    /// Directory whose subdirectories are packages (default: ./models).
    #[arg(long, conflicts_with = "model")]
    models: Option<PathBuf>,
    /// Serve this one package directory (or GGUF file) instead of a models directory
    /// (repeatable).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Package directories or GGUF files to serve, as `--model` does (`hearth serve ./x.gguf`).
    #[arg(conflicts_with = "models")]
    paths: Vec<PathBuf>,
    /// Address to listen on (default: 127.0.0.1:8080).
    #[arg(long)]
    addr: Option<String>,
    /// Settings file (default: ./hearth.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device: auto (GPU when the package asks and one is present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Model served at the Cog root routes when several are loaded.
    #[arg(long)]
    default_model: Option<String>,
    /// Upload Python predictors' file outputs with `PUT {URL}/{filename}` (Cog's
    /// `--upload-url`) instead of answering them as `data:` URIs.
    #[arg(long)]
    upload_url: Option<String>,
}

pub fn run(args: ServeArgs, log_format: &str) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    // Kept to the end: dropping it sends the last spans.
    let telemetry = crate::telemetry::init(log_format, &config.telemetry)?;
    let models_dir = models_dir(&args, &config);
    crate::serve_admin::clean(models_dir.as_deref())?;
    let package_dirs = package_dirs(&args, &config)?;
    let engine_config = engine_config(&config);
    // Python predictors' workers are supervised by tasks, so the runtime comes first.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _in_runtime = runtime.enter();
    let mut catalog = Catalog::new();
    load_all(&package_dirs, &engine_config, &args.device, &mut catalog);
    if let Some(dir) = &models_dir {
        hearth_server::restore_all_adapters(dir, &catalog);
    }
    catalog.set_default(args.default_model.or(config.server.default_model.clone()));
    let gateway_config = config.gateway_config();
    catalog.configure(&gateway_config).context("in the gateway configuration")?;
    if catalog.list_models().is_empty() {
        tracing::warn!("no model loaded or configured; the daemon serves only health and errors");
    }

    let mut server_config = server_config(&config.server)?;
    server_config.traces = telemetry.traces();
    if let Some(url) = args.upload_url {
        server_config.upload_url = Some(url);
    }
    let addr = args.addr.or(config.server.addr).unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let admin = AdminWiring {
        section: config.admin,
        models_dir,
        engine: engine_config.clone(),
        device: args.device.clone(),
    };
    runtime.block_on(async move {
        let settings = &gateway_config.gateway;
        let gateway =
            Gateway::connect(catalog, &gateway_config).await.with_context(
                || match &gateway_config.ledger.postgres_url {
                    Some(_) => "opening the gateway's stores".to_string(),
                    None => format!("opening the ledger {}", settings.ledger_path.display()),
                },
            )?;
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        // Before "listening": a signal sent as soon as that is logged must find the handlers.
        let shutdown = shutdown_signal();
        let ledger = match &gateway_config.ledger.postgres_url {
            Some(_) => "postgresql".to_string(),
            None => settings.ledger_path.display().to_string(),
        };
        let runs = if gateway_config.state.redis_url.is_some() { "redis" } else { "memory" };
        tracing::info!(addr = %local, %ledger, runs, "listening");
        let state = AppState::new(gateway, server_config)?;
        admin.enable(&state);
        hearth_server::serve(listener, state, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn package_dirs(args: &ServeArgs, config: &Config) -> anyhow::Result<Vec<PathBuf>> {
    if !args.model.is_empty() || !args.paths.is_empty() {
        return Ok(args.model.iter().chain(&args.paths).cloned().collect());
    }
    let dir = models_dir(args, config).unwrap_or_else(|| PathBuf::from("models"));
    if !dir.is_dir() {
        bail!(
            "models directory {} does not exist (use --models DIR or --model DIR)",
            dir.display()
        );
    }
    Ok(hearth_package::discover(&dir)?)
}

/// The models directory (where pushed packages go too); `None` when serving `--model` dirs.
fn models_dir(args: &ServeArgs, config: &Config) -> Option<PathBuf> {
    let dir = args.models.clone().or(config.server.models.clone());
    (args.model.is_empty() && args.paths.is_empty())
        .then(|| dir.unwrap_or_else(|| PathBuf::from("models")))
}

fn engine_config(config: &Config) -> EngineConfig {
    let mut engine = EngineConfig::default();
    let e = &config.engine;
    let s = &mut engine.scheduler;
    if let Some(v) = e.max_num_seqs {
        s.max_num_seqs = v;
    }
    if let Some(v) = e.max_batch_tokens {
        s.max_batch_tokens = v;
    }
    if let Some(v) = e.max_prefill_chunk {
        s.max_prefill_chunk = v;
    }
    if let Some(v) = e.max_prefill_tokens_while_decoding {
        s.max_prefill_tokens_while_decoding = v;
    }
    if let Some(v) = e.max_prefill_wait_steps {
        s.max_prefill_wait_steps = v;
    }
    if let Some(v) = e.max_waiting {
        s.max_waiting = v;
    }
    if let Some(v) = e.block_size {
        engine.block_size = v;
    }
    if let Some(mb) = e.kv_cache_mb {
        engine.kv_cache = KvCacheSize::Bytes(mb << 20);
    }
    if let Some(share) = e.kv_cache_memory_fraction {
        engine.kv_cache = KvCacheSize::Available(share);
    }
    if let Some(on) = e.prefix_caching {
        engine.prefix_caching = on;
    }
    engine
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM. The SIGTERM handler is installed
/// when this is called, not when the future is first polled: until then the signal's default
/// action would end the process with no shutdown at all.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = async {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(%err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match terminate {
                Ok(mut sig) => {
                    sig.recv().await;
                }
                Err(err) => {
                    tracing::error!(%err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
            () = terminate => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}

/// `[server]` over the defaults; a timeout must be a positive number of seconds.
fn server_config(section: &crate::config::ServerSection) -> anyhow::Result<ServerConfig> {
    let defaults = ServerConfig::default();
    let seconds = |value: Option<f64>, name: &str, default: Duration| match value {
        None => Ok(default),
        Some(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        Some(secs) => Err(anyhow::anyhow!("[server] {name} must be a positive number, not {secs}")),
    };
    if section.max_connections == Some(0) {
        anyhow::bail!("[server] max_connections must be at least 1");
    }
    Ok(ServerConfig {
        shutdown_grace: section
            .shutdown_grace_secs
            .map_or(defaults.shutdown_grace, Duration::from_secs),
        header_read_timeout: seconds(
            section.header_read_timeout_secs,
            "header_read_timeout_secs",
            defaults.header_read_timeout,
        )?,
        body_read_timeout: seconds(
            section.body_read_timeout_secs,
            "body_read_timeout_secs",
            defaults.body_read_timeout,
        )?,
        max_connections: section.max_connections.unwrap_or(defaults.max_connections),
        upload_url: section.upload_url.clone(),
        max_input_file_bytes: section
            .max_input_file_mb
            .map_or(defaults.max_input_file_bytes, |mb| mb << 20),
        responses_ttl: section
            .responses_ttl_secs
            .map_or(defaults.responses_ttl, Duration::from_secs),
        responses_max_bytes: section
            .responses_max_mb
            .map_or(defaults.responses_max_bytes, |mb| mb << 20),
        ..defaults
    })
}
