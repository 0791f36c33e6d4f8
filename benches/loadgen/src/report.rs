//! Writing and reading result files: JSON for machines, Markdown for people.

use std::fmt::Write as _;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::RequestRecord;
use crate::plot::{self, LoadPoint, LoadSeries};
use crate::stats::Summary;
use crate::sweep::{PointResult, RunResults};
use crate::Error;

pub const RESULTS_JSON: &str = "results.json";
pub const RESULTS_MD: &str = "results.md";
pub const REQUESTS_JSONL: &str = "requests.jsonl";
pub const RESULTS_SVG: &str = "ttft_throughput.svg";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

pub fn write_text(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(io_err(path))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| Error::Json { path: path.display().to_string(), source })?;
    write_text(path, &(text + "\n"))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text)
        .map_err(|source| Error::Json { path: path.display().to_string(), source })
}

pub fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// One JSON object per line: raw per-request measurements for anyone who wants other statistics.
pub fn write_jsonl<'a>(
    path: &Path,
    records: impl Iterator<Item = (String, &'a RequestRecord)>,
) -> Result<(), Error> {
    let mut out = String::new();
    for (group, rec) in records {
        let mut value = serde_json::to_value(rec)
            .map_err(|source| Error::Json { path: path.display().to_string(), source })?;
        value["group"] = serde_json::Value::String(group);
        out.push_str(&value.to_string());
        out.push('\n');
    }
    write_text(path, &out)
}

/// Writes `results.json`, `results.md`, `requests.jsonl` and the plot into `dir`.
pub fn write_run(dir: &Path, results: &RunResults) -> Result<(), Error> {
    create_dir(dir)?;
    write_json(&dir.join(RESULTS_JSON), results)?;
    write_text(&dir.join(RESULTS_MD), &run_markdown(results))?;
    let mode = results.config.mode;
    let records = results
        .points
        .iter()
        .flat_map(|p| p.records.iter().map(move |r| (mode.point_label(p.load), r)));
    write_jsonl(&dir.join(REQUESTS_JSONL), records)?;
    let title = format!("{} — {}", results.label, results.model);
    plot::load_panels(&dir.join(RESULTS_SVG), &title, mode.axis_label(), &[series_of(results)])
}

/// The plot series of one run.
pub fn series_of(results: &RunResults) -> LoadSeries {
    LoadSeries {
        label: results.label.clone(),
        points: results
            .points
            .iter()
            .map(|p| LoadPoint {
                load: p.load,
                ttft_p50_ms: p.ttft_ms.p50,
                ttft_p99_ms: p.ttft_ms.p99,
                output_tokens_per_s: p.output_tokens_per_s,
            })
            .collect(),
    }
}

/// `mean / p50 / p90 / p99`, in milliseconds.
pub fn fmt_summary(s: &Summary) -> String {
    if s.count == 0 {
        return "–".into();
    }
    format!("{} / {} / {} / {}", fmt_ms(s.mean), fmt_ms(s.p50), fmt_ms(s.p90), fmt_ms(s.p99))
}

/// Milliseconds with precision that suits the magnitude (ITLs are small, TTFTs can be seconds).
pub fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

/// The Markdown report of one run: a header, a throughput table and a latency table.
pub fn run_markdown(r: &RunResults) -> String {
    let c = &r.config;
    let mut md = String::new();
    let _ = writeln!(md, "# Load test: {}\n", r.label);
    let _ =
        writeln!(md, "- Server: {} — model `{}`, endpoint `{}`", r.server_url, r.model, c.endpoint);
    let _ = writeln!(md, "- Date: {}", r.date);
    let _ = writeln!(
        md,
        "- Load: {} sweep, {} requests per point; prompt tokens `{}`, output tokens `{}`{}; seed {}",
        c.mode.axis_label(),
        c.num_requests,
        c.prompt_tokens,
        c.output_tokens,
        if c.ignore_eos { " (ignore_eos)" } else { "" },
        c.seed
    );
    let _ = writeln!(md, "- Load generator host: {}\n", r.machine.one_line());
    md.push_str(&throughput_table(c.mode.axis_label(), &r.points));
    md.push('\n');
    md.push_str(&latency_table(c.mode.axis_label(), &r.points));
    md.push_str("\nLatencies in ms as mean / p50 / p90 / p99. TTFT: request sent → first token; ");
    md.push_str("ITL: gap between streamed chunks; TPOT: (E2E − TTFT) / (output tokens − 1).\n");
    md
}

fn throughput_table(axis: &str, points: &[PointResult]) -> String {
    let mut md = format!(
        "| {axis} | ok | errors | req/s | output tok/s | input tok/s | prompt tok (mean) | output tok (mean) | cached tok (mean) |\n"
    );
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {} |",
            p.load,
            p.completed,
            p.errors,
            p.requests_per_s,
            p.output_tokens_per_s,
            p.input_tokens_per_s,
            p.prompt_tokens_mean,
            p.output_tokens_mean,
            fmt_opt(p.cached_tokens_mean)
        );
    }
    md
}

fn latency_table(axis: &str, points: &[PointResult]) -> String {
    let mut md = format!("| {axis} | TTFT | ITL | TPOT | E2E |\n|---:|---|---|---|---|\n");
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            p.load,
            fmt_summary(&p.ttft_ms),
            fmt_summary(&p.itl_ms),
            fmt_summary(&p.tpot_ms),
            fmt_summary(&p.e2e_ms)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds_by_magnitude() {
        assert_eq!(fmt_ms(1234.4), "1234");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_summary(&Summary::default()), "–");
    }
}
