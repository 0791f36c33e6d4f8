//! Serving with a graceful shutdown.
//!
//! On the shutdown signal the listener stops accepting and idle connections close. In-flight
//! requests, background predictions and the gateway's runs (whose producers outlive their
//! callers) get `shutdown_grace` to finish; whatever is left then is cancelled (engine streams
//! are dropped, which frees their KV memory; runs end with a `cancelled` error). Last, the
//! engines are stopped and the gateway is waited for once more, so that every run's ledger
//! record is written before `serve` returns.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connections::serve_connections;
use crate::router::router;
use crate::state::AppState;

/// How long cancelled work gets to wind down (SSE streams to send their last event, a terminal
/// webhook its last attempt) before `serve` returns regardless.
const AFTER_CANCEL: Duration = Duration::from_secs(5);

/// Serves `state` on `listener` until `shutdown` completes (or Cog's `POST /shutdown` is called,
/// when allowed), then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stopping = CancellationToken::new();
    let signal = {
        let stopping = stopping.clone();
        let requested = state.shutdown_requested().clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = requested.cancelled() => {}
            }
            stopping.cancel();
        }
    };
    let app = router(state.clone());
    let config = state.config().clone();
    let mut server = Server {
        handle: tokio::spawn(
            async move { serve_connections(listener, app, &config, signal).await },
        ),
        result: None,
    };

    tokio::select! {
        () = server.finished() => {}
        () = stopping.cancelled() => {}
    }
    // Both are ready together when the signal finds no connection open (the server then ends at
    // once), and `select!` picks either: the token, not the branch, says whether it was asked.
    if stopping.is_cancelled() {
        drain(&state, &mut server).await;
    } else {
        tracing::error!("the HTTP server stopped without a shutdown signal");
    }
    stop_engines(&state).await;
    if tokio::time::timeout(AFTER_CANCEL, state.gateway().wait_idle()).await.is_err() {
        tracing::warn!("some runs did not end after cancellation; their ledger records are lost");
    }
    server.result.unwrap_or(Ok(()))
}

/// Waits for in-flight work for the grace period, then cancels what is left.
async fn drain(state: &AppState, server: &mut Server) {
    let grace = state.config().shutdown_grace;
    tracing::info!(?grace, "shutting down: waiting for in-flight requests");
    state.tasks().close();
    let all_done = async {
        server.finished().await;
        state.tasks().wait().await;
        state.gateway().wait_idle().await;
    };
    if tokio::time::timeout(grace, all_done).await.is_ok() {
        return;
    }
    tracing::warn!("shutdown grace period over; cancelling the requests still running");
    state.cancel_all().cancel();
    let cancelled = state.gateway().cancel_all().await;
    tracing::info!(runs = cancelled, "cancelled the runs still going");
    let all_done = async {
        server.finished().await;
        state.tasks().wait().await;
        state.gateway().wait_idle().await;
    };
    if tokio::time::timeout(AFTER_CANCEL, all_done).await.is_err() {
        tracing::warn!("some connections did not close after cancellation; leaving them");
    }
}

async fn stop_engines(state: &AppState) {
    let state = state.clone();
    // Engine shutdown joins the engine threads: blocking work.
    if let Err(err) = tokio::task::spawn_blocking(move || state.catalog().shutdown()).await {
        tracing::error!(error = %err, "stopping the engines failed");
    }
}

/// The spawned server, and its result once it has finished (a `JoinHandle` must not be polled
/// again after it completes).
struct Server {
    handle: JoinHandle<io::Result<()>>,
    result: Option<io::Result<()>>,
}

impl Server {
    async fn finished(&mut self) {
        if self.result.is_none() {
            let result = match (&mut self.handle).await {
                Ok(result) => result,
                Err(err) => Err(io::Error::other(format!("the HTTP server task failed: {err}"))),
            };
            self.result = Some(result);
        }
    }
}
