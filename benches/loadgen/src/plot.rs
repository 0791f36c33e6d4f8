//! SVG plots. SVG only: it needs no system fonts or image libraries, diffs as text, and opens in
//! any browser. Every plot is two stacked panels sharing one x axis.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Error;

/// One server's (or one run's) points for the load plot.
#[derive(Debug, Clone)]
pub struct LoadSeries {
    pub label: String,
    pub points: Vec<LoadPoint>,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadPoint {
    pub load: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub output_tokens_per_s: f64,
}

/// A line to draw: its legend label, colour, whether dashed, and its (x, y) points.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

struct Panel {
    caption: String,
    x_label: String,
    y_label: String,
    lines: Vec<Line>,
}

const SIZE: (u32, u32) = (960, 860);

/// Colour `i` of a palette that stays distinguishable in print.
fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLORS[i % COLORS.len()]
}

/// p50/p99 TTFT (top) and output tokens/s (bottom) against offered load, one colour per series;
/// p99 is dashed in the series' colour so the two percentiles of one server read as a pair.
pub fn load_panels(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[LoadSeries],
) -> Result<(), Error> {
    let ttft = series.iter().enumerate().flat_map(|(i, s)| {
        let p50 = s.points.iter().map(|p| (p.load, p.ttft_p50_ms)).collect();
        let p99 = s.points.iter().map(|p| (p.load, p.ttft_p99_ms)).collect();
        [
            Line { label: format!("{} p50", s.label), color: color(i), dashed: false, points: p50 },
            Line { label: format!("{} p99", s.label), color: color(i), dashed: true, points: p99 },
        ]
    });
    let tput = series.iter().enumerate().map(|(i, s)| Line {
        label: s.label.clone(),
        color: color(i),
        dashed: false,
        points: s.points.iter().map(|p| (p.load, p.output_tokens_per_s)).collect(),
    });
    let panels = [
        Panel {
            caption: "Time to first token".into(),
            x_label: x_label.into(),
            y_label: "TTFT (ms)".into(),
            lines: ttft.collect(),
        },
        Panel {
            caption: "Output throughput".into(),
            x_label: x_label.into(),
            y_label: "output tokens/s".into(),
            lines: tput.collect(),
        },
    ];
    render(path, title, &panels)
}

/// Per-turn values of the agent workload.
#[derive(Debug, Clone, Copy)]
pub struct TurnPoint {
    pub turn: usize,
    pub ttft_mean_ms: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub prompt_tokens_mean: f64,
    /// `None` when the server does not report cached tokens, so no false zero line is drawn.
    pub cached_tokens_mean: Option<f64>,
}

/// TTFT by turn (top) and prompt vs cached tokens by turn (bottom): if prefix reuse works, TTFT
/// stays flat while the prompt grows, and the cached line tracks the prompt line.
pub fn agent_panels(path: &Path, title: &str, turns: &[TurnPoint]) -> Result<(), Error> {
    let line = |label: &str, i: usize, dashed: bool, f: fn(&TurnPoint) -> f64| Line {
        label: label.into(),
        color: color(i),
        dashed,
        points: turns.iter().map(|t| (t.turn as f64, f(t))).collect(),
    };
    let panels = [
        Panel {
            caption: "Time to first token by turn".into(),
            x_label: "turn".into(),
            y_label: "TTFT (ms)".into(),
            lines: vec![
                line("p50", 0, false, |t| t.ttft_p50_ms),
                line("p99", 0, true, |t| t.ttft_p99_ms),
                line("mean", 1, false, |t| t.ttft_mean_ms),
            ],
        },
        Panel {
            caption: "Prompt and cached tokens by turn".into(),
            x_label: "turn".into(),
            y_label: "tokens (mean)".into(),
            lines: std::iter::once(line("prompt tokens", 2, false, |t| t.prompt_tokens_mean))
                .chain(cached_line(turns))
                .collect(),
        },
    ];
    render(path, title, &panels)
}

fn cached_line(turns: &[TurnPoint]) -> Option<Line> {
    let points: Vec<(f64, f64)> =
        turns.iter().filter_map(|t| t.cached_tokens_mean.map(|c| (t.turn as f64, c))).collect();
    (!points.is_empty()).then(|| Line {
        label: "cached tokens".into(),
        color: color(3),
        dashed: false,
        points,
    })
}

fn render(path: &Path, title: &str, panels: &[Panel]) -> Result<(), Error> {
    let fail = |why: String| Error::Plot { path: path.display().to_string(), why };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| fail(e.to_string()))?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))
}

/// Axis range covering every point, padded so lines do not sit on the frame; y starts at 0
/// because latencies and throughputs read wrongly on a truncated axis.
fn ranges(lines: &[Line]) -> ((f64, f64), f64) {
    let all = || {
        lines.iter().flat_map(|l| l.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max);
    let (x_min, x_max) = if x_min.is_finite() { (x_min, x_max) } else { (0.0, 1.0) };
    let pad = ((x_max - x_min) * 0.05).max(0.5);
    // Headroom grows with the legend (top left), so the legend box does not hide the lines.
    let headroom = (1.15 + 0.07 * lines.len() as f64).min(1.7);
    ((x_min - pad, x_max + pad), if y_max > 0.0 { y_max * headroom } else { 1.0 })
}

/// Tick labels without spurious precision: `4` not `4.0`, `1250` not `1250.0`.
fn tick(v: &f64) -> String {
    if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let ((x0, x1), y1) = ranges(&panel.lines);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| e.to_string())?;
    for line in &panel.lines {
        draw_line(&mut chart, line)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    line: &Line,
) -> Result<(), String> {
    let color = line.color;
    let style = color.stroke_width(2);
    let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], style);
    // A dashed legend entry (two short strokes), so p99 is told from p50 in the legend too.
    let dashed_legend = move |(x, y): (i32, i32)| {
        EmptyElement::at((x, y))
            + PathElement::new(vec![(0, 0), (8, 0)], style)
            + PathElement::new(vec![(12, 0), (20, 0)], style)
    };
    let pts = line.points.clone();
    if line.dashed {
        chart
            .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
            .map_err(|e| e.to_string())?
            .label(line.label.as_str())
            .legend(dashed_legend);
    } else {
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|e| e.to_string())?
            .label(line.label.as_str())
            .legend(legend);
    }
    chart
        .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let series = |label: &str, k: f64| LoadSeries {
            label: label.into(),
            points: (1..=3)
                .map(|i| LoadPoint {
                    load: f64::from(i),
                    ttft_p50_ms: k * f64::from(i),
                    ttft_p99_ms: 2.0 * k * f64::from(i),
                    output_tokens_per_s: 100.0 / f64::from(i),
                })
                .collect(),
        };
        load_panels(&path, "title", "concurrency", &[series("alpha", 1.0), series("beta", 2.0)])
            .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for needle in ["alpha p50", "beta p99", "output tokens/s", "TTFT (ms)"] {
            assert!(svg.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn empty_series_still_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.svg");
        load_panels(&path, "t", "x", &[]).unwrap();
        agent_panels(&dir.path().join("a.svg"), "t", &[]).unwrap();
    }
}
