//! `hearth push` and the admin API against the real binary: install, refuse, clean up, swap.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{hearth_bin, tiny_llama, Daemon};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// A daemon serving (and installing into) `models`, with the admin token set.
fn admin_daemon(models: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--models", models.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start_with_env(&args, &[("HEARTH_ADMIN_TOKEN", TOKEN)])
}

fn hearth(args: &[&str]) -> Output {
    std::process::Command::new(hearth_bin())
        .args(args)
        .env_remove("HEARTH_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn push(daemon: &Daemon, dir: &Path, name: &str) -> Output {
    let dir = dir.to_str().unwrap();
    hearth(&["push", dir, "--to", &daemon.base, "--name", name, "--token", TOKEN])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What is left in the staging area (nothing, between pushes).
fn staging_leftovers(models: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(models.join(".hearth-staging")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn listed(daemon: &Daemon) -> Value {
    let resp = client().get(daemon.url("/admin/models")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}

fn state_of(daemon: &Daemon, name: &str) -> Option<String> {
    let models = listed(daemon)["models"].as_array().cloned().unwrap_or_default();
    models.iter().find(|m| m["id"] == name).map(|m| m["state"].as_str().unwrap_or("").to_owned())
}

fn predict(daemon: &Daemon, name: &str) -> reqwest::blocking::Response {
    let input = json!({"input": {"prompt": "Write a haiku", "max_tokens": 8}});
    client().post(daemon.url(&format!("/cog/{name}/predictions"))).json(&input).send().unwrap()
}

/// `(path in archive, entry type, contents)`, written byte for byte (the tar crate's own
/// setters refuse hostile names).
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if kind.is_symlink() {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The tiny model's package as an upload archive.
fn tiny_archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in std::fs::read_dir(tiny_llama()).unwrap() {
        let path = entry.unwrap().path();
        builder.append_path_with_name(&path, path.file_name().unwrap()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn put_archive(
    daemon: &Daemon,
    name: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> (u16, Value) {
    let url = daemon.url(&format!("/admin/models/{name}"));
    let resp = client().put(url).bearer_auth(TOKEN).body(body).send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_pushed_package_is_served_listed_and_removed() {
    let models = tempfile::tempdir().unwrap();
    let daemon = admin_daemon(models.path(), &[]);
    let out = push(&daemon, &tiny_llama(), "pushed");
    assert!(out.status.success(), "push failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("/cog/pushed/predictions"), "{}", text(&out.stdout));

    let prediction: Value = predict(&daemon, "pushed").json().unwrap();
    assert_eq!(prediction["status"], "succeeded", "{prediction}");
    let completion = json!({"model": "pushed", "prompt": "hi", "max_tokens": 4});
    assert_eq!(
        client().post(daemon.url("/v1/completions")).json(&completion).send().unwrap().status(),
        200
    );
    assert!(models.path().join("pushed/model.safetensors").is_file());
    assert!(staging_leftovers(models.path()).is_empty());

    let out = hearth(&["models", "--to", &daemon.base, "--token", TOKEN]);
    let table = text(&out.stdout);
    assert!(out.status.success() && table.contains("pushed") && table.contains("ready"), "{table}");

    let out = hearth(&["models", "rm", "pushed", "--to", &daemon.base, "--token", TOKEN]);
    assert!(out.status.success(), "rm failed: {}", text(&out.stderr));
    assert!(!models.path().join("pushed").exists());
    assert_eq!(predict(&daemon, "pushed").status(), 404);
    assert_eq!(state_of(&daemon, "pushed"), None);
    wait_until("the removed package is deleted", Duration::from_secs(10), || {
        staging_leftovers(models.path()).is_empty()
    });
}

#[test]
fn a_broken_package_is_refused_and_the_daemon_keeps_serving() {
    let models = tempfile::tempdir().unwrap();
    let daemon = admin_daemon(models.path(), &[]);
    assert!(push(&daemon, &tiny_llama(), "good").status.success());

    let src = tempfile::tempdir().unwrap();
    copy_dir(&tiny_llama(), src.path());
    let config = std::fs::read_to_string(src.path().join("config.json")).unwrap();
    std::fs::write(src.path().join("config.json"), config.replace("\"hidden_size\": 128,", ""))
        .unwrap();
    let out = push(&daemon, src.path(), "broken");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a broken package was accepted");
    assert!(stderr.contains("422") && stderr.contains("hidden_size"), "{stderr}");

    assert!(!models.path().join("broken").exists());
    assert!(staging_leftovers(models.path()).is_empty(), "{:?}", staging_leftovers(models.path()));
    assert_eq!(state_of(&daemon, "broken"), None);
    assert_eq!(predict(&daemon, "good").status(), 200);

    // A package that calls itself something else than the name it is pushed as is refused too.
    std::fs::write(src.path().join("config.json"), config).unwrap();
    std::fs::write(src.path().join("hearth.yaml"), "name: other\n").unwrap();
    let out = push(&daemon, src.path(), "mismatch");
    assert!(text(&out.stderr).contains("calls itself `other`"), "{}", text(&out.stderr));
}

#[test]
fn an_interrupted_push_leaves_nothing_behind() {
    let models = tempfile::tempdir().unwrap();
    let daemon = admin_daemon(models.path(), &[]);
    let archive = tiny_archive();
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "PUT /admin/models/halfway HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        archive.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&archive[..archive.len() / 2]).unwrap();
    stream.flush().unwrap();
    wait_until("the upload is being received", Duration::from_secs(30), || {
        state_of(&daemon, "halfway").as_deref() == Some("loading")
    });
    drop(stream);

    wait_until("the daemon drops the upload", Duration::from_secs(30), || {
        state_of(&daemon, "halfway").is_none()
    });
    wait_until("the staging area is empty", Duration::from_secs(10), || {
        staging_leftovers(models.path()).is_empty()
    });
    assert!(!models.path().join("halfway").exists());
    let logs = daemon.all_logs().join("\n");
    assert!(logs.contains("upload_interrupted"), "the daemon should say the upload broke off");
    assert_eq!(
        std::fs::read_dir(models.path())
            .unwrap()
            .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count(),
        0
    );
    let (status, _) = put_archive(&daemon, "whole", tiny_archive());
    assert_eq!(status, 201, "the daemon still takes pushes");
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside_staging() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let config = root.path().join("hearth.toml");
    std::fs::write(&config, "[admin]\nmax_archive_mb = 4\nmax_file_mb = 1\n").unwrap();
    let daemon = admin_daemon(&models, &["--config", config.to_str().unwrap()]);

    let escape = "../../../../escaped.txt";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("traversal", raw_tar(&[(escape, tar::EntryType::Regular, b"x")]), 400, "unsafe_entry"),
        (
            "absolute",
            raw_tar(&[("/tmp/escaped.txt", tar::EntryType::Regular, b"x")]),
            400,
            "unsafe_entry",
        ),
        ("symlink", raw_tar(&[("config.json", tar::EntryType::Symlink, b"")]), 400, "unsafe_entry"),
        ("hardlink", raw_tar(&[("config.json", tar::EntryType::Link, b"")]), 400, "unsafe_entry"),
        ("fifo", raw_tar(&[("pipe", tar::EntryType::Fifo, b"")]), 400, "unsafe_entry"),
        (
            "big-file",
            raw_tar(&[("model.safetensors", tar::EntryType::Regular, &vec![0u8; 1_500_000])]),
            413,
            "entry_too_large",
        ),
    ];
    for (name, body, status, code) in cases {
        let (got, answer) = put_archive(&daemon, name, body);
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{name}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {answer}");
    }

    // Over the archive limit: declared up front, or only found out while streaming.
    let (got, answer) = put_archive(&daemon, "huge", vec![0u8; 5 << 20]);
    assert_eq!((got, answer["code"].as_str()), (413, Some("archive_too_large")), "{answer}");
    let parts: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("part-{i}"), vec![1u8; 900_000])).collect();
    let entries: Vec<(&str, tar::EntryType, &[u8])> =
        parts.iter().map(|(n, d)| (n.as_str(), tar::EntryType::Regular, d.as_slice())).collect();
    let streamed = reqwest::blocking::Body::new(std::io::Cursor::new(raw_tar(&entries)));
    let (got, answer) = put_archive(&daemon, "streamed", streamed);
    assert_eq!((got, answer["code"].as_str()), (413, Some("archive_too_large")), "{answer}");

    // `hearth push` relays the refusal it gets mid-upload.
    let out = push(&daemon, &tiny_llama(), "too-big");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("413") && stderr.contains("model.safetensors"),
        "{stderr}"
    );

    assert!(!root.path().join("escaped.txt").exists() && !Path::new("/tmp/escaped.txt").exists());
    assert!(staging_leftovers(&models).is_empty(), "{:?}", staging_leftovers(&models));
    let installed: Vec<_> =
        std::fs::read_dir(&models).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(installed.iter().all(|n| n.to_string_lossy().starts_with('.')), "{installed:?}");
}

#[test]
fn the_admin_api_needs_the_token() {
    let models = tempfile::tempdir().unwrap();
    let daemon = admin_daemon(models.path(), &[]);
    let resp = client().get(daemon.url("/admin/models")).send().unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.json::<Value>().unwrap()["code"], "unauthorized");
    let wrong = client().get(daemon.url("/admin/models")).bearer_auth("nope").send().unwrap();
    assert_eq!(wrong.status(), 401);
    let put = client().put(daemon.url("/admin/models/sneaky")).body(tiny_archive()).send().unwrap();
    assert_eq!(put.status(), 401);

    let dir = tiny_llama();
    let out = hearth(&["push", dir.to_str().unwrap(), "--to", &daemon.base, "--name", "sneaky"]);
    assert!(!out.status.success() && text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    assert!(!models.path().join("sneaky").exists() && staging_leftovers(models.path()).is_empty());

    // Without a token the daemon still answers this machine (and only it: see the unit tests).
    let open = Daemon::start(&["--models", models.path().to_str().unwrap()]);
    assert_eq!(client().get(open.url("/admin/models")).send().unwrap().status(), 200);
}

#[test]
fn re_pushing_a_loaded_name_swaps_it_without_dropping_an_in_flight_stream() {
    let models = tempfile::tempdir().unwrap();
    let mut daemon = admin_daemon(models.path(), &[]);
    let (status, _) = put_archive(&daemon, "swap", tiny_archive());
    assert_eq!(status, 201);

    let body = json!({"model": "swap", "prompt": "Tell me everything", "max_tokens": 1500, "ignore_eos": true, "stream": true});
    let mut resp = client().post(daemon.url("/v1/completions")).json(&body).send().unwrap();
    assert_eq!(resp.status(), 200);
    let mut first = [0u8; 64];
    assert!(resp.read(&mut first).unwrap() > 0);
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let result = resp.read_to_string(&mut rest).map(|_| rest);
        (result, Instant::now())
    });

    let (status, answer) = put_archive(&daemon, "swap", tiny_archive());
    let swapped_at = Instant::now();
    assert_eq!((status, &answer["replaced"]), (200, &json!(true)), "{answer}");
    let (rest, ended_at) = reader.join().unwrap();
    let rest = rest.expect("the in-flight stream ends cleanly");
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "…{}",
        &rest[rest.len().saturating_sub(300)..]
    );
    assert!(!rest.contains("\"error\""), "the stream carried an error");
    assert!(ended_at > swapped_at, "the stream should still have been running during the swap");

    // The old engine's thread ends once its last request has.
    daemon.wait_for_log("engine stopped", Duration::from_secs(60));
    assert_eq!(predict(&daemon, "swap").status(), 200);
    assert!(staging_leftovers(models.path()).is_empty());
}

/// Sends one request byte for byte (a client library would normalize `%2E%2E` away) and reads
/// the answer to the end: `(status, body)`.
fn raw_request(daemon: &Daemon, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A refused upload may be answered before its body is read; the write may then fail.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = text(&answer);
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn names_that_are_paths_are_refused_and_start_up_survives_staging_leftovers() {
    let models = tempfile::tempdir().unwrap();
    let daemon = admin_daemon(models.path(), &[]);
    let archive = tiny_archive();
    for name in ["%2E%2E", "%2E", "...", ".hearth-staging", "-m", "%2Fetc"] {
        let (status, body) =
            raw_request(&daemon, "PUT", &format!("/admin/models/{name}"), &archive);
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains("not a valid model name"), "{name}: {body}");
    }
    assert!(staging_leftovers(models.path()).is_empty(), "{:?}", staging_leftovers(models.path()));
    drop(daemon);

    // What a daemon that died mid-push may leave, and a stray file a bad name once put there.
    let staging = models.path().join(".hearth-staging");
    std::fs::create_dir_all(staging.join("0123abcd/halfway")).unwrap();
    std::fs::write(staging.join("cog.yaml"), "predict: predict.py:Predictor\n").unwrap();
    let mut daemon = admin_daemon(models.path(), &[]);
    assert!(staging_leftovers(models.path()).is_empty(), "{:?}", staging_leftovers(models.path()));
    let (status, body) = put_archive(&daemon, "after-restart", tiny_archive());
    assert_eq!(status, 201, "{body}");
    assert_eq!(predict(&daemon, "after-restart").status(), 200);
    assert!(daemon.stop().success());
}
