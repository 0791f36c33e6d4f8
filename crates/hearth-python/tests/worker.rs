//! The worker against real Cog predictors (`tests/fixtures/python`), in environments built from
//! PyPI the way a served package's are. The first run builds them (a minute); later runs reuse
//! the cache under `target/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_package::CogConfig;
use hearth_python::{Event, PredictError, Prediction, Worker, WorkerStatus};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/python").join(name)
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache/python")
}

/// Building environments is slow and uses the package index: one at a time across tests.
static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(name: &str, setup_timeout: Option<Duration>) -> Worker {
    let dir = fixture(name);
    let cog = CogConfig::load(&dir).expect("fixture cog.yaml");
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    hearth_python::start(name, &dir, &cog, &cache_dir(), setup_timeout, &|step| {
        eprintln!("{name}: {step}")
    })
    .expect("worker starts")
}

async fn ready(name: &str) -> Worker {
    let worker = tokio::task::block_in_place(|| start(name, None));
    assert_eq!(worker.wait_ready().await, WorkerStatus::Ready, "{:?}", worker.setup_report());
    worker
}

/// Every event of a prediction, to the end.
async fn collect(mut prediction: Prediction) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(event) = prediction.next().await {
        events.push(event);
    }
    events
}

fn outputs(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| if let Event::Output(v) = e { Some(v.clone()) } else { None })
        .collect()
}

fn logs(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| if let Event::Log { data, .. } = e { Some(data.as_str()) } else { None })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_predictor_streams_logs_and_keeps_its_secret() {
    let worker = ready("echo").await;
    let schema = worker.schema().expect("schema once ready");
    assert!(schema.streams && schema.streaming, "an iterator output under @cog.streaming");
    assert_eq!(schema.output["x-cog-array-display"], "concatenate");
    // As `cog build` writes it: Go prints the whole float 100.0 as 100.
    assert_eq!(schema.input["properties"]["repeat"]["maximum"], json!(100));
    assert_eq!(schema.secret_inputs().collect::<Vec<_>>(), ["token"]);
    assert!(worker.setup_report().logs.contains("echo predictor set up"));

    let input = json!({"text": "one two", "repeat": 2, "token": "hunter2"});
    let events = collect(worker.predict("p1", input).await.unwrap()).await;
    assert_eq!(outputs(&events), ["one ", "two ", "one ", "two "]);
    let logs = logs(&events);
    assert!(logs.contains("echoing 7 characters"), "{logs}");
    assert!(logs.contains("a line on stderr"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
    assert!(matches!(events.last(), Some(Event::Done { output: Value::Null, .. })), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_before_the_prediction_starts() {
    let worker = ready("echo").await;
    for (input, expected) in [
        (json!({}), "text: Field required"),
        (json!({"text": "x", "repeat": 1000}), "repeat fails constraint <= 100"),
        (json!({"text": "x", "repeat": "many"}), "repeat: "),
    ] {
        match worker.predict("bad", input).await {
            Err(PredictError::Invalid(message)) => assert!(message.contains(expected), "{message}"),
            Err(other) => panic!("expected an invalid input, got {other}"),
            Ok(_) => panic!("expected an invalid input, got a prediction"),
        }
    }
    assert_eq!(worker.busy_slots(), 0, "refused predictions hold no slot");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_prediction_ends_cancelled_and_the_worker_lives_on() {
    let worker = ready("echo").await;
    let input = json!({"text": "a b c d e f g h", "delay": 0.2});
    let mut prediction = worker.predict("slow", input).await.unwrap();
    // Wait for the first word, so the predictor is surely inside predict().
    while !matches!(prediction.next().await, Some(Event::Output(_))) {}
    prediction.cancel();
    let rest = collect(prediction).await;
    assert_eq!(rest.last(), Some(&Event::Cancelled), "{rest:?}");
    let events =
        collect(worker.predict("after", json!({"text": "still here"})).await.unwrap()).await;
    assert_eq!(outputs(&events), ["still ", "here "]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_predictor_has_one_slot() {
    let worker = ready("echo").await;
    let first = worker.predict("first", json!({"text": "a b", "delay": 0.5})).await.unwrap();
    let second = worker.predict("second", json!({"text": "x"})).await;
    assert!(
        matches!(second, Err(PredictError::Busy)),
        "a second prediction must wait for the slot"
    );
    collect(first).await;
    collect(worker.predict("third", json!({"text": "x"})).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_predictor_runs_its_slots_at_once() {
    let worker = ready("async").await;
    assert_eq!(worker.slots(), 4);
    let mut running = Vec::new();
    for i in 0..4 {
        running.push(worker.predict(&format!("p{i}"), json!({"seconds": 1.0})).await.unwrap());
    }
    assert!(matches!(worker.predict("fifth", json!({})).await, Err(PredictError::Busy)));
    let mut most = Vec::new();
    for prediction in running {
        match collect(prediction).await.pop() {
            Some(Event::Done { output, .. }) => most.push(output),
            other => panic!("unexpected end: {other:?}"),
        }
    }
    assert!(most.contains(&json!(4)), "four predictions overlapped: {most:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_raises_is_reported_with_its_logs() {
    let worker = tokio::task::block_in_place(|| start("setup-fails", None));
    match worker.wait_ready().await {
        WorkerStatus::SetupFailed { error } => {
            assert!(error.contains("weights.bin is missing"), "{error}")
        }
        other => panic!("expected a failed setup, got {other:?}"),
    }
    let logs = worker.setup_report().logs;
    assert!(logs.contains("loading weights that are not there"), "{logs}");
    assert!(logs.contains("RuntimeError"), "the traceback is in the logs: {logs}");
    assert!(matches!(
        worker.predict("p", json!({"text": "x"})).await,
        Err(PredictError::NotReady(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dies_fails_its_prediction_and_is_restarted() {
    let worker = ready("crash").await;
    let events = collect(worker.predict("dies", json!({})).await.unwrap()).await;
    match events.last() {
        Some(Event::Failed { error }) => assert!(error.contains("exited"), "{error}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(worker.wait_ready().await, WorkerStatus::Ready, "restarted");
    let events = collect(worker.predict("lives", json!({"die": false})).await.unwrap()).await;
    assert!(
        matches!(events.last(), Some(Event::Done { output, .. }) if output == "alive"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_come_from_a_requirements_file() {
    let worker = ready("requirements").await;
    let events = collect(worker.predict("p", json!({})).await.unwrap()).await;
    assert!(
        matches!(events.last(), Some(Event::Done { output, .. }) if output == "pillow 11.3.0"),
        "{events:?}"
    );
}

#[test]
fn pip_builds_an_environment_when_uv_is_absent() {
    let dir = fixture("crash");
    let cog = CogConfig::load(&dir).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let steps = std::sync::Mutex::new(Vec::<String>::new());
    let env = hearth_python::prepare_with(
        &dir,
        &cog,
        cache.path(),
        hearth_python::Installer::Pip,
        &|step| steps.lock().unwrap().push(step.to_owned()),
    )
    .expect("pip builds the environment");
    // The installer's own lines come through as it prints them, for a person waiting on a push.
    let steps = steps.into_inner().unwrap();
    assert!(
        steps.iter().any(|s| s.starts_with("Successfully installed") && s.contains("cog-0.23.1")),
        "{steps:#?}"
    );
    assert_eq!(steps.last().map(String::as_str), Some("Python environment ready"));
    let status = std::process::Command::new(&env.python)
        .args(["-c", "import cog, coglet; print(cog.__version__)"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "0.23.1");
    let leftovers: Vec<_> =
        std::fs::read_dir(cache.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the finished environment is left: {leftovers:?}");
}

#[test]
fn a_package_whose_requirements_cannot_install_is_refused_with_the_installer_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cog.yaml"), "build:\n  python_version: \"3.11\"\n  python_packages: [\"hearth-no-such-package-anywhere==1.0\"]\npredict: predict.py:Predictor\n").unwrap();
    let cog = CogConfig::load(dir.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let err = hearth_python::prepare(dir.path(), &cog, cache.path(), &|_| {}).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("hearth-no-such-package-anywhere"), "{message}");
    let leftovers: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "a failed build leaves nothing behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_overruns_its_timeout_fails() {
    let worker = tokio::task::block_in_place(|| start("setup-slow", Some(Duration::from_secs(2))));
    match worker.wait_ready().await {
        WorkerStatus::SetupFailed { error } => {
            assert!(error.contains("did not finish within 2 s"), "{error}")
        }
        other => panic!("expected a failed setup, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relative_cache_directory_is_resolved_before_the_worker_moves_into_its_package() {
    let dir = fixture("crash");
    let cog = CogConfig::load(&dir).unwrap();
    // Tests run in the crate's directory; the worker runs in the package's.
    let relative = Path::new("../../target/test-cache/python");
    let worker = tokio::task::block_in_place(|| {
        let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        hearth_python::start("crash", &dir, &cog, relative, None, &|_| {}).expect("worker starts")
    });
    assert_eq!(worker.wait_ready().await, WorkerStatus::Ready, "{:?}", worker.setup_report());
}
