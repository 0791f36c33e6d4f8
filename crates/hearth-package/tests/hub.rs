//! `hf://` weights against a local mimic of the hub's file API.

#[path = "../../../tests/support/hub_mimic.rs"]
mod hub_mimic;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hearth_package::hub::{fetch_weights_blocking, HubError, HubEvent, HubOptions, HubProgress};
use hub_mimic::HubMimic;

fn options(mimic: &HubMimic, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: Some(mimic.endpoint.clone()),
        token: None,
        cache_dir: Some(cache.to_path_buf()),
        chunk_bytes: 1000,
    }
}

fn package_with(weights: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cog.yaml"), format!("predict: p.py:P\nweights:\n{weights}"))
        .unwrap();
    dir
}

fn entry(uri: &str, target: &str, extra: &str) -> String {
    format!("  - name: w\n    target: {target}\n    source:\n      uri: {uri}\n{extra}")
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn files_land_at_the_target_filtered_by_include_and_exclude() {
    let mimic = HubMimic::start();
    mimic.add_repo(
        "org/model",
        vec![
            ("model.safetensors".into(), bytes(2500)),
            ("config.json".into(), b"{}".to_vec()),
            ("README.md".into(), b"hi".to_vec()),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let extra = "      include: [\"*.safetensors\", \"*.json\"]\n      exclude: [\"README*\"]\n";
    let package = package_with(&entry("hf://org/model@main", "/src/weights", extra));
    let fetched =
        fetch_weights_blocking(package.path(), &options(&mimic, cache.path()), None).unwrap();
    assert_eq!((fetched.files, fetched.bytes), (2, 2502));
    let weights = package.path().join("weights");
    assert_eq!(std::fs::read(weights.join("model.safetensors")).unwrap(), bytes(2500));
    assert!(!weights.join("README.md").exists());

    // A second load is served from the cache: no file is downloaded again.
    let before = mimic.log().len();
    fetch_weights_blocking(package.path(), &options(&mimic, cache.path()), None).unwrap();
    let again: Vec<String> = mimic.log()[before..].to_vec();
    assert!(again.iter().all(|r| r.contains("/api/models/")), "{again:?}");
}

#[test]
fn an_interrupted_download_resumes_from_its_last_chunk() {
    let mimic = HubMimic::start();
    mimic.add_repo("org/big", vec![("model.safetensors".into(), bytes(3500))]);
    mimic.fail_once("model.safetensors", 2000);
    let cache = tempfile::tempdir().unwrap();
    let package = package_with(&entry("hf://org/big", "/src", ""));
    let opts = options(&mimic, cache.path());

    let err = fetch_weights_blocking(package.path(), &opts, None).unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    assert!(!package.path().join("model.safetensors").exists());

    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let progress: HubProgress = Arc::new(move |event| {
        if let HubEvent::Advance { bytes, .. } = event {
            counter.fetch_add(bytes, Ordering::Relaxed);
        }
    });
    let before = mimic.log().len();
    fetch_weights_blocking(package.path(), &opts, Some(progress)).unwrap();
    assert_eq!(std::fs::read(package.path().join("model.safetensors")).unwrap(), bytes(3500));
    let ranges: Vec<String> =
        mimic.log()[before..].iter().filter(|r| r.contains("/resolve/")).cloned().collect();
    // The metadata probe, then only chunks not committed before the failure: never the first.
    assert!(ranges[0].ends_with("bytes=0-0"), "{ranges:?}");
    assert!(ranges.len() <= 4 && !ranges.iter().any(|r| r.ends_with("bytes=0-999")), "{ranges:?}");
    assert!(ranges.iter().any(|r| r.ends_with("bytes=2000-2999")), "{ranges:?}");
    assert_eq!(seen.load(Ordering::Relaxed), 3500, "resumed bytes count as progress too");
}

#[test]
fn a_token_is_sent_and_a_wrong_one_says_so() {
    let mimic = HubMimic::start();
    mimic.add_repo("org/gated", vec![("w.bin".into(), bytes(10))]);
    mimic.require_token("hf_secret");
    let cache = tempfile::tempdir().unwrap();
    let package = package_with(&entry("hf://org/gated", ".", ""));
    let mut opts = options(&mimic, cache.path());
    let err = fetch_weights_blocking(package.path(), &opts, None).unwrap_err();
    assert!(matches!(err, HubError::Hub { .. }) && err.to_string().contains("401"), "{err}");
    opts.token = Some("hf_secret".into());
    fetch_weights_blocking(package.path(), &opts, None).unwrap();
    assert!(package.path().join("w.bin").is_file());
}

#[test]
fn a_cached_revision_loads_without_the_hub() {
    let mimic = HubMimic::start();
    mimic.add_repo("org/model", vec![("w.bin".into(), bytes(10))]);
    let cache = tempfile::tempdir().unwrap();
    let package = package_with(&entry("hf://org/model", "/src", ""));
    fetch_weights_blocking(package.path(), &options(&mimic, cache.path()), None).unwrap();
    std::fs::remove_file(package.path().join("w.bin")).unwrap();

    let mut offline = options(&mimic, cache.path());
    offline.endpoint = Some("http://127.0.0.1:9".into());
    fetch_weights_blocking(package.path(), &offline, None).unwrap();
    assert!(package.path().join("w.bin").is_file());
}

#[test]
fn bad_entries_are_refused_before_any_request() {
    let cache = tempfile::tempdir().unwrap();
    let mimic = HubMimic::start();
    let outside = package_with(&entry("hf://org/model", "/opt/weights", ""));
    let err =
        fetch_weights_blocking(outside.path(), &options(&mimic, cache.path()), None).unwrap_err();
    assert!(err.to_string().contains("`weights[0].target`"), "{err}");
    let bad_uri = package_with(&entry("hf://a/b/c", "/src", ""));
    let err =
        fetch_weights_blocking(bad_uri.path(), &options(&mimic, cache.path()), None).unwrap_err();
    assert!(err.to_string().contains("`weights[0].source.uri`"), "{err}");
    assert!(mimic.log().is_empty());
}
