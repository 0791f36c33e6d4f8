//! Starting the real `hearth` binary for end-to-end tests.
#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

/// The `hearth` binary, built from the current sources. This package does not depend on the
/// binary's (cargo offers no binary dependencies on stable), so `cargo test --test X` alone
/// would run whatever `target/…/hearth` an earlier build left: the first call in each test
/// binary runs `cargo build -p hearth-cli` for the same profile, a no-op when it is current.
pub fn hearth_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_hearth).clone()
}

fn build_hearth() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "hearth-cli", "--bin", "hearth"]);
    build.current_dir(repo_root());
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(profile) => {
            build.args(["--profile", profile]);
        }
        None => {}
    }
    let status = build.status().expect("run cargo build -p hearth-cli");
    assert!(status.success(), "cargo build -p hearth-cli failed: {status}");
    let bin = dir.join(format!("hearth{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing after building it", bin.display());
    bin
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_llama() -> PathBuf {
    repo_root().join("models/tiny-llama")
}

/// A running daemon, killed when dropped. It runs in a scratch directory of its own, so files
/// it writes by default (the spend ledger) never land in the repository.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    logs: Mutex<mpsc::Receiver<String>>,
    all_logs: Arc<Mutex<Vec<String>>>,
    _scratch: tempfile::TempDir,
}

impl Daemon {
    /// Starts `hearth serve` with `args` on a free port and waits until it listens.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with_env(args, &[])
    }

    /// As [`Daemon::start`], with extra environment variables (provider API keys).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let mut child = Command::new(hearth_bin())
            .arg("--log-format")
            .arg("json")
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--device", "cpu"])
            .args(args)
            .current_dir(scratch.path())
            .env("HEARTH_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hearth");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = mpsc::channel();
        let all_logs = Arc::new(Mutex::new(Vec::new()));
        let keep = all_logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().expect("log store").push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            base: String::new(),
            logs: Mutex::new(logs),
            all_logs,
            _scratch: scratch,
        };
        let addr = daemon.wait_for_log("listening", Duration::from_secs(120));
        let addr = addr["fields"]["addr"].as_str().expect("addr field").to_string();
        daemon.base = format!("http://{addr}");
        daemon
    }

    /// Waits for a JSON log line whose message contains `needle`, and returns it.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let received = self.logs.lock().expect("log receiver").recv_timeout(left);
            let line = match received {
                Ok(line) => line,
                Err(_) => {
                    panic!("hearth never logged `{needle}` (exit: {:?})", self.child.try_wait())
                }
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if value["fields"]["message"].as_str().is_some_and(|m| m.contains(needle)) {
                return value;
            }
        }
    }

    /// Every log line the daemon has written so far.
    pub fn all_logs(&self) -> Vec<String> {
        self.all_logs.lock().expect("log store").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs `body` as JSON to `path` and returns the JSON answer, whatever its status.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("http client");
        let response = client.post(self.url(path)).json(body).send().expect("POST");
        response.json().expect("a JSON answer")
    }

    /// Sends SIGTERM and waits for the process to exit, returning its status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.stop()
    }

    /// As [`Daemon::terminate`], keeping the daemon's logs readable afterwards.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "hearth did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits an SSE body into (event, data) pairs.
pub fn parse_sse(body: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut event = String::from("message");
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            events.push((event, data.join("\n")));
        }
    }
    events
}
