//! Token-length distributions for prompts and outputs, parsed from the command line.
//!
//! Forms: `fixed:350`, `uniform:100-400` (inclusive), `normal:350,50` (mean, std dev; samples are
//! rounded and clamped to at least 1 so a wide normal never asks for an empty prompt).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::Error;

/// A distribution of token counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LengthDist {
    Fixed(u32),
    Uniform { low: u32, high: u32 },
    Normal { mean: f64, std_dev: f64 },
}

impl LengthDist {
    /// Draws one length, always at least 1.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n.max(1),
            LengthDist::Uniform { low, high } => rng.random_range(low..=high).max(1),
            LengthDist::Normal { mean, std_dev } => {
                // Validated at parse time, so construction cannot fail here.
                let normal = Normal::new(mean, std_dev).expect("validated normal parameters");
                normal.sample(rng).round().max(1.0) as u32
            }
        }
    }

    /// The expected length, used to size agent turns and to label reports.
    pub fn mean(&self) -> f64 {
        match *self {
            LengthDist::Fixed(n) => f64::from(n),
            LengthDist::Uniform { low, high } => (f64::from(low) + f64::from(high)) / 2.0,
            LengthDist::Normal { mean, .. } => mean,
        }
    }

    /// True when every sample is the same length, i.e. the run can demand exact output lengths.
    pub fn is_fixed(&self) -> bool {
        matches!(self, LengthDist::Fixed(_))
    }
}

fn bad(spec: &str, why: &str) -> Error {
    Error::Dist { spec: spec.to_string(), why: why.to_string() }
}

fn parse_u32(spec: &str, s: &str) -> Result<u32, Error> {
    s.trim().parse().map_err(|_| bad(spec, &format!("`{s}` is not a non-negative integer")))
}

fn parse_f64(spec: &str, s: &str) -> Result<f64, Error> {
    let v: f64 = s.trim().parse().map_err(|_| bad(spec, &format!("`{s}` is not a number")))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad(spec, "numbers must be finite"))
    }
}

impl FromStr for LengthDist {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let (kind, args) = spec
            .split_once(':')
            .ok_or_else(|| bad(spec, "expected KIND:ARGS, e.g. fixed:350, uniform:100-400"))?;
        match kind.trim() {
            "fixed" => {
                let n = parse_u32(spec, args)?;
                if n == 0 {
                    return Err(bad(spec, "length must be at least 1"));
                }
                Ok(LengthDist::Fixed(n))
            }
            "uniform" => {
                let (lo, hi) =
                    args.split_once('-').ok_or_else(|| bad(spec, "expected LOW-HIGH"))?;
                let (low, high) = (parse_u32(spec, lo)?, parse_u32(spec, hi)?);
                if low == 0 || low > high {
                    return Err(bad(spec, "need 1 <= LOW <= HIGH"));
                }
                Ok(LengthDist::Uniform { low, high })
            }
            "normal" => {
                let (m, s) =
                    args.split_once(',').ok_or_else(|| bad(spec, "expected MEAN,STDDEV"))?;
                let (mean, std_dev) = (parse_f64(spec, m)?, parse_f64(spec, s)?);
                if mean < 1.0 || std_dev < 0.0 {
                    return Err(bad(spec, "need MEAN >= 1 and STDDEV >= 0"));
                }
                Ok(LengthDist::Normal { mean, std_dev })
            }
            other => Err(bad(spec, &format!("unknown kind `{other}` (fixed, uniform, normal)"))),
        }
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthDist::Fixed(n) => write!(f, "fixed:{n}"),
            LengthDist::Uniform { low, high } => write!(f, "uniform:{low}-{high}"),
            LengthDist::Normal { mean, std_dev } => write!(f, "normal:{mean},{std_dev}"),
        }
    }
}

impl TryFrom<String> for LengthDist {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<LengthDist> for String {
    fn from(d: LengthDist) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn parses_every_form() {
        assert_eq!("fixed:350".parse::<LengthDist>().unwrap(), LengthDist::Fixed(350));
        assert_eq!(
            "uniform:100-400".parse::<LengthDist>().unwrap(),
            LengthDist::Uniform { low: 100, high: 400 }
        );
        assert_eq!(
            "normal:350,50".parse::<LengthDist>().unwrap(),
            LengthDist::Normal { mean: 350.0, std_dev: 50.0 }
        );
        assert_eq!(
            " uniform: 5 - 9".parse::<LengthDist>().unwrap(),
            LengthDist::Uniform { low: 5, high: 9 }
        );
    }

    #[test]
    fn rejects_malformed_specs() {
        for spec in [
            "350",
            "fixed:",
            "fixed:0",
            "fixed:-3",
            "fixed:abc",
            "uniform:400-100",
            "uniform:0-5",
            "uniform:100",
            "normal:350",
            "normal:0,1",
            "normal:350,-1",
            "normal:nan,1",
            "poisson:3",
        ] {
            assert!(spec.parse::<LengthDist>().is_err(), "{spec} should not parse");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in ["fixed:7", "uniform:1-9", "normal:350,50", "normal:12.5,0.5"] {
            let d: LengthDist = spec.parse().unwrap();
            assert_eq!(d.to_string().parse::<LengthDist>().unwrap(), d);
        }
    }

    #[test]
    fn samples_stay_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let uniform: LengthDist = "uniform:10-20".parse().unwrap();
        let normal: LengthDist = "normal:5,100".parse().unwrap();
        for _ in 0..1000 {
            assert!((10..=20).contains(&uniform.sample(&mut rng)));
            assert!(normal.sample(&mut rng) >= 1);
        }
        assert_eq!(LengthDist::Fixed(42).sample(&mut rng), 42);
    }

    #[test]
    fn normal_samples_center_on_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d: LengthDist = "normal:350,50".parse().unwrap();
        let n = 5000;
        let mean = (0..n).map(|_| f64::from(d.sample(&mut rng))).sum::<f64>() / f64::from(n);
        assert!((mean - 350.0).abs() < 5.0, "mean {mean}");
    }
}
