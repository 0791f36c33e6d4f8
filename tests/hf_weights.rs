//! `hf://` weights: packages whose cog.yaml names hub repositories load from a local mimic of
//! the hub, at start-up and through `hearth push`.

mod common;
#[path = "support/hub_mimic.rs"]
mod hub_mimic;

use std::path::Path;
use std::time::Duration;

use common::{tiny_llama, Daemon};
use hub_mimic::HubMimic;
use serde_json::{json, Value};

const HUB_TOKEN: &str = "hf_test_token";
const ADMIN_TOKEN: &str = "test-admin-token";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// A package with no model files of its own: cog.yaml points at the hub.
fn write_hf_package(dir: &Path, uri: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let cog = format!(
        "predict: predict.py:Predictor\nweights:\n  - name: tiny\n    target: /src\n    source:\n      \
         uri: {uri}\n      include: [\"*.json\", \"*.safetensors\"]\n"
    );
    std::fs::write(dir.join("cog.yaml"), cog).unwrap();
}

fn hub() -> HubMimic {
    let mimic = HubMimic::start();
    mimic.add_dir("hearth-test/tiny-llama", &tiny_llama());
    mimic.require_token(HUB_TOKEN);
    mimic
}

fn daemon(models: &Path, hf_home: &Path, mimic: &HubMimic, hub_token: &str) -> Daemon {
    let env = [
        ("HF_ENDPOINT", mimic.endpoint.as_str()),
        ("HF_HOME", hf_home.to_str().unwrap()),
        ("HF_TOKEN", hub_token),
        ("HEARTH_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    Daemon::start_with_env(&["--models", models.to_str().unwrap()], &env)
}

fn health(daemon: &Daemon) -> Value {
    client().get(daemon.url("/health")).send().unwrap().json().unwrap()
}

fn predict(daemon: &Daemon, name: &str) -> Value {
    let input = json!({"input": {"prompt": "Write a haiku", "max_tokens": 8}});
    let url = daemon.url(&format!("/cog/{name}/predictions"));
    client().post(url).json(&input).send().unwrap().json().unwrap()
}

fn downloads(mimic: &HubMimic) -> usize {
    mimic.log().iter().filter(|r| r.contains("/resolve/") && !r.ends_with("bytes=0-0")).count()
}

#[test]
fn hf_weights_load_at_start_up_and_through_a_push() {
    let mimic = hub();
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    write_hf_package(&models.join("tiny-hf"), "hf://hearth-test/tiny-llama@main");
    let daemon = daemon(&models, &root.path().join("hf-home"), &mimic, HUB_TOKEN);

    let health = health(&daemon);
    assert_eq!(health["models"]["tiny-hf"]["state"], "ready", "{health}");
    assert_eq!(predict(&daemon, "tiny-hf")["status"], "succeeded");
    assert!(models.join("tiny-hf/model.safetensors").is_file());
    assert!(!models.join("tiny-hf/predict.py").exists(), "`include` should leave predict.py out");
    let cog = std::fs::read_to_string(models.join("tiny-hf/cog.yaml")).unwrap();
    assert!(cog.contains("hf://"), "the package's own cog.yaml must survive");
    assert!(downloads(&mimic) > 0);

    // A pushed package naming the same revision is served from the hub cache.
    let before = downloads(&mimic);
    let upload = tempfile::tempdir().unwrap();
    write_hf_package(upload.path(), "hf://hearth-test/tiny-llama");
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_path_with_name(upload.path().join("cog.yaml"), "cog.yaml").unwrap();
    let resp = client()
        .put(daemon.url("/admin/models/pushed-hf"))
        .bearer_auth(ADMIN_TOKEN)
        .body(archive.into_inner().unwrap())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text());
    assert_eq!(predict(&daemon, "pushed-hf")["status"], "succeeded");
    assert_eq!(downloads(&mimic), before, "the cached files should be reused");
}

#[test]
fn a_refused_hub_token_fails_only_that_package() {
    let mimic = hub();
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    write_hf_package(&models.join("gated"), "hf://hearth-test/tiny-llama");
    std::fs::create_dir_all(&models).unwrap();
    let local = models.join("tiny-llama");
    std::fs::create_dir_all(&local).unwrap();
    for entry in std::fs::read_dir(tiny_llama()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), local.join(entry.file_name())).unwrap();
    }
    let daemon = daemon(&models, &root.path().join("hf-home"), &mimic, "hf_wrong");

    let health = health(&daemon);
    assert_eq!(health["models"]["gated"]["state"], "failed", "{health}");
    let reason = health["models"]["gated"]["reason"].as_str().unwrap();
    assert!(reason.contains("hf://hearth-test/tiny-llama") && reason.contains("401"), "{reason}");
    assert_eq!(predict(&daemon, "tiny-llama")["status"], "succeeded");
}

/// The families beyond Llama load from `hf://` as the Llama family does: Gemma 2 and 3, Phi-3
/// and a mixture of experts, each a synthetic repository on the mimic.
#[test]
fn every_native_family_loads_from_the_hub() {
    use hearth_package::synth::{write_llama_package, SynthSpec};
    let mimic = HubMimic::start();
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let presets = ["tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-qwen3-moe"];
    for preset in presets {
        let repo = root.path().join("repos").join(preset);
        write_llama_package(&SynthSpec::preset(preset).unwrap(), &repo, &mut |_, _| {}).unwrap();
        mimic.add_dir(&format!("hearth-test/{preset}"), &repo);
        write_hf_package(&models.join(preset), &format!("hf://hearth-test/{preset}"));
    }
    let hf_home = root.path().join("hf-home");
    let env = [("HF_ENDPOINT", mimic.endpoint.as_str()), ("HF_HOME", hf_home.to_str().unwrap())];
    let daemon = Daemon::start_with_env(&["--models", models.to_str().unwrap()], &env);
    let health = health(&daemon);
    for preset in presets {
        assert_eq!(health["models"][preset]["state"], "ready", "{preset}: {health}");
        assert_eq!(predict(&daemon, preset)["status"], "succeeded", "{preset}");
    }
}

/// A `hearth.yaml` adapter with an `hf://` source: its adapter files (and only those) are
/// fetched beside the package, and it is served as `PACKAGE:ADAPTER`.
#[test]
fn an_adapter_loads_from_the_hub() {
    use hearth_package::synth::{write_lora_adapter, LoraSpec, SynthSpec};
    let mimic = HubMimic::start();
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repos/support-lora");
    let spec = SynthSpec::tiny_llama();
    write_lora_adapter(&spec, &LoraSpec::all_projections(5), &repo).unwrap();
    std::fs::write(repo.join("README.md"), "# a PEFT adapter\n").unwrap();
    mimic.add_dir("hearth-test/support-lora", &repo);

    let package = root.path().join("models/tiny-llama");
    std::fs::create_dir_all(&package).unwrap();
    for entry in std::fs::read_dir(tiny_llama()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), package.join(entry.file_name())).unwrap();
    }
    let yaml = "adapters:\n  - {name: support, source: 'hf://hearth-test/support-lora'}\n";
    std::fs::write(package.join("hearth.yaml"), yaml).unwrap();

    let hf_home = root.path().join("hf-home");
    let env = [("HF_ENDPOINT", mimic.endpoint.as_str()), ("HF_HOME", hf_home.to_str().unwrap())];
    let models = root.path().join("models");
    let daemon = Daemon::start_with_env(&["--models", models.to_str().unwrap()], &env);
    let listed: Value = client().get(daemon.url("/v1/models")).send().unwrap().json().unwrap();
    let ids: Vec<&str> =
        listed["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"tiny-llama:support"), "{listed}");

    let fetched = package.join(hearth_package::HF_ADAPTERS_DIR).join("support");
    assert!(fetched.join("adapter_model.safetensors").is_file());
    assert!(!fetched.join("README.md").exists(), "only the adapter's own files are fetched");
    let chat = |model: &str| -> String {
        let body = json!({"model": model, "max_tokens": 8, "temperature": 0,
                          "messages": [{"role": "user", "content": "hello there"}]});
        let reply = daemon.post_json("/v1/chat/completions", &body);
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
            .to_owned()
    };
    assert_ne!(chat("tiny-llama:support"), chat("tiny-llama"), "the adapter changes the answer");
}
