//! The agent workload against the fake server: histories must grow turn by turn and carry the
//! replies the server actually sent.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{start, FakeConfig, Seen};
use hearth_loadgen::agent::{run_agent, write_agent, AgentConfig, AgentResults};
use hearth_loadgen::client::{ClientConfig, Endpoint};
use hearth_loadgen::prompt::PromptGen;

const CONVERSATIONS: usize = 3;
const TURNS: usize = 4;

fn config(url: &str, endpoint: Endpoint) -> AgentConfig {
    AgentConfig {
        label: "fake".into(),
        client: ClientConfig {
            base_url: url.into(),
            model: "fake-model".into(),
            endpoint,
            api_key: None,
            ignore_eos: true,
            timeout: Duration::from_secs(30),
        },
        conversations: CONVERSATIONS,
        turns: TURNS,
        history_tokens: 200,
        new_tokens: 10,
        output_tokens: 5,
        seed: 7,
        show_progress: false,
    }
}

/// The agent's requests grouped by conversation (keyed by the system prompt's first words), in
/// the order the server received them; the warm-up has no system message and is dropped.
fn by_conversation(seen: &[Seen]) -> Vec<Vec<Seen>> {
    let mut groups: HashMap<String, Vec<Seen>> = HashMap::new();
    for s in seen.iter().filter(|s| s.body["messages"][0]["role"] == "system") {
        let key = s.prompt_words[..5].join(" ");
        groups.entry(key).or_default().push(s.clone());
    }
    groups.into_values().collect()
}

#[tokio::test]
async fn chat_histories_grow_and_carry_received_replies() {
    let server = start(FakeConfig::default()).await;
    let results = run_agent(&config(&server.url, Endpoint::Chat), &PromptGen::Words).await.unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 1 + CONVERSATIONS * TURNS);
    let replies: HashSet<&str> = seen.iter().map(|s| s.reply.as_str()).collect();

    let convs = by_conversation(&seen);
    assert_eq!(convs.len(), CONVERSATIONS);
    for conv in &convs {
        assert_eq!(conv.len(), TURNS);
        for (t, req) in conv.iter().enumerate() {
            let messages = req.body["messages"].as_array().unwrap();
            // system + (user, assistant) per earlier turn + the new user message
            assert_eq!(messages.len(), 2 + 2 * t);
            for m in messages.iter().filter(|m| m["role"] == "assistant") {
                assert!(
                    replies.contains(m["content"].as_str().unwrap()),
                    "history holds a reply never sent"
                );
            }
        }
        for pair in conv.windows(2) {
            assert!(pair[1].body_len > pair[0].body_len, "each turn re-sends a longer history");
            let prev = &pair[0].prompt_words;
            assert_eq!(&pair[1].prompt_words[..prev.len()], &prev[..], "history is append-only");
        }
        // 200-token target: system prompt 200 - 4 × (10 + 5) = 140 words, then 10 user words
        // and 5 reply tokens per turn.
        let last = conv.last().unwrap().prompt_words.len();
        assert_eq!(last, 140 + TURNS * 10 + (TURNS - 1) * 5);
    }

    assert_eq!(results.errors, 0);
    assert_eq!(results.turns.len(), TURNS);
    for pair in results.turns.windows(2) {
        assert!(pair[1].prompt_tokens_mean > pair[0].prompt_tokens_mean);
        assert!(pair[1].request_chars_mean > pair[0].request_chars_mean);
    }
    for t in &results.turns {
        assert_eq!((t.requests, t.errors), (CONVERSATIONS, 0));
        assert_eq!(t.ttft_ms.count, CONVERSATIONS);
        assert!(t.ttft_ms.p50 > 0.0);
        assert_eq!(t.output_tokens_mean, 5.0);
    }
    // The fake server caches earlier prompts only (not generated replies), so turn 2 finds all of
    // turn 1's prompt cached.
    let cached = results.turns[1].cached_tokens_mean.unwrap();
    assert_eq!(cached, results.turns[0].prompt_tokens_mean);
}

#[tokio::test]
async fn completions_endpoint_sends_a_growing_transcript_and_writes_files() {
    let server = start(FakeConfig { tokens_per_chunk: 2, ..FakeConfig::default() }).await;
    let results: AgentResults =
        run_agent(&config(&server.url, Endpoint::Completions), &PromptGen::Words).await.unwrap();
    let seen = server.requests();
    let prompts: Vec<&str> =
        seen.iter().skip(1).map(|s| s.body["prompt"].as_str().unwrap()).collect();
    assert_eq!(prompts.len(), CONVERSATIONS * TURNS);
    assert!(prompts.iter().all(|p| p.starts_with("System: ") && p.ends_with("Assistant:")));
    let max_turns = prompts.iter().map(|p| p.matches("User: ").count()).max().unwrap();
    assert_eq!(max_turns, TURNS);

    let dir = tempfile::tempdir().unwrap();
    write_agent(dir.path(), &results).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("agent.json")).unwrap())
            .unwrap();
    assert_eq!(json["turns"].as_array().unwrap().len(), TURNS);
    let md = std::fs::read_to_string(dir.path().join("agent.md")).unwrap();
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| turn")).count(),
        TURNS
    );
    let svg = std::fs::read_to_string(dir.path().join("agent_ttft.svg")).unwrap();
    assert!(svg.contains("Time to first token by turn"));
    let jsonl = std::fs::read_to_string(dir.path().join("agent_requests.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), CONVERSATIONS * TURNS);
}

#[tokio::test]
async fn a_failed_turn_ends_its_conversation() {
    // Request 1 is the warm-up; failing every 5th request hits some conversation mid-way.
    let server = start(FakeConfig { fail_every: Some(5), ..FakeConfig::default() }).await;
    let results = run_agent(&config(&server.url, Endpoint::Chat), &PromptGen::Words).await.unwrap();
    assert!(results.errors > 0);
    let ran: usize = results.turns.iter().map(|t| t.requests).sum();
    assert_eq!(server.requests().len() - 1, ran);
    assert!(ran < CONVERSATIONS * TURNS, "conversations stop at their failed turn");
}
