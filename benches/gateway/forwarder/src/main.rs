//! The least a forwarder on Hearth's HTTP stack (axum serving, a pooled reqwest client, tokio,
//! mimalloc) can do: POST the request body unchanged to one upstream URL and stream the answer
//! back. No parsing, no run buffer, no ledger. `benches/gateway/run.sh` measures it beside
//! Hearth, so the latency the stack itself costs on the machine at hand is known, and what
//! Hearth's own work adds on top of it.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Every request is POSTed here.
    #[arg(long)]
    upstream: reqwest::Url,
}

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    url: reqwest::Url,
}

async fn forward(State(upstream): State<Upstream>, body: Bytes) -> Response {
    let sent = upstream
        .client
        .post(upstream.url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let mut response = Response::new(Body::from_stream(answer.bytes_stream()));
            *response.status_mut() = status;
            if let Some(value) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = Upstream { client: reqwest::Client::new(), url: args.upstream };
    let app = Router::new().fallback(post(forward)).with_state(upstream);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
