//! `hearth push DIR [--to URL] [--name NAME]`: uploads a package directory to a running daemon,
//! which validates, installs and serves it. With `--adapter-of BASE --name NAME`, DIR is a PEFT
//! LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) to serve over the running
//! model BASE as `BASE:NAME`.
//!
//! The upload is a plain tar stream (the format `hearth_package::archive` documents), written
//! file by file on a separate thread into a small bounded channel that feeds the request body:
//! only a few chunks are ever in memory, whatever the package's size.

use std::cell::Cell;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures::TryStreamExt;
use hearth_package::archive::PackPlan;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{header, Method};
use tokio::sync::mpsc;

use crate::models_cmd::{answer, DaemonArgs};

/// Bytes per body chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the tar writer and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How often the daemon is asked how its load is going.
const STEP_POLL: Duration = Duration::from_millis(500);

#[derive(Args)]
pub struct PushArgs {
    /// The package directory (cog.yaml, config.json, weights, tokenizer, ...).
    dir: PathBuf,
    /// Name to serve it as (default: the package's own name: hearth.yaml `name`, cog.yaml
    /// `model`, or the directory's name). For an adapter, its name (required).
    #[arg(long)]
    name: Option<String>,
    /// DIR is a LoRA adapter for this running model, served as `BASE:NAME`.
    #[arg(long, value_name = "BASE", requires = "name")]
    adapter_of: Option<String>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

pub fn run(args: PushArgs) -> anyhow::Result<()> {
    if let Some(base) = &args.adapter_of {
        return push_adapter(&args, base);
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => hearth_package::read_name(&args.dir)
            .with_context(|| format!("reading the package name in {}", args.dir.display()))?,
    };
    let plan = PackPlan::new(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = format!("/admin/models/{name}");
    let body = runtime.block_on(upload(&args.daemon, &name, &path, plan))?;
    let replaced = body["replaced"].as_bool().unwrap_or(false);
    let url = body["predict_url"].as_str().unwrap_or("");
    println!("{name} is {}: {url}", if replaced { "replaced and serving" } else { "serving" });
    Ok(())
}

fn push_adapter(args: &PushArgs, base: &str) -> anyhow::Result<()> {
    let name = args.name.as_deref().context("--adapter-of needs --name")?;
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        if !args.dir.join(file).is_file() {
            bail!("{} is not a PEFT LoRA adapter: it has no {file}", args.dir.display());
        }
    }
    let plan = PackPlan::new(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = format!("/admin/models/{base}/adapters/{name}");
    let body = runtime.block_on(upload(&args.daemon, base, &path, plan))?;
    let replaced = body["replaced"].as_bool().unwrap_or(false);
    let id = body["id"].as_str().unwrap_or(name);
    println!("{id} is {}", if replaced { "replaced and serving" } else { "serving" });
    Ok(())
}

/// Sends `plan` as a `PUT` to `path`, showing progress, and the daemon's load steps of the
/// model `name` while it answers.
async fn upload(
    daemon: &DaemonArgs,
    name: &str,
    path: &str,
    plan: PackPlan,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::new();
    // A wrong token or an unreachable daemon should fail before gigabytes are sent.
    let probe = daemon.request(&client, Method::GET, "/admin/models").send().await;
    answer(probe.with_context(|| format!("reaching {}", daemon.to))?).await?;

    let bar = byte_bar(plan.archive_bytes(), name);
    let (chunks, receiver) = mpsc::channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    let writer = std::thread::spawn(move || write_archive(&plan, chunks));
    let counted = bar.clone();
    let stream = futures::stream::unfold((receiver, bar.clone()), |(mut rx, bar)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, bar))),
            None => {
                // Uploaded: what remains is the daemon's load, which for a Python package
                // includes building its environment and running setup() (minutes, once).
                show_loading(&bar);
                None
            }
        }
    })
    .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
    let put = daemon
        .request(&client, Method::PUT, path)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let shown = Cell::new(0);
    let response = tokio::select! {
        response = put => response,
        never = follow_steps(&client, daemon, name, &bar, &shown) => match never {},
    };
    if let Ok(Err(err)) = writer.join() {
        bar.finish_and_clear();
        bail!("packing the upload failed: {err}");
    }
    let body = answer(response.with_context(|| format!("uploading to {}", daemon.to))?).await;
    if let Ok(body) = &body {
        // Whatever the polls missed: the answer lists every step.
        show_steps(&bar, name, &steps_in(body), &shown);
    }
    bar.finish_and_clear();
    body
}

/// Shows the steps of the daemon's load (building a Python environment, running setup())
/// as they happen, read off `GET /admin/models` twice a second until the push answers.
async fn follow_steps(
    client: &reqwest::Client,
    daemon: &DaemonArgs,
    name: &str,
    bar: &ProgressBar,
    shown: &Cell<usize>,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(STEP_POLL).await;
        let Ok(response) = daemon.request(client, Method::GET, "/admin/models").send().await else {
            continue;
        };
        let Ok(listing) = response.json::<serde_json::Value>().await else { continue };
        let row =
            listing["models"].as_array().and_then(|rows| rows.iter().find(|r| r["id"] == name));
        if let Some(row) = row {
            show_steps(bar, name, &steps_in(row), shown);
        }
    }
}

/// The daemon's `steps` of a load: `(total, latest)`, the latest being the last of `total`.
fn steps_in(value: &serde_json::Value) -> (usize, Vec<String>) {
    let steps = &value["steps"];
    let total = steps["total"].as_u64().unwrap_or(0) as usize;
    let latest = steps["latest"].as_array().map(Vec::as_slice).unwrap_or_default();
    (total, latest.iter().filter_map(|step| step.as_str().map(str::to_owned)).collect())
}

/// Prints the steps not shown yet, above the spinner (or as plain lines when stderr is not a
/// terminal), and puts the latest in the spinner.
fn show_steps(
    bar: &ProgressBar,
    name: &str,
    (total, latest): &(usize, Vec<String>),
    shown: &Cell<usize>,
) {
    let first = total.saturating_sub(latest.len());
    for (number, step) in (first..).zip(latest) {
        if number < shown.get() {
            continue;
        }
        if bar.is_hidden() {
            eprintln!("{name}: {step}");
        } else {
            bar.println(format!("{name}: {step}"));
        }
        bar.set_message(step.clone());
    }
    shown.set(shown.get().max(*total));
}

/// Turns the upload bar into a spinner with the time spent loading on the daemon.
fn show_loading(bar: &ProgressBar) {
    let style = ProgressStyle::with_template(
        "{prefix} {spinner} loading on the daemon {elapsed}: {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message("validating the upload");
    bar.enable_steady_tick(Duration::from_millis(200));
}

fn byte_bar(total: u64, name: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix} uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(name.to_owned());
    bar
}

/// Writes the archive into `chunks`; stops early (with the error) when the request is gone.
fn write_archive(plan: &PackPlan, chunks: mpsc::Sender<io::Result<Vec<u8>>>) -> anyhow::Result<()> {
    let writer = ChunkWriter { chunks: chunks.clone(), buffer: Vec::with_capacity(CHUNK_BYTES) };
    let result = plan
        .write(writer)
        .map_err(anyhow::Error::from)
        .and_then(|mut writer| writer.flush().context("sending the archive"));
    if let Err(err) = &result {
        // Ends the body with an error, so the daemon sees a broken upload, not a short one.
        let _ = chunks.blocking_send(Err(io::Error::other(format!("{err:#}"))));
    }
    result
}

/// A `Write` that hands full chunks to the request body.
struct ChunkWriter {
    chunks: mpsc::Sender<io::Result<Vec<u8>>>,
    buffer: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = data.len().min(room);
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}
