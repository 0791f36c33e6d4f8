//! The admin API behind the dashboard, against the real binary: the page's files and their
//! headers, the admin check, usage totals and series (matching `/v1/usage`), one run's record,
//! cancel, the engines' histograms, and a clear 4xx for each bad query.

mod common;

use std::time::Duration;

use common::{tiny_llama, Daemon};
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-api-token";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn admin_get(daemon: &Daemon, path: &str) -> (u16, Value) {
    let resp = client().get(daemon.url(path)).bearer_auth(TOKEN).send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

#[test]
fn the_dashboard_api_answers_usage_runs_and_metrics_and_names_bad_queries() {
    let model = tiny_llama();
    let daemon = Daemon::start_with_env(
        &["--model", model.to_str().unwrap()],
        &[("HEARTH_ADMIN_TOKEN", TOKEN)],
    );

    // The page: served to anyone (it holds no data), locked down by its headers.
    let page = client().get(daemon.url("/dashboard")).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(page.text().unwrap().contains("/dashboard/app.js"));
    for script in ["/dashboard/app.js", "/dashboard/parts.js"] {
        let script = client().get(daemon.url(script)).send().unwrap();
        assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    }
    let config: Value =
        client().get(daemon.url("/dashboard/config.json")).send().unwrap().json().unwrap();
    assert_eq!(config, json!({"token_required": true}));
    // The data: admin only.
    let refused = client().get(daemon.url("/admin/usage")).send().unwrap();
    assert_eq!(refused.status(), 401);

    let chat = client()
        .post(daemon.url("/v1/chat/completions"))
        .header("x-hearth-metadata", r#"{"team":"red"}"#)
        .json(&json!({"model": "tiny-llama", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .unwrap();
    assert_eq!(chat.status(), 200);
    let run_id = chat.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();

    let (status, run) = admin_get(&daemon, &format!("/admin/runs/{run_id}"));
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["record"]["status"], "finished", "{run}");
    assert_eq!(run["record"]["metadata"], json!({"team": "red"}));
    let (_, live) = admin_get(&daemon, "/admin/runs");
    assert_eq!(live["data"], json!([]), "nothing runs once the answer is in");

    let at = |hours: i64| {
        let time = chrono::Utc::now() + chrono::Duration::hours(hours);
        time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (since, until) = (at(-24), at(1));
    let (status, usage) = admin_get(
        &daemon,
        &format!("/admin/usage?group_by=metadata.team&since={since}&until={until}&bucket=3600"),
    );
    assert_eq!(status, 200, "{usage}");
    let public: Value = client()
        .get(daemon.url(&format!("/v1/usage?group_by=metadata.team&since={since}&until={until}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(usage["totals"], public["data"], "the totals are /v1/usage's");
    assert_eq!(usage["totals"][0]["key"], "red");
    assert_eq!(usage["totals"][0]["requests"], 1);
    let series = usage["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{usage}");
    assert_eq!(series[0]["groups"], usage["totals"], "one bucket holds the one run");

    let (_, metrics) = admin_get(&daemon, "/admin/metrics");
    let bounds = metrics["bucket_bounds_seconds"].as_array().unwrap().len();
    let tiny = &metrics["data"][0];
    assert_eq!(tiny["model"], "tiny-llama");
    let ttft = &tiny["time_to_first_token"];
    assert_eq!(ttft["counts"].as_array().unwrap().len(), bounds + 1, "{ttft}");
    let counted: u64 = ttft["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!((counted, ttft["count"].as_u64().unwrap()), (1, 1));
    assert!(tiny["generation_tokens_total"].as_u64().unwrap() >= 1);

    // Bad queries: 4xx, each naming its problem.
    for (path, expected, says) in [
        ("/admin/usage?group_by=cost", 400, "`cost` is not one of"),
        ("/admin/usage?bucket=0", 400, "is not between 1 s and a year"),
        ("/admin/usage?bucket=2305843009213693952", 400, "is not between 1 s and a year"),
        ("/admin/usage?bucket=60", 400, "a series needs `since`"),
        ("/admin/usage?since=yesterday", 400, "not an RFC 3339 time"),
        (&format!("/admin/usage?since={since}&until={until}&bucket=1"), 400, "more than 10000"),
        ("/admin/usage?bucket=minus", 400, "bucket"),
        ("/admin/runs/run_nope", 404, "run `run_nope` not found"),
    ] {
        let (status, body) = admin_get(&daemon, path);
        assert_eq!(status, expected, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path}: {message}");
    }
    let cancel =
        client().post(daemon.url("/admin/runs/run_nope/cancel")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(cancel.status(), 404);
}
