//! Side-by-side comparison of several saved runs (e.g. Hearth vs llama-server vs mistral.rs run
//! with the same sweep), as one Markdown table and one plot with a series per run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot;
use crate::report::{self, fmt_ms, series_of, RESULTS_JSON};
use crate::sweep::RunResults;
use crate::Error;

pub const COMPARE_MD: &str = "compare.md";
pub const COMPARE_SVG: &str = "compare_ttft_throughput.svg";

/// Reads `results.json` from each directory (or a path straight to a JSON file). Duplicate labels
/// get a numeric suffix so every series stays distinguishable in the legend.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<RunResults>, Error> {
    let mut runs: Vec<RunResults> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let path = if dir.is_dir() { dir.join(RESULTS_JSON) } else { dir.clone() };
        let mut run: RunResults = report::read_json(&path)?;
        let base = run.label.clone();
        let mut n = 2;
        while runs.iter().any(|r| r.label == run.label) {
            run.label = format!("{base} ({n})");
            n += 1;
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Settings that make runs incomparable when they differ, named for the report's warning.
fn mismatches(runs: &[RunResults]) -> Vec<&'static str> {
    let Some(first) = runs.first() else { return Vec::new() };
    let mut out = Vec::new();
    let differs = |f: &dyn Fn(&RunResults) -> String| runs.iter().any(|r| f(r) != f(first));
    if differs(&|r| format!("{:?}", r.config.mode)) {
        out.push("load mode (concurrency vs rate)");
    }
    if differs(&|r| r.config.prompt_tokens.to_string()) {
        out.push("prompt length distribution");
    }
    if differs(&|r| r.config.output_tokens.to_string()) {
        out.push("output length distribution");
    }
    if differs(&|r| r.config.num_requests.to_string()) {
        out.push("requests per point");
    }
    if differs(&|r| format!("{:?}", r.config.endpoint)) {
        out.push("endpoint");
    }
    if differs(&|r| r.machine.cpu_model.clone()) {
        out.push("load generator host CPU");
    }
    out
}

pub fn compare_markdown(runs: &[RunResults]) -> String {
    let mut md = String::from("# Serving comparison\n\n");
    md.push_str("| label | server | model | sweep | prompt tok | output tok | date |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | `{}` | {} × {} req | `{}` | `{}` | {} |",
            r.label,
            r.server_url,
            r.model,
            r.config.mode.axis_label(),
            r.config.num_requests,
            r.config.prompt_tokens,
            r.config.output_tokens,
            r.date
        );
    }
    let bad = mismatches(runs);
    if !bad.is_empty() {
        let _ = writeln!(
            md,
            "\n**Warning:** the runs differ in {}; compare with care.",
            bad.join(", ")
        );
    }
    let axis = runs.first().map(|r| r.config.mode.axis_label()).unwrap_or("load");
    md.push('\n');
    md.push_str(&points_table(axis, runs));
    md.push_str("\nLatencies in ms. Rows are grouped by load so the servers sit side by side.\n");
    md
}

fn points_table(axis: &str, runs: &[RunResults]) -> String {
    let mut md = format!(
        "| {axis} | label | ok | errors | req/s | output tok/s | TTFT p50 | TTFT p99 | ITL p50 | TPOT p50 | TPOT p99 | E2E p50 | E2E p99 |\n"
    );
    md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut rows: Vec<(f64, usize, &RunResults, &crate::sweep::PointResult)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.points.iter().map(move |p| (p.load, i, r, p)))
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (load, _, r, p) in rows {
        let _ = writeln!(
            md,
            "| {load} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            p.completed,
            p.errors,
            p.requests_per_s,
            p.output_tokens_per_s,
            fmt_ms(p.ttft_ms.p50),
            fmt_ms(p.ttft_ms.p99),
            fmt_ms(p.itl_ms.p50),
            fmt_ms(p.tpot_ms.p50),
            fmt_ms(p.tpot_ms.p99),
            fmt_ms(p.e2e_ms.p50),
            fmt_ms(p.e2e_ms.p99),
        );
    }
    md
}

/// Loads the runs and writes `compare.md` and `compare_ttft_throughput.svg` into `out`.
pub fn compare(dirs: &[PathBuf], out: &Path) -> Result<Vec<RunResults>, Error> {
    if dirs.is_empty() {
        return Err(Error::Config("compare needs at least one results directory".into()));
    }
    let runs = load_runs(dirs)?;
    for m in mismatches(&runs) {
        tracing::warn!(setting = m, "compared runs differ");
    }
    report::create_dir(out)?;
    report::write_text(&out.join(COMPARE_MD), &compare_markdown(&runs))?;
    let series: Vec<_> = runs.iter().map(series_of).collect();
    let axis = runs[0].config.mode.axis_label();
    plot::load_panels(&out.join(COMPARE_SVG), "Serving comparison", axis, &series)?;
    Ok(runs)
}
