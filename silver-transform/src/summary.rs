//! Summary statistics of the executions a run wrote to silver (SPEC §7).
//!
//! Slippage statistics are exact: values are the stored DECIMAL(10,4) integers,
//! the average is the exact quotient rounded half away from zero at 8 decimals
//! (sum and count are reported too, so it can be recomputed), the median is the
//! exact midpoint of the middle values and p95 is the nearest-rank value
//! (DuckDB's `quantile_disc(0.95)`). No float touches them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fold::{Acc, Dec};

/// How many symbols the summary lists.
pub const TOP_SYMBOLS: usize = 10;

/// Scale of `slippage_pct`.
const SLIPPAGE_SCALE: u32 = 4;

/// Statistics of the silver rows of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Executions written to silver by the run.
    pub executions: u64,
    /// Executions per status.
    pub status_distribution: BTreeMap<String, u64>,
    /// Slippage statistics over executions with a `slippage_pct`.
    pub slippage_pct: SlippageStats,
    /// The most frequent symbols (count descending, then name).
    pub top_symbols: Vec<(String, u64)>,
    /// Executions per client.
    pub executions_per_client: BTreeMap<i64, u64>,
}

/// Exact slippage statistics, as decimal strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SlippageStats {
    /// Values counted.
    pub count: u64,
    /// Exact sum.
    pub sum: Option<String>,
    /// Average, rounded half away from zero to 8 decimals.
    pub avg: Option<String>,
    /// Median (midpoint of the two middle values when the count is even).
    pub median: Option<String>,
    /// 95th percentile, nearest rank.
    pub p95: Option<String>,
}

/// Accumulates a [`Summary`].
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    executions: u64,
    statuses: BTreeMap<&'static str, u64>,
    slippage: Vec<i128>,
    symbols: BTreeMap<Box<str>, u64>,
    clients: BTreeMap<i64, u64>,
}

impl SummaryBuilder {
    /// Counts one execution written to silver.
    pub fn add(&mut self, acc: &Acc) {
        self.executions += 1;
        *self.statuses.entry(acc.status()).or_default() += 1;
        if let Some(s) = acc.dec(Dec::SlippagePct) {
            self.slippage.push(s);
        }
        match self.symbols.get_mut(acc.symbol.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.symbols.insert(acc.symbol.as_str().into(), 1);
            }
        }
        *self.clients.entry(acc.client_id).or_default() += 1;
    }

    /// The finished summary.
    pub fn finish(mut self) -> Summary {
        let mut top: Vec<(String, u64)> = self
            .symbols
            .into_iter()
            .map(|(s, n)| (s.into(), n))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_SYMBOLS);
        Summary {
            executions: self.executions,
            status_distribution: self
                .statuses
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            slippage_pct: slippage_stats(&mut self.slippage),
            top_symbols: top,
            executions_per_client: self.clients,
        }
    }
}

/// Exact statistics of decimal values at scale 4.
pub fn slippage_stats(values: &mut [i128]) -> SlippageStats {
    let n = values.len();
    if n == 0 {
        return SlippageStats::default();
    }
    values.sort_unstable();
    let sum: i128 = values.iter().sum();
    let median = if !n.is_multiple_of(2) {
        format_decimal(values[n / 2], SLIPPAGE_SCALE)
    } else {
        // (a + b) / 2 at scale 4 is (a + b) * 5 at scale 5: exact.
        format_decimal((values[n / 2 - 1] + values[n / 2]) * 5, SLIPPAGE_SCALE + 1)
    };
    // Nearest rank: the smallest value with at least 95 % of values at or below it.
    let rank = (95 * n).div_ceil(100).max(1);
    SlippageStats {
        count: n as u64,
        sum: Some(format_decimal(sum, SLIPPAGE_SCALE)),
        avg: Some(format_decimal(
            div_round(sum * 10_000, n as i128),
            SLIPPAGE_SCALE + 4,
        )),
        median: Some(median),
        p95: Some(format_decimal(values[rank - 1], SLIPPAGE_SCALE)),
    }
}

/// `a / b` rounded half away from zero (`b > 0`).
fn div_round(a: i128, b: i128) -> i128 {
    let q = a / b;
    let r = a % b;
    if 2 * r.abs() >= b { q + a.signum() } else { q }
}

/// An integer at `scale` as a decimal string (`-1.2300` for -12300 at scale 4).
pub fn format_decimal(v: i128, scale: u32) -> String {
    let p = 10i128.pow(scale);
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let p = p.unsigned_abs();
    if scale == 0 {
        return format!("{sign}{a}");
    }
    format!("{sign}{}.{:0width$}", a / p, a % p, width = scale as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_format_exactly() {
        assert_eq!(format_decimal(-12_300, 4), "-1.2300");
        assert_eq!(format_decimal(5, 4), "0.0005");
        assert_eq!(format_decimal(-5, 4), "-0.0005");
        assert_eq!(format_decimal(0, 8), "0.00000000");
        assert_eq!(
            format_decimal(i128::from(i64::MAX), 0),
            i64::MAX.to_string()
        );
    }

    #[test]
    fn slippage_statistics_are_exact() {
        // 0.0001, 0.0002, 0.0004: avg 0.000233333… → 0.00023333
        let s = slippage_stats(&mut [4, 1, 2]);
        assert_eq!(s.avg.as_deref(), Some("0.00023333"));
        assert_eq!(s.median.as_deref(), Some("0.0002"));
        assert_eq!(s.sum.as_deref(), Some("0.0007"));
        // Even count: the median is the exact midpoint.
        let s = slippage_stats(&mut [1, 2]);
        assert_eq!(s.median.as_deref(), Some("0.00015"));
        assert_eq!(s.avg.as_deref(), Some("0.00015000"));
        // Rounding half away from zero, negative values.
        let s = slippage_stats(&mut [-1, -2]);
        assert_eq!(s.avg.as_deref(), Some("-0.00015000"));
        let s = slippage_stats(&mut [-2, 0, 0]);
        assert_eq!(s.avg.as_deref(), Some("-0.00006667"));
        // p95 by nearest rank over 1..=100 (×0.0001) is the 95th value.
        let mut v: Vec<i128> = (1..=100).rev().collect();
        let s = slippage_stats(&mut v);
        assert_eq!(s.p95.as_deref(), Some("0.0095"));
        assert_eq!(s.count, 100);
        let s = slippage_stats(&mut [7]);
        assert_eq!(s.p95.as_deref(), Some("0.0007"));
        assert_eq!(slippage_stats(&mut []), SlippageStats::default());
    }
}
