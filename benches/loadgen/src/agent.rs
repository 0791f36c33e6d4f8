//! The agent workload: many concurrent multi-turn conversations. Each turn re-sends the whole
//! history — system prompt, earlier user messages and the assistant replies actually received —
//! plus a short new user message, the way an agent loop does. What it shows is whether a server
//! reuses the shared prefix: with reuse, TTFT stays flat as the history grows and
//! `cached_tokens` climbs with it; without, TTFT grows with the history.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::client::{ms, Client, ClientConfig, Endpoint, Message, RequestRecord};
use crate::machine::MachineInfo;
use crate::plot::{self, TurnPoint};
use crate::prompt::PromptGen;
use crate::report::{self, fmt_ms};
use crate::stats::Summary;
use crate::sweep::{progress_style, warm_up};
use crate::Error;

pub const AGENT_JSON: &str = "agent.json";
pub const AGENT_MD: &str = "agent.md";
pub const AGENT_SVG: &str = "agent_ttft.svg";
pub const AGENT_JSONL: &str = "agent_requests.jsonl";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub label: String,
    pub client: ClientConfig,
    pub conversations: usize,
    pub turns: usize,
    /// Target history size at the last turn.
    pub history_tokens: u32,
    /// Size of each turn's new user message.
    pub new_tokens: u32,
    pub output_tokens: u32,
    pub seed: u64,
    pub show_progress: bool,
}

/// How the target history is split: a system prompt sent once at the top, then per turn a user
/// message and a reply. Agents typically carry a large fixed preamble (instructions, tool
/// schemas) and add little per turn, so the preamble takes whatever the turns do not fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPlan {
    pub system_tokens: u32,
    pub user_tokens: u32,
}

impl AgentPlan {
    /// When `turns × (new + output)` already exceeds the target, there is no system prompt and
    /// the user message shrinks (to at least one token) so the history still ends near the target.
    pub fn new(history_tokens: u32, turns: u32, new_tokens: u32, output_tokens: u32) -> AgentPlan {
        let turns = turns.max(1);
        let per_turn = new_tokens.saturating_add(output_tokens).saturating_mul(turns);
        if per_turn <= history_tokens {
            AgentPlan { system_tokens: history_tokens - per_turn, user_tokens: new_tokens.max(1) }
        } else {
            let user = (history_tokens / turns).saturating_sub(output_tokens).max(1);
            AgentPlan { system_tokens: 0, user_tokens: user.min(new_tokens.max(1)) }
        }
    }
}

/// The saved settings (no API key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSettings {
    pub endpoint: Endpoint,
    pub conversations: usize,
    pub turns: usize,
    pub history_tokens: u32,
    pub new_tokens: u32,
    pub output_tokens: u32,
    pub seed: u64,
    pub ignore_eos: bool,
    pub plan: AgentPlan,
}

/// Aggregates across conversations for one turn (turns are numbered from 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnStats {
    pub turn: usize,
    pub requests: usize,
    pub errors: usize,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub prompt_tokens_mean: f64,
    pub cached_tokens_mean: Option<f64>,
    pub output_tokens_mean: f64,
    /// Mean request body size, a server-independent measure of history growth.
    pub request_chars_mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentResults {
    pub format_version: u32,
    pub label: String,
    pub server_url: String,
    pub model: String,
    pub date: String,
    pub machine: MachineInfo,
    pub config: AgentSettings,
    pub duration_s: f64,
    pub errors: usize,
    pub turns: Vec<TurnStats>,
    /// Records by conversation, then by turn.
    #[serde(skip)]
    pub conversations: Vec<Vec<TurnRecord>>,
}

#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub record: RequestRecord,
    pub request_chars: usize,
}

/// Pre-generated text of one conversation, so prompt generation is never inside a timed region.
struct Script {
    system: Option<String>,
    users: Vec<String>,
}

fn scripts(cfg: &AgentConfig, plan: AgentPlan, prompts: &PromptGen) -> Result<Vec<Script>, Error> {
    (0..cfg.conversations)
        .map(|c| {
            let mut rng = ChaCha8Rng::seed_from_u64(
                cfg.seed ^ (c as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            );
            let system = match plan.system_tokens {
                0 => None,
                n => Some(prompts.generate(n, &mut rng)?.0),
            };
            let users = (0..cfg.turns)
                .map(|_| prompts.generate(plan.user_tokens, &mut rng).map(|(t, _)| t))
                .collect::<Result<_, _>>()?;
            Ok(Script { system, users })
        })
        .collect()
}

/// Runs one conversation turn by turn. A failed turn ends the conversation: an agent whose call
/// failed cannot continue, and the history it would send next no longer exists.
async fn converse(
    client: Client,
    script: Script,
    output_tokens: u32,
    t0: Instant,
    bar: ProgressBar,
) -> Vec<TurnRecord> {
    let mut messages: Vec<Message> =
        script.system.into_iter().map(|s| Message::new("system", s)).collect();
    let total = script.users.len();
    let mut out = Vec::with_capacity(total);
    for user in script.users {
        messages.push(Message::new("user", user));
        let request_chars = client.body(&messages, output_tokens).to_string().len();
        let start_ms = ms(t0.elapsed());
        let mut record = client.send(&messages, output_tokens).await;
        record.start_ms = start_ms;
        bar.inc(1);
        let failed = !record.ok();
        messages.push(Message::new("assistant", record.content.clone()));
        out.push(TurnRecord { record, request_chars });
        if failed {
            // Count the turns that will never run, so the bar still ends at 100%.
            bar.inc((total - out.len()) as u64);
            break;
        }
    }
    out
}

pub async fn run_agent(cfg: &AgentConfig, prompts: &PromptGen) -> Result<AgentResults, Error> {
    if cfg.conversations == 0 || cfg.turns == 0 {
        return Err(Error::Config("need at least one conversation and one turn".into()));
    }
    let plan =
        AgentPlan::new(cfg.history_tokens, cfg.turns as u32, cfg.new_tokens, cfg.output_tokens);
    tracing::info!(
        system_tokens = plan.system_tokens,
        user_tokens = plan.user_tokens,
        "agent plan"
    );
    let client = Client::new(cfg.client.clone())?;
    warm_up(&client, prompts, plan.system_tokens.max(plan.user_tokens), cfg.seed).await?;
    let scripts = scripts(cfg, plan, prompts)?;
    let bar = if cfg.show_progress {
        let bar =
            ProgressBar::new((cfg.conversations * cfg.turns) as u64).with_style(progress_style());
        bar.set_prefix("agent turns");
        bar
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, script) in scripts.into_iter().enumerate() {
        let fut = converse(client.clone(), script, cfg.output_tokens, t0, bar.clone());
        tasks.spawn(async move { (i, fut.await) });
    }
    let mut conversations = Vec::with_capacity(cfg.conversations);
    while let Some(res) = tasks.join_next().await {
        conversations.push(res.expect("conversation task panicked"));
    }
    bar.finish_and_clear();
    conversations.sort_by_key(|(i, _)| *i);
    let conversations: Vec<Vec<TurnRecord>> = conversations.into_iter().map(|(_, c)| c).collect();
    Ok(results(cfg, plan, conversations, t0.elapsed()))
}

fn results(
    cfg: &AgentConfig,
    plan: AgentPlan,
    conversations: Vec<Vec<TurnRecord>>,
    wall: Duration,
) -> AgentResults {
    let turns: Vec<TurnStats> = (0..cfg.turns).map(|t| turn_stats(t, &conversations)).collect();
    let errors = turns.iter().map(|t| t.errors).sum();
    for t in &turns {
        tracing::info!(
            turn = t.turn,
            ttft_p50_ms = format!("{:.1}", t.ttft_ms.p50),
            prompt_tokens = format!("{:.0}", t.prompt_tokens_mean),
            cached_tokens = t.cached_tokens_mean.map(|c| format!("{c:.0}")).unwrap_or_default(),
            errors = t.errors,
            "turn"
        );
    }
    AgentResults {
        format_version: 1,
        label: cfg.label.clone(),
        server_url: cfg.client.base_url.clone(),
        model: cfg.client.model.clone(),
        date: chrono::Utc::now().to_rfc3339(),
        machine: MachineInfo::detect(),
        config: AgentSettings {
            endpoint: cfg.client.endpoint,
            conversations: cfg.conversations,
            turns: cfg.turns,
            history_tokens: cfg.history_tokens,
            new_tokens: cfg.new_tokens,
            output_tokens: cfg.output_tokens,
            seed: cfg.seed,
            ignore_eos: cfg.client.ignore_eos,
            plan,
        },
        duration_s: wall.as_secs_f64(),
        errors,
        turns,
        conversations,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Statistics for turn `t` (0-based) over the conversations that reached it.
pub fn turn_stats(t: usize, conversations: &[Vec<TurnRecord>]) -> TurnStats {
    let all: Vec<&TurnRecord> = conversations.iter().filter_map(|c| c.get(t)).collect();
    let ok: Vec<&RequestRecord> = all.iter().map(|r| &r.record).filter(|r| r.ok()).collect();
    TurnStats {
        turn: t + 1,
        requests: all.len(),
        errors: all.len() - ok.len(),
        ttft_ms: Summary::from_samples(&ok.iter().filter_map(|r| r.ttft_ms).collect::<Vec<_>>()),
        tpot_ms: Summary::from_samples(&ok.iter().filter_map(|r| r.tpot_ms).collect::<Vec<_>>()),
        prompt_tokens_mean: mean(ok.iter().filter_map(|r| r.prompt_tokens.map(|v| v as f64)))
            .unwrap_or(0.0),
        cached_tokens_mean: mean(ok.iter().filter_map(|r| r.cached_tokens.map(|v| v as f64))),
        output_tokens_mean: mean(ok.iter().map(|r| r.output_tokens as f64)).unwrap_or(0.0),
        request_chars_mean: mean(all.iter().map(|r| r.request_chars as f64)).unwrap_or(0.0),
    }
}

/// Writes `agent.json`, `agent.md`, `agent_requests.jsonl` and `agent_ttft.svg` into `dir`.
pub fn write_agent(dir: &Path, r: &AgentResults) -> Result<(), Error> {
    report::create_dir(dir)?;
    report::write_json(&dir.join(AGENT_JSON), r)?;
    report::write_text(&dir.join(AGENT_MD), &agent_markdown(r))?;
    let records = r.conversations.iter().enumerate().flat_map(|(c, turns)| {
        turns.iter().enumerate().map(move |(t, tr)| (format!("conv{c}/turn{}", t + 1), &tr.record))
    });
    report::write_jsonl(&dir.join(AGENT_JSONL), records)?;
    let points: Vec<TurnPoint> = r
        .turns
        .iter()
        .map(|t| TurnPoint {
            turn: t.turn,
            ttft_mean_ms: t.ttft_ms.mean,
            ttft_p50_ms: t.ttft_ms.p50,
            ttft_p99_ms: t.ttft_ms.p99,
            prompt_tokens_mean: t.prompt_tokens_mean,
            cached_tokens_mean: t.cached_tokens_mean,
        })
        .collect();
    let title = format!("{} — {}: agent workload", r.label, r.model);
    plot::agent_panels(&dir.join(AGENT_SVG), &title, &points)
}

pub fn agent_markdown(r: &AgentResults) -> String {
    let c = &r.config;
    let mut md = format!("# Agent workload: {}\n\n", r.label);
    let _ =
        writeln!(md, "- Server: {} — model `{}`, endpoint `{}`", r.server_url, r.model, c.endpoint);
    let _ = writeln!(md, "- Date: {}", r.date);
    let _ = writeln!(
        md,
        "- {} conversations × {} turns; history target {} tokens (system prompt {}, user message {} per turn), {} output tokens per turn; seed {}",
        c.conversations, c.turns, c.history_tokens, c.plan.system_tokens, c.plan.user_tokens, c.output_tokens, c.seed
    );
    let _ = writeln!(md, "- Wall time {:.1} s, {} failed requests", r.duration_s, r.errors);
    let _ = writeln!(md, "- Load generator host: {}\n", r.machine.one_line());
    md.push_str("| turn | ok | errors | TTFT mean | TTFT p50 | TTFT p99 | TPOT p50 | prompt tok | cached tok | cached % |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in &r.turns {
        let cached = t.cached_tokens_mean.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
        let pct = match t.cached_tokens_mean {
            Some(v) if t.prompt_tokens_mean > 0.0 => {
                format!("{:.0}%", 100.0 * v / t.prompt_tokens_mean)
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            t.turn,
            t.requests - t.errors,
            t.errors,
            fmt_ms(t.ttft_ms.mean),
            fmt_ms(t.ttft_ms.p50),
            fmt_ms(t.ttft_ms.p99),
            fmt_ms(t.tpot_ms.p50),
            t.prompt_tokens_mean,
            cached,
            pct
        );
    }
    md.push_str("\nTTFT and TPOT in ms across conversations; token counts are means from the server's usage.\n");
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fills_history_with_system_prompt() {
        let p = AgentPlan::new(2000, 10, 40, 32);
        assert_eq!(p, AgentPlan { system_tokens: 1280, user_tokens: 40 });
        assert_eq!(p.system_tokens + 10 * (40 + 32), 2000);
    }

    #[test]
    fn plan_shrinks_user_message_when_turns_overflow() {
        let p = AgentPlan::new(500, 10, 40, 32);
        assert_eq!(p, AgentPlan { system_tokens: 0, user_tokens: 18 });
        assert_eq!(AgentPlan::new(10, 10, 40, 32).user_tokens, 1);
    }

    #[test]
    fn turn_stats_skip_conversations_that_ended() {
        let tr = |ttft: f64, err: bool| TurnRecord {
            record: RequestRecord {
                ttft_ms: Some(ttft),
                prompt_tokens: Some(100),
                cached_tokens: Some(80),
                error: err.then(|| "x".to_string()),
                ..Default::default()
            },
            request_chars: 10,
        };
        let convs = vec![vec![tr(10.0, false), tr(20.0, false)], vec![tr(30.0, true)]];
        let first = turn_stats(0, &convs);
        assert_eq!((first.requests, first.errors), (2, 1));
        assert_eq!(first.ttft_ms.mean, 10.0);
        let second = turn_stats(1, &convs);
        assert_eq!(second.requests, 1);
        assert_eq!(second.cached_tokens_mean, Some(80.0));
    }
}
