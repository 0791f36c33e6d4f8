//! Cog packages with their own Python predictors (`tests/fixtures/python`), served by the real
//! binary: every Cog surface, files in and out, slots, cancel, failed setup, a crashing worker,
//! the ledger, and `hearth push`. Environments come from PyPI on first use and are cached under
//! `target/test-cache`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{parse_sse, repo_root, Daemon};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token";

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/python").join(name)
}

fn cache_dir() -> String {
    repo_root().join("target/test-cache").to_string_lossy().into_owned()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A daemon serving copies of the named fixtures, each waited on until its setup ended.
fn serve(packages: &[&str], extra: &[&str]) -> (Daemon, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    for name in packages {
        copy_dir(&fixture(name), &models.path().join(name));
    }
    let mut args = vec!["--models", models.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let env = [("HEARTH_CACHE_DIR", cache_dir()), ("HEARTH_ADMIN_TOKEN", TOKEN.to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start_with_env(&args, &env);
    for name in packages {
        wait_until(&format!("{name} finished setup"), Duration::from_secs(300), || {
            let health = get(&daemon, &format!("/cog/{name}/health-check"));
            health["status"] != "STARTING"
        });
    }
    (daemon, models)
}

fn get(daemon: &Daemon, path: &str) -> Value {
    client().get(daemon.url(path)).send().unwrap().json().unwrap()
}

fn post(daemon: &Daemon, path: &str, body: Value) -> (u16, Value) {
    let response = client().post(daemon.url(path)).json(&body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files the peer received, by name.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A small HTTP peer on loopback: serves `GET /files/{name}`, takes `PUT /uploads/{name}`
/// (answering 201) and records `POST /webhook` bodies.
struct Peer {
    base: String,
    uploads: Received,
    webhooks: Arc<Mutex<Vec<Value>>>,
    _runtime: tokio::runtime::Runtime,
}

fn peer(files: Vec<(&'static str, Vec<u8>)>) -> Peer {
    use axum::extract::{Path as UrlPath, State};
    use axum::routing::{get, post, put};
    type Shared = (Received, Arc<Mutex<Vec<Value>>>, Arc<Vec<(&'static str, Vec<u8>)>>);
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let webhooks = Arc::new(Mutex::new(Vec::new()));
    let state: Shared = (uploads.clone(), webhooks.clone(), Arc::new(files));
    let app = axum::Router::new()
        .route(
            "/files/{name}",
            get(|State(s): State<Shared>, UrlPath(name): UrlPath<String>| async move {
                match s.2.iter().find(|(n, _)| *n == name) {
                    Some((_, bytes)) => (axum::http::StatusCode::OK, bytes.clone()),
                    None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }),
        )
        .route(
            "/uploads/{name}",
            put(
                |State(s): State<Shared>,
                 UrlPath(name): UrlPath<String>,
                 body: axum::body::Bytes| async move {
                    s.0.lock().unwrap().push((name, body.to_vec()));
                    axum::http::StatusCode::CREATED
                },
            ),
        )
        .route(
            "/webhook",
            post(|State(s): State<Shared>, axum::Json(body): axum::Json<Value>| async move {
                s.1.lock().unwrap().push(body);
            }),
        )
        .with_state(state);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, app).await });
    Peer { base, uploads, webhooks, _runtime: runtime }
}

/// A `width`×`height` red PNG, made by hand so the test needs no image library.
fn png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(&out[start..]).to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    // Stored (uncompressed) deflate blocks inside a zlib stream.
    let row: Vec<u8> = std::iter::once(0).chain((0..width).flat_map(|_| [255, 0, 0])).collect();
    let raw: Vec<u8> = (0..height).flat_map(|_| row.clone()).collect();
    let mut zlib = vec![0x78, 0x01, 1];
    zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

fn data_uri_bytes(uri: &str) -> Vec<u8> {
    use base64::Engine as _;
    let (meta, data) = uri.split_once(',').expect("a data URI");
    assert_eq!(meta, "data:image/png;base64", "{meta}");
    base64::engine::general_purpose::STANDARD.decode(data).unwrap()
}

#[test]
fn a_python_predictor_answers_every_cog_surface() {
    let (daemon, _models) = serve(&["echo"], &[]);
    let health = get(&daemon, "/cog/echo/health-check");
    assert_eq!(health["status"], "READY", "{health}");
    assert!(
        health["setup"]["logs"].as_str().unwrap().contains("echo predictor set up"),
        "{health}"
    );
    assert_eq!(get(&daemon, "/cog/echo/")["predictions_url"], "/cog/echo/predictions");
    // The only package is the default model: the root routes serve it too.
    assert_eq!(get(&daemon, "/health-check")["status"], "READY");

    let openapi = get(&daemon, "/cog/echo/openapi.json");
    let input = &openapi["components"]["schemas"]["Input"];
    assert_eq!(input["required"], json!(["text"]), "{input}");
    assert_eq!(input["properties"]["repeat"]["maximum"], json!(100));
    assert_eq!(input["properties"]["token"]["x-cog-secret"], true);
    assert_eq!(openapi["components"]["schemas"]["Output"]["x-cog-array-type"], "iterator");
    assert!(openapi["paths"]["/cog/echo/predictions"]["post"].is_object());

    // Sync: output chunks, logs, the secret redacted in the echoed input, in the logs and in
    // the payload stored for it.
    let response = client()
        .post(daemon.url("/cog/echo/predictions"))
        .header("x-hearth-collect-log-payload", "true")
        .json(&json!({"input": {"text": "hello world", "token": "hunter2"}}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let run_id = response.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["x-hearth-route"], "local/echo");
    let prediction: Value = response.json().unwrap();
    assert_eq!(prediction["status"], "succeeded", "{prediction}");
    assert_eq!(prediction["output"], json!(["hello ", "world "]));
    assert_eq!(prediction["input"]["token"], "**********");
    let logs = prediction["logs"].as_str().unwrap();
    assert!(logs.contains("echoing 11 characters") && logs.contains("a line on stderr"), "{logs}");
    assert!(!prediction.to_string().contains("hunter2"), "{prediction}");
    let leaked: Vec<String> =
        daemon.all_logs().into_iter().filter(|l| l.contains("hunter2")).collect();
    assert!(leaked.is_empty(), "the secret reached the daemon's log: {leaked:?}");
    let stored: Value = client()
        .get(daemon.url(&format!("/admin/runs/{run_id}/payload")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stored["request"]["input"]["token"], "**********", "{stored}");
    assert_eq!(stored["request"]["input"]["text"], "hello world", "{stored}");
    assert_eq!(stored["response"]["output"], json!(["hello ", "world "]), "{stored}");
    assert!(!stored.to_string().contains("hunter2"), "the secret was stored: {stored}");
    assert!(prediction["metrics"]["predict_time"].as_f64().unwrap() > 0.0);

    // SSE: Cog's event vocabulary.
    let body = client()
        .post(daemon.url("/cog/echo/predictions"))
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"text": "a b"}}))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let events = parse_sse(&body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"), "{body}");
    assert_eq!(names.last(), Some(&"completed"), "{body}");
    assert!(names.contains(&"log"), "{body}");
    let chunks: Vec<Value> = events
        .iter()
        .filter(|(name, _)| name == "output")
        .map(|(_, data)| serde_json::from_str::<Value>(data).unwrap()["chunk"].clone())
        .collect();
    assert_eq!(chunks, [json!("a "), json!("b ")]);

    // Bad input: 422 in pydantic's shape, naming the field.
    let (status, body) =
        post(&daemon, "/cog/echo/predictions", json!({"input": {"text": "x", "repeat": 101}}));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "input", "repeat"]), "{body}");
    let (status, body) = post(&daemon, "/cog/echo/predictions", json!({"input": {}}));
    assert_eq!(
        (status, &body["detail"][0]["loc"]),
        (422, &json!(["body", "input", "text"])),
        "{body}"
    );
    let (status, _) = post(&daemon, "/cog/echo/predictions", json!({"input": "text"}));
    assert_eq!(status, 422);

    // Idempotent PUT answers the first prediction again.
    let put = |text: &str| -> Value {
        let url = daemon.url("/cog/echo/predictions/fixed-id");
        client().put(url).json(&json!({"input": {"text": text}})).send().unwrap().json().unwrap()
    };
    assert_eq!(put("first")["output"], json!(["first "]));
    assert_eq!(put("second")["output"], json!(["first "]));

    // Listed with a modality read off the schema; every prediction has its ledger record.
    let models = get(&daemon, "/v1/models");
    let echo =
        models["data"].as_array().unwrap().iter().find(|m| m["id"] == "echo").unwrap().clone();
    assert_eq!(echo["modality"], "text", "{echo}");
    let usage = get(&daemon, "/v1/usage?group_by=model");
    let row =
        usage["data"].as_array().unwrap().iter().find(|r| r["key"] == "echo").unwrap().clone();
    assert_eq!(
        row["requests"], 3,
        "sync, SSE and the first PUT ran; refusals and repeats did not: {row}"
    );
}

#[test]
fn files_go_in_as_urls_and_come_back_as_data_uris_or_uploads() {
    let peer = peer(vec![("in.png", png(4, 3))]);
    let (daemon, _models) = serve(&["image"], &[]);
    let image = format!("{}/files/in.png", peer.base);
    let (status, prediction) =
        post(&daemon, "/cog/image/predictions", json!({"input": {"image": image, "scale": 2}}));
    assert_eq!(status, 200, "{prediction}");
    assert_eq!(prediction["status"], "succeeded", "{prediction}");
    assert_eq!(png_size(&data_uri_bytes(prediction["output"].as_str().unwrap())), (8, 6));

    use base64::Engine as _;
    let inline = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png(2, 2))
    );
    let (_, prediction) =
        post(&daemon, "/cog/image/predictions", json!({"input": {"image": inline}}));
    assert_eq!(
        png_size(&data_uri_bytes(prediction["output"].as_str().unwrap())),
        (3, 3),
        "default scale 1.5"
    );

    for (image, expected) in [
        ("/etc/passwd".to_owned(), "must be an http(s):// URL or a data: URI"),
        (format!("{}/files/missing.png", peer.base), "404"),
    ] {
        let (status, body) =
            post(&daemon, "/cog/image/predictions", json!({"input": {"image": image}}));
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["detail"][0]["loc"], json!(["body", "input", "image"]));
        assert!(body["detail"][0]["msg"].as_str().unwrap().contains(expected), "{body}");
    }
    let (status, body) =
        post(&daemon, "/cog/image/predictions", json!({"input": {"image": image, "scale": 11}}));
    assert_eq!(status, 422, "{body}");
    drop(daemon);

    // With an upload URL, outputs are PUT there and answered as their URL.
    let upload = format!("{}/uploads", peer.base);
    let (daemon, _models) = serve(&["image"], &["--upload-url", &upload]);
    let (_, prediction) =
        post(&daemon, "/cog/image/predictions", json!({"input": {"image": image}}));
    assert_eq!(prediction["output"], format!("{upload}/output.png"), "{prediction}");
    let uploads = peer.uploads.lock().unwrap();
    assert_eq!(uploads.len(), 1);
    // 4×3 scaled by 1.5: Python rounds 4.5 half to even.
    assert_eq!(png_size(&uploads[0].1), (6, 4));
}

#[test]
fn an_async_predictor_runs_its_slots_at_once_and_reports_to_webhooks() {
    let peer = peer(Vec::new());
    let (daemon, _models) = serve(&["async"], &[]);
    let webhook = format!("{}/webhook", peer.base);
    let started: Vec<_> = (0..4)
        .map(|i| {
            let response = client()
                .put(daemon.url(&format!("/cog/async/predictions/slot-{i}")))
                .header("prefer", "respond-async")
                .json(&json!({"input": {"seconds": 2.0}, "webhook": webhook, "webhook_events_filter": ["start", "completed"]}))
                .send()
                .unwrap();
            assert_eq!(response.status(), 202);
            response
        })
        .collect();
    assert_eq!(started.len(), 4);
    assert_eq!(get(&daemon, "/cog/async/health-check")["status"], "BUSY");
    // A fifth finds every slot taken: the overload answer, with Retry-After.
    let fifth = client()
        .post(daemon.url("/cog/async/predictions"))
        .json(&json!({"input": {}}))
        .send()
        .unwrap();
    assert_eq!(fifth.status(), 429);
    assert!(fifth.headers().contains_key("retry-after"));

    wait_until("four completed webhooks", Duration::from_secs(60), || {
        peer.webhooks.lock().unwrap().iter().filter(|w| w["status"] == "succeeded").count() == 4
    });
    let hooks = peer.webhooks.lock().unwrap().clone();
    assert!(hooks.iter().any(|w| w["status"] == "processing"), "start webhooks: {hooks:?}");
    let most: Vec<&Value> =
        hooks.iter().filter(|w| w["status"] == "succeeded").map(|w| &w["output"]).collect();
    assert!(most.contains(&&json!(4)), "four predictions overlapped: {most:?}");
}

#[test]
fn a_cancelled_prediction_ends_canceled_and_the_worker_keeps_serving() {
    let (daemon, _models) = serve(&["echo"], &[]);
    let response = client()
        .put(daemon.url("/cog/echo/predictions/slow"))
        .header("prefer", "respond-async")
        .json(&json!({"input": {"text": "a b c d e f g h i j", "delay": 0.5}}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    std::thread::sleep(Duration::from_millis(700));
    let (status, body) = post(&daemon, "/cog/echo/predictions/slow/cancel", json!({}));
    assert_eq!((status, body), (200, json!({})));
    let status_of = || -> Value {
        let url = daemon.url("/cog/echo/predictions/slow");
        client().put(url).json(&json!({"input": {"text": "x"}})).send().unwrap().json().unwrap()
    };
    wait_until("the prediction ends", Duration::from_secs(10), || {
        status_of()["status"] != "processing"
    });
    let prediction = status_of();
    assert_eq!(prediction["status"], "canceled", "{prediction}");
    assert!(prediction["output"].as_array().unwrap().len() < 10, "{prediction}");
    let (status, _) = post(&daemon, "/cog/echo/predictions/unknown/cancel", json!({}));
    assert_eq!(status, 404);
    let (_, prediction) =
        post(&daemon, "/cog/echo/predictions", json!({"input": {"text": "alive"}}));
    assert_eq!(prediction["output"], json!(["alive "]));
}

#[test]
fn a_failed_setup_and_a_crashing_worker_show_in_health_and_the_rest_keeps_serving() {
    let (daemon, _models) = serve(&["setup-fails", "crash"], &[]);
    let health = get(&daemon, "/cog/setup-fails/health-check");
    assert_eq!(health["status"], "SETUP_FAILED", "{health}");
    assert_eq!(health["setup"]["status"], "failed");
    let logs = health["setup"]["logs"].as_str().unwrap();
    assert!(
        logs.contains("loading weights that are not there")
            && logs.contains("weights.bin is missing"),
        "{logs}"
    );
    let (status, body) =
        post(&daemon, "/cog/setup-fails/predictions", json!({"input": {"text": "x"}}));
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("weights.bin is missing"), "{body}");

    let (status, prediction) = post(&daemon, "/cog/crash/predictions", json!({"input": {}}));
    assert_eq!(status, 200);
    assert_eq!(prediction["status"], "failed", "{prediction}");
    assert!(prediction["error"].as_str().unwrap().contains("exited"), "{prediction}");
    wait_until("the worker is back", Duration::from_secs(30), || {
        get(&daemon, "/cog/crash/health-check")["status"] == "READY"
    });
    let (_, prediction) = post(&daemon, "/cog/crash/predictions", json!({"input": {"die": false}}));
    assert_eq!(prediction["output"], "alive", "{prediction}");
}

#[test]
fn a_pushed_python_package_builds_its_environment_and_serves() {
    let (daemon, models) = serve(&[], &[]);
    let push = |dir: &Path, name: &str| {
        std::process::Command::new(common::hearth_bin())
            .args([
                "push",
                dir.to_str().unwrap(),
                "--to",
                &daemon.base,
                "--name",
                name,
                "--token",
                TOKEN,
            ])
            .output()
            .unwrap()
    };
    let out = push(&fixture("echo"), "echo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    // The daemon's load, step by step: the environment (built or found in the cache), then setup.
    assert!(stderr.contains("echo: ") && stderr.contains("Python 3.11"), "{stderr}");
    assert!(stderr.contains("echo: running the predictor's setup()"), "{stderr}");
    let (_, prediction) =
        post(&daemon, "/cog/echo/predictions", json!({"input": {"text": "pushed"}}));
    assert_eq!(prediction["output"], json!(["pushed "]), "{prediction}");
    assert!(models.path().join("echo/predict.py").is_file());

    let broken = tempfile::tempdir().unwrap();
    std::fs::write(
        broken.path().join("cog.yaml"),
        "build:\n  python_version: \"3.11\"\n  python_packages: [\"hearth-no-such-package-anywhere==1.0\"]\npredict: predict.py:Predictor\n",
    )
    .unwrap();
    std::fs::write(broken.path().join("predict.py"), "from cog import BasePredictor\n").unwrap();
    let out = push(broken.path(), "broken");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a package whose environment cannot be built was accepted");
    assert!(
        stderr.contains("422") && stderr.contains("hearth-no-such-package-anywhere"),
        "{stderr}"
    );
    assert!(!models.path().join("broken").exists());

    let failing = push(&fixture("setup-fails"), "setup-fails");
    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert!(!failing.status.success() && stderr.contains("weights.bin is missing"), "{stderr}");
    assert!(!models.path().join("setup-fails").exists());
}

#[test]
fn the_run_api_takes_a_predictors_input_and_the_ledger_bills_its_seconds() {
    let models = tempfile::tempdir().unwrap();
    copy_dir(&fixture("echo"), &models.path().join("echo"));
    std::fs::write(
        models.path().join("echo/hearth.yaml"),
        "price_per_second: 1000\npredict_timeout_s: 2\n",
    )
    .unwrap();
    let env = [("HEARTH_CACHE_DIR", cache_dir())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start_with_env(&["--models", models.path().to_str().unwrap()], &env);
    wait_until("setup", Duration::from_secs(300), || {
        get(&daemon, "/cog/echo/health-check")["status"] == "READY"
    });

    let body = json!({"input": {"text": "one two", "delay": 0.1}, "metadata": {"team": "search"}});
    let (status, answer) = post(&daemon, "/v1/run/echo", body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "succeeded", "{answer}");
    assert_eq!(answer["output"], json!(["one ", "two "]));
    assert_eq!(answer["route"], "local/echo");
    assert!(answer["logs"].as_str().unwrap().contains("echoing 7 characters"), "{answer}");

    let text = client()
        .post(daemon.url("/v1/run/echo"))
        .json(&json!({"input": {"text": "x y"}, "stream": true}))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let events = parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "output").count(), 2, "{text}");
    assert_eq!(names.last(), Some(&"completed"), "{text}");

    let (status, error) =
        post(&daemon, "/v1/run/echo", json!({"input": {"text": "x", "repeat": 0}}));
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "repeat", "{error}");
    let (status, error) = post(&daemon, "/v1/run/echo", json!({"inputs": {}}));
    assert_eq!(status, 400, "{error}");

    // A prediction that overruns predict_timeout_s is cancelled and reported as timed out.
    let (_, answer) =
        post(&daemon, "/v1/run/echo", json!({"input": {"text": "a b c d e f g h", "delay": 0.5}}));
    assert_eq!(answer["status"], "failed", "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("timed out after 2 s"), "{answer}");

    // The first run took at least 0.2 s at 1000 per second.
    let usage = get(&daemon, "/v1/usage?group_by=metadata.team");
    let row =
        usage["data"].as_array().unwrap().iter().find(|r| r["key"] == "search").unwrap().clone();
    assert_eq!(row["requests"], 1, "{usage}");
    let cost: f64 = row["cost"].as_str().unwrap().parse().unwrap();
    assert!(cost >= 200.0, "billed by prediction time: {row}");
}
