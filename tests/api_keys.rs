//! Client API keys against the real binary: created and revoked through the admin API, stored
//! hashed in the ledger's database, declared in hearth.toml by their SHA-256; a key's metadata
//! is billed, its models and its own limits are enforced, and without keys nothing changes.

mod common;

use std::time::Duration;

use common::{tiny_llama, Daemon};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn chat(
    daemon: &Daemon,
    model: &str,
    auth: Option<(&str, String)>,
) -> (u16, Value, Option<String>) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "temperature": 0});
    let mut request = client()
        .post(daemon.url("/v1/chat/completions"))
        .header("x-hearth-metadata", r#"{"team": "blue", "app": "ci"}"#)
        .json(&body);
    if let Some((name, value)) = auth {
        request = request.header(name, value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (retry_after, run_id) = (header("retry-after"), header("x-hearth-run-id"));
    let mut body: Value = response.json().unwrap();
    body["run_id"] = json!(run_id);
    (status, body, retry_after)
}

fn bearer(secret: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {secret}")))
}

fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

fn ledger_of(daemon: &Daemon, run_id: &str, secret: &str) -> Value {
    for _ in 0..100 {
        let status: Value = client()
            .get(daemon.url(&format!("/v1/runs/{run_id}")))
            .header("authorization", format!("Bearer {secret}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if !status["ledger"].is_null() {
            return status["ledger"].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no ledger record for {run_id}");
}

#[test]
fn keys_gate_requests_bill_their_metadata_and_enforce_models_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let declared = "hk-declared-in-the-config-file";
    let config = dir.path().join("hearth.toml");
    std::fs::write(&config, format!("[gateway]\nledger_path = \"{}\"\n", ledger.display()))
        .unwrap();
    let model = tiny_llama();
    let args = ["--config", config.to_str().unwrap(), "--model", model.to_str().unwrap()];
    let daemon = Daemon::start(&args);

    // No key exists: everyone is answered, as before.
    assert_eq!(chat(&daemon, "tiny-llama", None).0, 200);

    let created = daemon.post_json(
        "/admin/api-keys",
        &json!({"name": "ci", "metadata": {"team": "red"}, "models": ["tiny-llama"],
                "requests_per_minute": 3}),
    );
    let secret = created["key"].as_str().expect("the secret, once").to_owned();
    assert!(secret.starts_with("hk-"), "{created}");
    let other = daemon
        .post_json("/admin/api-keys", &json!({"name": "other", "models": ["some-other-model"]}));
    let bad = daemon.post_json("/admin/api-keys", &json!({"name": "x", "requests_per_minute": 0}));
    assert!(bad["error"].as_str().unwrap().contains("requests_per_minute"), "{bad}");

    // Now a key is needed, and must be right.
    let (status, body, _) = chat(&daemon, "tiny-llama", None);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_api_key")), "{body}");
    let (status, body, _) = chat(&daemon, "tiny-llama", bearer("hk-wrong"));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{body}");
    let health = client().get(daemon.url("/health")).send().unwrap();
    assert_eq!(health.status(), 200, "health needs no key");

    // Bearer or x-api-key; the key's metadata wins over the caller's for the same entry.
    let (status, body, _) = chat(&daemon, "tiny-llama", bearer(&secret));
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = chat(&daemon, "tiny-llama", Some(("x-api-key", secret.clone())));
    assert_eq!(status, 200);
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    let record = ledger_of(&daemon, &run_id, &secret);
    assert_eq!(record["api_key_id"], created["id"], "{record}");
    assert_eq!(record["metadata"], json!({"team": "red", "app": "ci"}), "{record}");

    // Models the key may not use: 403 naming the model.
    let (status, body, _) = chat(&daemon, "tiny-llama", bearer(other["key"].as_str().unwrap()));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");

    // Cog's routes take keys too: a prediction is billed to its key, and a key that may not
    // use the model gets 403.
    let cog_key =
        daemon.post_json("/admin/api-keys", &json!({"name": "cog", "metadata": {"team": "cog"}}));
    let predict = |secret: &str| {
        client()
            .post(daemon.url("/predictions"))
            .header("authorization", format!("Bearer {secret}"))
            .json(&json!({"input": {"prompt": "Hi", "max_tokens": 4}}))
            .send()
            .unwrap()
    };
    assert_eq!(predict(cog_key["key"].as_str().unwrap()).status(), 200);
    assert_eq!(predict(other["key"].as_str().unwrap()).status(), 403);
    let by_team: Value = client()
        .get(daemon.url("/v1/usage?group_by=metadata.team"))
        .header("authorization", format!("Bearer {secret}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let cog_rows: Vec<&Value> =
        by_team["data"].as_array().unwrap().iter().filter(|g| g["key"] == "cog").collect();
    assert_eq!(cog_rows.len(), 1, "{by_team}");
    assert_eq!(cog_rows[0]["requests"], 1, "{by_team}");

    // The key's own limit: three a minute, the fourth is refused naming the limit.
    let (status, body, retry_after) = chat(&daemon, "tiny-llama", bearer(&secret));
    assert_eq!(status, 200, "{body}");
    let (status, body, retry_after_refused) = chat(&daemon, "tiny-llama", bearer(&secret));
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("requests_per_minute = 3"),
        "{body}"
    );
    assert!(retry_after.is_none());
    let wait: u64 = retry_after_refused.unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));

    // Listing shows no secret; the database holds none either.
    let listed: Value = client().get(daemon.url("/admin/api-keys")).send().unwrap().json().unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 3, "{listed}");
    assert!(!listed.to_string().contains(&secret));
    let stored = std::fs::read(&ledger).unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains(&secret), "only the hash is stored");

    // Revoked: refused at once.
    let id = created["id"].as_str().unwrap();
    let revoked = client().delete(daemon.url(&format!("/admin/api-keys/{id}"))).send().unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(chat(&daemon, "tiny-llama", bearer(&secret)).0, 401);
    let again = client().delete(daemon.url(&format!("/admin/api-keys/{id}"))).send().unwrap();
    assert_eq!(again.status(), 404);
    drop(daemon);

    // A key declared in hearth.toml by its hash; stored keys outlive a restart.
    std::fs::write(
        &config,
        format!(
            "[gateway]\nledger_path = \"{}\"\n\n[[api_keys]]\nid = \"ops\"\nsha256 = \"{}\"\nmetadata = {{ team = \"ops\" }}\n",
            ledger.display(),
            sha256_hex(declared)
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&args);
    assert_eq!(chat(&daemon, "tiny-llama", bearer(declared)).0, 200);
    assert_eq!(chat(&daemon, "tiny-llama", bearer(other["key"].as_str().unwrap())).0, 403);
    let declared_delete = client().delete(daemon.url("/admin/api-keys/ops")).send().unwrap();
    assert_eq!(declared_delete.status(), 409);
}
