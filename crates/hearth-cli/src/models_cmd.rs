//! `hearth models [--to URL]` lists a daemon's models with their state; `hearth models rm NAME`
//! unloads one and deletes its package. Both speak the daemon's admin API.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// Where the daemon is and how to authenticate to it.
#[derive(Args, Clone)]
pub struct DaemonArgs {
    /// Base URL of the daemon.
    #[arg(long, env = "HEARTH_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub to: String,
    /// Admin token (needed when the daemon has one configured).
    #[arg(long, env = "HEARTH_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl DaemonArgs {
    pub fn request(&self, client: &reqwest::Client, method: Method, path: &str) -> RequestBuilder {
        let url = format!("{}{path}", self.to.trim_end_matches('/'));
        let request = client.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// The JSON body of a successful admin answer, or the daemon's error message.
pub async fn answer(response: Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"].as_str().unwrap_or("no details").to_owned();
    bail!("the daemon answered {status}: {message}")
}

#[derive(Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    action: Option<ModelsAction>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Unload a model (its in-flight requests finish) and delete its package directory; or,
    /// named `BASE:ADAPTER`, stop serving a pushed LoRA adapter and delete it.
    Rm { name: String },
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = reqwest::Client::new();
        match args.action {
            None => list(&client, &args.daemon).await,
            Some(ModelsAction::Rm { name }) => remove(&client, &args.daemon, &name).await,
        }
    })
}

async fn list(client: &reqwest::Client, daemon: &DaemonArgs) -> anyhow::Result<()> {
    let response = daemon
        .request(client, Method::GET, "/admin/models")
        .send()
        .await
        .with_context(|| format!("reaching {}", daemon.to))?;
    let body = answer(response).await?;
    let models = body["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("no models");
        return Ok(());
    }
    println!("{:<32} {:<8} {:<11} DETAIL", "NAME", "STATE", "KIND");
    for model in &models {
        let text = |key: &str| model[key].as_str().unwrap_or("").to_owned();
        let detail = match text("state").as_str() {
            "failed" => text("reason"),
            "loading" => text("phase"),
            _ if text("pushing").contains("adapter") => {
                format!("{} ({})", text("predict_url"), text("pushing"))
            }
            _ if !text("pushing").is_empty() => {
                format!("{} (new version {})", text("predict_url"), text("pushing"))
            }
            _ => text("predict_url"),
        };
        println!("{:<32} {:<8} {:<11} {detail}", text("id"), text("state"), text("kind"));
        for adapter in model["adapters"].as_array().into_iter().flatten() {
            let id = format!("{}:{}", text("id"), adapter.as_str().unwrap_or(""));
            println!("{id:<32} {:<8} {:<11} LoRA adapter over {}", "ready", "adapter", text("id"));
        }
    }
    Ok(())
}

async fn remove(client: &reqwest::Client, daemon: &DaemonArgs, name: &str) -> anyhow::Result<()> {
    let path = match name.split_once(':') {
        Some((base, adapter)) => format!("/admin/models/{base}/adapters/{adapter}"),
        None => format!("/admin/models/{name}"),
    };
    let response = daemon
        .request(client, Method::DELETE, &path)
        .send()
        .await
        .with_context(|| format!("reaching {}", daemon.to))?;
    answer(response).await?;
    println!("removed {name}");
    Ok(())
}
