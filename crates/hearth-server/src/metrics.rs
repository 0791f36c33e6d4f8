//! `GET /metrics`: every loaded model's engine in the Prometheus text exposition format
//! (version 0.0.4), one series per model under the label `model`.
//!
//! Nothing is kept here: each scrape reads the catalog as it is now, the engines' load and
//! counters ([`hearth_gateway::EngineStats`]) and their latency histograms
//! ([`hearth_gateway::MetricsSnapshot`]). A model removed from the catalog simply stops being
//! reported; a model replaced under the same name starts its counters again from zero, which
//! Prometheus treats as a counter reset. The metric names are listed in the README.
//!
//! Written by hand rather than with `prometheus-client`: that crate's histograms take one
//! observation at a time from live metric objects, while the engines hand over finished bucket
//! counts from their own threads (the engine crate knows nothing of Prometheus); its const-metric
//! path writes OpenMetrics only, which renames counter families (no `_total`) and changes the
//! content type that scrapers and dashboards of the 0.0.4 text format expect. What is written
//! here is three line shapes, and `tests/metrics.rs` parses every scrape strictly.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hearth_gateway::{AdapterStats, EngineStats, HistogramSnapshot, MetricsSnapshot};

use crate::state::AppState;

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One model's numbers, read once per scrape.
struct ModelSample {
    /// The `model` label, already escaped.
    label: String,
    stats: EngineStats,
    metrics: MetricsSnapshot,
    adapters: AdapterStats,
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let samples: Vec<ModelSample> = state
        .catalog()
        .ready()
        .map(|(name, model)| ModelSample {
            label: escape_label(name),
            stats: model.engine.stats(),
            metrics: model.engine.metrics(),
            adapters: model.engine.adapter_stats(),
        })
        .collect();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&samples)).into_response()
}

fn render(samples: &[ModelSample]) -> String {
    let mut out = String::with_capacity(4096 + samples.len() * 8192);
    // Counters.
    let requests = |s: &ModelSample| s.metrics.requests;
    family(&mut out, "hearth_requests_total", "counter", "Requests ended, by how they ended.");
    for s in samples {
        for (reason, value) in [
            ("stop", requests(s).stop),
            ("length", requests(s).length),
            ("cancelled", requests(s).cancelled),
            ("failed", requests(s).failed),
        ] {
            let _ = writeln!(
                out,
                "hearth_requests_total{{model=\"{}\",finish_reason=\"{reason}\"}} {value}",
                s.label
            );
        }
    }
    counter(
        &mut out,
        samples,
        "hearth_prompt_tokens_total",
        "Prompt tokens of accepted requests.",
        |s| s.num_prompt_tokens,
    );
    counter(&mut out, samples, "hearth_generation_tokens_total", "Tokens generated.", |s| {
        s.num_generated_tokens
    });
    counter(
        &mut out,
        samples,
        "hearth_preemptions_total",
        "Running sequences whose KV cache was dropped to make room, to be recomputed.",
        |s| s.num_preemptions,
    );
    counter(
        &mut out,
        samples,
        "hearth_prefix_cache_queried_tokens_total",
        "Prompt tokens looked up in the prefix cache.",
        |s| s.num_prefix_queried_tokens,
    );
    counter(
        &mut out,
        samples,
        "hearth_prefix_cache_hit_tokens_total",
        "Prompt tokens whose KV cache came from the prefix cache.",
        |s| s.num_prefix_hit_tokens,
    );
    // Gauges.
    gauge(&mut out, samples, "hearth_num_requests_running", "Sequences being run.", |s| {
        s.num_running
    });
    gauge(&mut out, samples, "hearth_num_requests_waiting", "Sequences waiting to run.", |s| {
        s.num_waiting
    });
    gauge(&mut out, samples, "hearth_kv_blocks_total", "KV-cache blocks.", |s| s.kv_blocks_total);
    gauge(&mut out, samples, "hearth_kv_blocks_used", "KV-cache blocks held by sequences.", |s| {
        s.kv_blocks_used
    });
    gauge(
        &mut out,
        samples,
        "hearth_kv_blocks_free",
        "KV-cache blocks not held by sequences.",
        |s| s.kv_blocks_total.saturating_sub(s.kv_blocks_used),
    );
    gauge(
        &mut out,
        samples,
        "hearth_kv_blocks_cached",
        "KV-cache blocks in the prefix cache, held or free.",
        |s| s.kv_blocks_cached,
    );
    adapter_series(&mut out, samples);
    // Histograms.
    histogram(
        &mut out,
        samples,
        "hearth_time_to_first_token_seconds",
        "Time from a request's submission to its first text.",
        |m| &m.time_to_first_token,
    );
    histogram(
        &mut out,
        samples,
        "hearth_inter_token_latency_seconds",
        "Time between consecutive texts of one request.",
        |m| &m.inter_token_latency,
    );
    histogram(
        &mut out,
        samples,
        "hearth_e2e_request_latency_seconds",
        "Time from a request's submission to its end, whatever the outcome.",
        |m| &m.e2e_latency,
    );
    out
}

/// The LoRA adapter cache of each model (`hearth.yaml` `adapters:`).
fn adapter_series(out: &mut String, samples: &[ModelSample]) {
    type Series = (&'static str, &'static str, &'static str, fn(&AdapterStats) -> u64);
    let series: [Series; 4] = [
        ("hearth_lora_adapters_loaded", "gauge", "LoRA adapters in memory.", |a| a.loaded as u64),
        (
            "hearth_lora_adapter_bytes",
            "gauge",
            "Memory the loaded LoRA adapters take, in bytes.",
            |a| a.loaded_bytes as u64,
        ),
        ("hearth_lora_adapter_loads_total", "counter", "LoRA adapters read from disk.", |a| {
            a.loads
        }),
        (
            "hearth_lora_adapter_evictions_total",
            "counter",
            "LoRA adapters dropped, least recently used first, past adapter_cache_mb.",
            |a| a.evictions,
        ),
    ];
    for (name, kind, help, value) in series {
        family(out, name, kind, help);
        for s in samples {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", s.label, value(&s.adapters));
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(
    out: &mut String,
    samples: &[ModelSample],
    name: &str,
    help: &str,
    value: impl Fn(&EngineStats) -> u64,
) {
    family(out, name, "counter", help);
    for s in samples {
        let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", s.label, value(&s.stats));
    }
}

fn gauge(
    out: &mut String,
    samples: &[ModelSample],
    name: &str,
    help: &str,
    value: impl Fn(&EngineStats) -> usize,
) {
    family(out, name, "gauge", help);
    for s in samples {
        let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", s.label, value(&s.stats));
    }
}

fn histogram(
    out: &mut String,
    samples: &[ModelSample],
    name: &str,
    help: &str,
    value: impl Fn(&MetricsSnapshot) -> &HistogramSnapshot,
) {
    family(out, name, "histogram", help);
    for s in samples {
        let h = value(&s.metrics);
        for (le, count) in h.buckets() {
            let _ = writeln!(out, "{name}_bucket{{model=\"{}\",le=\"{le}\"}} {count}", s.label);
        }
        let _ = writeln!(out, "{name}_bucket{{model=\"{}\",le=\"+Inf\"}} {}", s.label, h.count);
        let _ = writeln!(out, "{name}_sum{{model=\"{}\"}} {}", s.label, h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{model=\"{}\"}} {}", s.label, h.count);
    }
}

/// Escapes a label value as the text format asks: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_label("tiny-llama"), "tiny-llama");
    }

    #[test]
    fn no_models_still_renders_every_family() {
        let text = render(&[]);
        for name in [
            "hearth_requests_total",
            "hearth_generation_tokens_total",
            "hearth_kv_blocks_free",
            "hearth_time_to_first_token_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
        }
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }
}
