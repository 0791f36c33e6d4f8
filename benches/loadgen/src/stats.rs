//! Exact summary statistics over latency samples.
//!
//! Sweep points hold at most a few thousand samples, so sorting them and interpolating is exact
//! and cheap; a histogram's bucketing error would buy nothing here.

use serde::{Deserialize, Serialize};

/// Mean and tail percentiles of one metric, in the metric's own unit (milliseconds for latencies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises the samples; an empty input gives an all-zero summary with `count == 0`.
    /// NaNs are dropped rather than allowed to poison the sort.
    pub fn from_samples(samples: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return Summary::default();
        }
        sorted.sort_by(f64::total_cmp);
        Summary {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: percentile_sorted(&sorted, 50.0),
            p90: percentile_sorted(&sorted, 90.0),
            p99: percentile_sorted(&sorted, 99.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// The `p`-th percentile (0–100) of ascending `sorted`, linearly interpolated between the two
/// nearest ranks — the same definition as NumPy's default, so numbers compare with Python tools.
/// Returns 0 for an empty slice.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [0, 50, 90, 99, 100]) = [1, 2.5, 3.7, 3.97, 4]
        assert!(close(percentile_sorted(&v, 0.0), 1.0));
        assert!(close(percentile_sorted(&v, 50.0), 2.5));
        assert!(close(percentile_sorted(&v, 90.0), 3.7));
        assert!(close(percentile_sorted(&v, 99.0), 3.97));
        assert!(close(percentile_sorted(&v, 100.0), 4.0));
    }

    #[test]
    fn percentiles_on_one_to_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!(close(percentile_sorted(&v, 50.0), 50.5));
        assert!(close(percentile_sorted(&v, 90.0), 90.1));
        assert!(close(percentile_sorted(&v, 99.0), 99.01));
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(percentile_sorted(&[], 50.0), 0.0);
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
        assert_eq!(Summary::from_samples(&[]), Summary::default());
        let s = Summary::from_samples(&[f64::NAN, 3.0]);
        assert_eq!(s.count, 1);
        assert_eq!(s.p99, 3.0);
    }

    #[test]
    fn summary_sorts_unsorted_input() {
        let s = Summary::from_samples(&[5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(s.count, 5);
        assert!(close(s.mean, 3.0));
        assert!(close(s.p50, 3.0));
        assert!(close(s.p90, 4.6));
        assert_eq!((s.min, s.max), (1.0, 5.0));
    }
}
