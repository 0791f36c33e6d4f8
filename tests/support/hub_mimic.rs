//! A stand-in for the Hugging Face Hub on 127.0.0.1, serving the two endpoints `hf-hub` calls:
//!
//! - `GET /api/models/{org}/{repo}/revision/{rev}`: `{"sha": commit, "siblings": [{"rfilename"}]}`
//! - `GET /{org}/{repo}/resolve/{rev}/{file}`: the file, honouring `Range: bytes=a-b` with 206 and
//!   `Content-Range`, and carrying `ETag` and `x-repo-commit` as the hub does.
//!
//! It can require a bearer token, fail one ranged request once (to interrupt a download), and
//! records every request so tests can see what was fetched.
#![allow(dead_code)] // each test uses a different part

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// A repository's files at one commit, served for any revision name.
#[derive(Default)]
struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct Shared {
    repos: Mutex<BTreeMap<String, Repo>>,
    token: Mutex<Option<String>>,
    /// (file, range start): answered 500 once.
    fail_once: Mutex<Option<(String, u64)>>,
    log: Mutex<Vec<String>>,
}

/// The running mimic; it stops with the test process.
#[derive(Clone)]
pub struct HubMimic {
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl HubMimic {
    pub fn start() -> HubMimic {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/api/models/{org}/{repo}/revision/{rev}", get(info))
            .route("/{org}/{repo}/resolve/{rev}/{*file}", get(resolve))
            .with_state(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send addr");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        let addr = rx.recv().expect("mimic address");
        HubMimic { endpoint: format!("http://{addr}"), shared }
    }

    /// Adds (or replaces) `repo` (`org/name`) with `files` at a commit derived from them.
    pub fn add_repo(&self, repo: &str, files: Vec<(String, Vec<u8>)>) -> String {
        let mut hasher = DefaultHasher::new();
        files.hash(&mut hasher);
        let commit = format!("{:016x}{:024x}", hasher.finish(), 0xc0ffee_u64);
        let files = files.into_iter().collect();
        self.shared
            .repos
            .lock()
            .expect("repos")
            .insert(repo.to_owned(), Repo { commit: commit.clone(), files });
        commit
    }

    /// Adds the files of a package directory as `repo`.
    pub fn add_dir(&self, repo: &str, dir: &std::path::Path) -> String {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read package dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let name = path.file_name().expect("name").to_string_lossy().into_owned();
                files.push((name, std::fs::read(&path).expect("read file")));
            }
        }
        self.add_repo(repo, files)
    }

    pub fn require_token(&self, token: &str) {
        *self.shared.token.lock().expect("token") = Some(token.to_owned());
    }

    pub fn fail_once(&self, file: &str, range_start: u64) {
        *self.shared.fail_once.lock().expect("fail") = Some((file.to_owned(), range_start));
    }

    /// Requests so far, as `GET <path> <range>`.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().expect("log").clone()
    }
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = shared.token.lock().expect("token").clone() else { return true };
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {token}"))
}

fn record(shared: &Shared, path: String, headers: &HeaderMap) {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    shared.log.lock().expect("log").push(format!("GET {path} {range}"));
}

async fn info(
    State(shared): State<Arc<Shared>>,
    Path((org, repo, rev)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    record(&shared, format!("/api/models/{org}/{repo}/revision/{rev}"), &headers);
    if !authorised(&shared, &headers) {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let repos = shared.repos.lock().expect("repos");
    let Some(found) = repos.get(&format!("{org}/{repo}")) else {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    };
    let siblings: Vec<_> =
        found.files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
    Json(serde_json::json!({ "id": format!("{org}/{repo}"), "sha": found.commit, "siblings": siblings })).into_response()
}

async fn resolve(
    State(shared): State<Arc<Shared>>,
    Path((org, repo, rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    record(&shared, format!("/{org}/{repo}/resolve/{rev}/{file}"), &headers);
    if !authorised(&shared, &headers) {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let (commit, data) = {
        let repos = shared.repos.lock().expect("repos");
        let Some(found) = repos.get(&format!("{org}/{repo}")) else {
            return (StatusCode::NOT_FOUND, "Repository not found").into_response();
        };
        let Some(data) = found.files.get(&file) else {
            return (StatusCode::NOT_FOUND, "Entry not found").into_response();
        };
        (found.commit.clone(), data.clone())
    };
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    let etag = format!("\"{:016x}{:08x}\"", hasher.finish(), data.len());
    let base = [
        (header::ETAG, etag),
        (header::HeaderName::from_static("x-repo-commit"), commit),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
    ];
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    let Some((start, end)) = range else {
        return (StatusCode::OK, base, data).into_response();
    };
    let fail = shared.fail_once.lock().expect("fail").take_if(|(f, s)| *f == file && *s == start);
    if fail.is_some() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response();
    }
    let len = data.len() as u64;
    if start >= len.max(1) {
        return (StatusCode::RANGE_NOT_SATISFIABLE, base).into_response();
    }
    // hf-hub asks for one byte past the end of a file's last chunk; clamp as HTTP says to.
    let end = end.min(len.saturating_sub(1));
    let body = data.get(start as usize..=end as usize).unwrap_or_default().to_vec();
    let content_range = (header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    (StatusCode::PARTIAL_CONTENT, base, [content_range], body).into_response()
}

fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((start.parse().ok()?, end.parse().unwrap_or(u64::MAX)))
}
