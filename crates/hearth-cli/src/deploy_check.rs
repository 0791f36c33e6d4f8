//! The Kubernetes manifests in `deploy/kubernetes/` against the daemon itself: every
//! `hearth.toml` their ConfigMaps carry must parse as this version's settings, and each pod
//! must be given more time to stop than its daemon's shutdown grace plus the preStop pause.
//! (`kubernetes-validate` checks the manifests against Kubernetes' own schemas in CI.)

use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::config::Config;

fn manifests() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = Value::deserialize(document).expect("valid YAML");
                documents.push((path.display().to_string(), value));
            }
        }
    }
    documents
}

fn configs() -> Vec<(String, Config)> {
    manifests()
        .into_iter()
        .filter(|(_, m)| m["kind"] == "ConfigMap")
        .filter_map(|(file, m)| {
            let name = m["metadata"]["name"].as_str()?.to_owned();
            let toml = m["data"]["hearth.toml"].as_str()?.to_owned();
            let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{file}: {name}: {e:#}"));
            Some((name, config))
        })
        .collect()
}

#[test]
fn every_configmap_holds_a_hearth_toml_that_parses() {
    let configs = configs();
    let names: Vec<&str> = configs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for (name, config) in &configs {
        let config = config.gateway_config();
        assert!(config.state.redis_url.is_some(), "{name}: replicas share state in Redis");
        assert!(config.ledger.postgres_url.is_some(), "{name}: and spend in PostgreSQL");
    }
}

#[test]
fn pods_get_longer_to_stop_than_the_daemon_takes() {
    let configs = configs();
    for (file, manifest) in manifests() {
        let kind = manifest["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Deployment" | "StatefulSet") {
            continue;
        }
        let pod = &manifest["spec"]["template"]["spec"];
        let config_name = pod["volumes"]
            .as_sequence()
            .and_then(|v| v.iter().find_map(|v| v["configMap"]["name"].as_str()))
            .expect("the pod mounts its hearth.toml");
        let (_, config) = configs.iter().find(|(n, _)| n == config_name).expect("its ConfigMap");
        let grace = config.server.shutdown_grace_secs.expect("shutdown_grace_secs is set");
        let pause =
            pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
        let given = pod["terminationGracePeriodSeconds"].as_u64().expect("a termination grace");
        assert!(
            given > grace + pause,
            "{file}: {kind} gives {given} s to stop, needs > {grace} + {pause}"
        );
    }
}
