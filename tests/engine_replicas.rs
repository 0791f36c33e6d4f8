//! A gateway in front of two Hearth engine daemons (`kind = "hearth"`): an agent workload of
//! eight conversations of ten turns each, whose every turn re-sends the whole history. With
//! session affinity each conversation returns to the replica holding its prefix cache, so the
//! last turn reads nearly all of its prompt from the cache; round-robin is measured beside it.
//! A replica that goes down is failed over within the request.

mod common;

use std::time::Duration;

use common::{tiny_llama, Daemon};
use serde_json::{json, Value};

const CONVERSATIONS: usize = 8;
const TURNS: usize = 10;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// A long system prompt, as agents' are (instructions and tool descriptions), different for
/// each conversation and each placement so no run warms another's cache.
fn system_prompt(tag: &str, conversation: usize) -> String {
    let rules = "Answer briefly. Use the tools when they help. Never invent facts. ";
    format!("[{tag} agent {conversation}] {}", rules.repeat(6))
}

/// Runs the workload against `model`; returns (cached prompt tokens, prompt tokens) of each
/// conversation's last turn.
fn agent_workload(gateway: &Daemon, model: &str, tag: &str) -> Vec<(u64, u64)> {
    let mut histories: Vec<Vec<Value>> = (0..CONVERSATIONS)
        .map(|c| vec![json!({"role": "system", "content": system_prompt(tag, c)})])
        .collect();
    let mut last = vec![(0, 0); CONVERSATIONS];
    for turn in 0..TURNS {
        // Agents do not take turns in a fixed order; rotating it each turn also keeps
        // round-robin from sending a conversation to the same replica every time by chance
        // (eight conversations over two replicas would otherwise line up).
        for c in (0..CONVERSATIONS).map(|i| (i + turn) % CONVERSATIONS) {
            let history = &mut histories[c];
            history.push(json!({"role": "user", "content": format!("Step {turn}: what next?")}));
            let body = json!({"model": model, "messages": history, "max_tokens": 8,
                "temperature": 0});
            let answer: Value = client()
                .post(gateway.url("/v1/chat/completions"))
                .json(&body)
                .send()
                .unwrap()
                .json()
                .unwrap();
            let text = answer["choices"][0]["message"]["content"].as_str();
            let text = text.unwrap_or_else(|| panic!("turn {turn} of {c}: {answer}")).to_owned();
            history.push(json!({"role": "assistant", "content": text}));
            let usage = &answer["usage"];
            last[c] = (
                usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
                usage["prompt_tokens"].as_u64().unwrap(),
            );
        }
    }
    last
}

fn share(results: &[(u64, u64)]) -> f64 {
    let cached: u64 = results.iter().map(|r| r.0).sum();
    let prompt: u64 = results.iter().map(|r| r.1).sum();
    cached as f64 / prompt as f64
}

#[test]
fn session_affinity_keeps_conversations_on_their_prefix_cache() {
    let model = tiny_llama();
    let engine = || Daemon::start(&["--model", model.to_str().unwrap()]);
    let (e1, mut e2) = (engine(), engine());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    let config = dir.path().join("hearth.toml");
    let urls = format!("[\"{}/v1\", \"{}/v1\"]", e1.base, e2.base);
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"engines\"\nkind = \"hearth\"\nbase_urls = {urls}\n\n\
             [[providers]]\nname = \"engines-rr\"\nkind = \"hearth\"\nbase_urls = {urls}\n\
             placement = \"round-robin\"\n\n\
             [[models]]\nid = \"agent\"\nroutes = [\"engines/tiny-llama\"]\n\n\
             [[models]]\nid = \"agent-rr\"\nroutes = [\"engines-rr/tiny-llama\"]\n"
        ),
    )
    .unwrap();
    let models = dir.path().join("models");
    let gateway = Daemon::start(&[
        "--config",
        config.to_str().unwrap(),
        "--models",
        models.to_str().unwrap(),
    ]);

    let affinity = agent_workload(&gateway, "agent", "affinity");
    let round_robin = agent_workload(&gateway, "agent-rr", "round-robin");
    let (a, r) = (share(&affinity), share(&round_robin));
    println!(
        "last-turn prompt tokens read from the prefix cache: affinity {a:.3}, round-robin {r:.3}"
    );
    println!("affinity (cached, prompt) per conversation: {affinity:?}");
    println!("round-robin (cached, prompt) per conversation: {round_robin:?}");
    for (c, (cached, prompt)) in affinity.iter().enumerate() {
        assert!(*cached as f64 >= 0.9 * *prompt as f64, "conversation {c}: {cached} of {prompt}");
    }
    assert!(a > r, "affinity {a} beats round-robin {r}");

    // A replica goes down: requests fail over to the other within the request.
    e2.stop();
    for c in 0..4 {
        let body = json!({"model": "agent", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": format!("after the outage {c}")}]});
        let response =
            client().post(gateway.url("/v1/chat/completions")).json(&body).send().unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().unwrap());
    }
    drop(e1);
}
