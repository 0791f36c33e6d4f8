//! Prices per million tokens and the cost of one run. Money is a decimal, never a float, so
//! sums over many small runs stay exact.

use hearth_protocol::TokenUsage;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::ModelConfig;

/// Money as integer nano-units of currency: exact sums in SQL and in counters, nine decimals
/// far below any provider's price granularity.
pub const NANO_SCALE: u32 = 9;

pub fn to_nanos(amount: Decimal) -> i64 {
    let mut scaled = amount.round_dp(NANO_SCALE);
    scaled.rescale(NANO_SCALE);
    i64::try_from(scaled.mantissa()).unwrap_or(i64::MAX)
}

pub fn from_nanos(nanos: i64) -> Decimal {
    Decimal::new(nanos, NANO_SCALE).normalize()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Prices {
    pub input_per_mtok: Option<Decimal>,
    pub output_per_mtok: Option<Decimal>,
    /// Defaults to the input price when unset.
    pub cached_input_per_mtok: Option<Decimal>,
}

impl Prices {
    pub fn from_model(config: &ModelConfig) -> Self {
        Self {
            input_per_mtok: config.input_price_per_mtok,
            output_per_mtok: config.output_price_per_mtok,
            cached_input_per_mtok: config.cached_input_price_per_mtok,
        }
    }

    /// Prices from a package's `hearth.yaml`, which stores them as floats. A float's shortest
    /// decimal form is what the user wrote (`0.15`, not `0.1499999…`).
    pub fn from_floats(input: Option<f64>, output: Option<f64>) -> Self {
        let to_decimal = |v: f64| v.to_string().parse::<Decimal>().ok();
        Self {
            input_per_mtok: input.and_then(to_decimal),
            output_per_mtok: output.and_then(to_decimal),
            cached_input_per_mtok: None,
        }
    }

    /// The cost of `usage`, or `None` when the input or output price is unknown: an unknown
    /// cost must not read as free.
    pub fn cost(&self, usage: &TokenUsage) -> Option<Decimal> {
        let input = self.input_per_mtok?;
        let output = self.output_per_mtok?;
        let cached = self.cached_input_per_mtok.unwrap_or(input);
        let total = Decimal::from(usage.uncached_input_tokens()) * input
            + Decimal::from(usage.cached_input_tokens) * cached
            + Decimal::from(usage.output_tokens) * output;
        Some(total / Decimal::from(1_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn cached_tokens_use_their_own_price() {
        let prices = Prices {
            input_per_mtok: Some(d("0.15")),
            output_per_mtok: Some(d("0.6")),
            cached_input_per_mtok: Some(d("0.075")),
        };
        let usage =
            TokenUsage { input_tokens: 1_000, output_tokens: 500, cached_input_tokens: 400 };
        // 600 × 0.15 + 400 × 0.075 + 500 × 0.6 = 420, per million.
        assert_eq!(prices.cost(&usage), Some(d("0.00042")));
    }

    #[test]
    fn unknown_prices_give_no_cost_and_floats_keep_their_digits() {
        assert_eq!(Prices::default().cost(&TokenUsage::default()), None);
        let p = Prices::from_floats(Some(0.1), Some(3.0));
        assert_eq!(p.input_per_mtok, Some(d("0.1")));
        assert_eq!(p.output_per_mtok, Some(d("3")));
    }
}
