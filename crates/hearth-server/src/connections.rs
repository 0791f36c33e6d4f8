//! Accepting connections, with the limits that keep silent or slow clients from holding the
//! daemon: a header-read timeout (which is also the idle timeout of a kept-alive connection), a
//! body-read timeout (a layer of the router) and a bound on open connections.
//!
//! Written over hyper directly rather than `axum::serve`, which sets no timer (so no timeout
//! can fire) and has no connection limit.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::ServerConfig;

/// How long a refused connection gets to take its 503 before it is closed regardless.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` completes; then stops accepting, lets each
/// connection finish the request it is serving (idle ones close at once) and returns when all
/// have closed.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    // The header-read timer runs whenever a connection waits for a request head: while a client
    // sends one, and while a kept-alive connection sits idle between requests. A streaming
    // response is not waiting for a head, so a long SSE stream is never cut by it.
    http.timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
    let open = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    on_accept_error(err).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, config.max_connections));
            continue;
        };
        // Tokens are small writes that must leave at once.
        let _ = stream.set_nodelay(true);
        // The peer's address is for handlers that need it (without a token, the admin API
        // answers only loopback clients).
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Over the connection limit: a short 503 in JSON, then the connection closes. Written by hand
/// because the connection never reaches hyper (serving it would hold the slot it has not got).
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = serde_json::json!({
        "error": format!("the server is at its limit of {limit} open connections; retry shortly"),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
    tracing::warn!(limit, "refused a connection: too many open");
}

/// A failed `accept` for one connection (it reset before we took it) is nothing; running out of
/// file descriptors is, and retrying at once would spin, so wait a moment first.
async fn on_accept_error(err: io::Error) {
    let per_connection = matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    );
    if !per_connection {
        tracing::error!(error = %err, "accepting a connection failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
