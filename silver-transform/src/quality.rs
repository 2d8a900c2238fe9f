//! The silver data-quality rules of SPEC §7.
//!
//! Every execution is checked against every rule. One that breaks any rule goes to
//! `silver/_quarantine/stop_executions/` instead of silver, one quarantine row per
//! broken rule with the rule's name in the `violation` column, so nothing vanishes
//! silently and `GROUP BY violation` counts per rule. The run fails with exit 3
//! when the share of violating executions exceeds the configured threshold.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::fold::{Acc, Dec};
use crate::key::{EventType, STATUSES};

/// `slippage_pct` bounds, ±50 at scale 4.
const SLIPPAGE_LIMIT: i128 = 50 * 10_000;

/// A silver quality rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `status` is one of PENDING, SUBMITTED, EXECUTED, FAILED, BLOCKED.
    StatusInEnum,
    /// `slippage_pct` is NULL or within [-50, 50].
    SlippageInRange,
    /// An EXECUTED execution has a `fill_price`.
    ExecutedHasFillPrice,
    /// All events of an execution carry the same `client_id`.
    SingleClient,
    /// `symbol` matches `^[A-Z0-9]{2,20}$`.
    SymbolFormat,
    /// Not a check of [`check`]: later events of an execution that began
    /// before the retention horizon (frozen, its first events gone), folded
    /// on their own from the horizon on and quarantined in the frozen
    /// execution's partition ([`crate::incremental`]).
    AfterRetentionHorizon,
}

impl Rule {
    /// Every rule, in check order.
    pub const ALL: [Rule; 6] = [
        Self::StatusInEnum,
        Self::SlippageInRange,
        Self::ExecutedHasFillPrice,
        Self::SingleClient,
        Self::SymbolFormat,
        Self::AfterRetentionHorizon,
    ];

    /// The name written to the `violation` column.
    pub fn name(self) -> &'static str {
        match self {
            Self::StatusInEnum => "status_in_enum",
            Self::SlippageInRange => "slippage_in_range",
            Self::ExecutedHasFillPrice => "executed_has_fill_price",
            Self::SingleClient => "single_client",
            Self::SymbolFormat => "symbol_format",
            Self::AfterRetentionHorizon => "after_retention_horizon",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `s` matches `^[A-Z0-9]{2,20}$`.
pub fn symbol_ok(s: &str) -> bool {
    (2..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The rules `status`, `slippage_pct` (scale 4), `fill_price`, … break.
pub fn check_values(
    status: &str,
    slippage_pct: Option<i128>,
    fill_price: Option<i128>,
    multi_client: bool,
    symbol: &str,
) -> Vec<Rule> {
    let mut broken = Vec::new();
    if !STATUSES.contains(&status) {
        broken.push(Rule::StatusInEnum);
    }
    if slippage_pct.is_some_and(|s| !(-SLIPPAGE_LIMIT..=SLIPPAGE_LIMIT).contains(&s)) {
        broken.push(Rule::SlippageInRange);
    }
    if status == EventType::Executed.status() && fill_price.is_none() {
        broken.push(Rule::ExecutedHasFillPrice);
    }
    if multi_client {
        broken.push(Rule::SingleClient);
    }
    if !symbol_ok(symbol) {
        broken.push(Rule::SymbolFormat);
    }
    broken
}

/// The rules an execution breaks (empty: it belongs in silver).
pub fn check(acc: &Acc) -> Vec<Rule> {
    check_values(
        acc.status(),
        acc.dec(Dec::SlippagePct),
        acc.dec(Dec::FillPrice),
        acc.multi_client,
        acc.symbol.as_str(),
    )
}

/// The quality outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QualityReport {
    /// Executions checked (silver plus quarantined).
    pub executions: u64,
    /// Executions that broke at least one rule.
    pub violating_executions: u64,
    /// Broken rules per rule name (an execution may break several).
    pub violations_per_rule: BTreeMap<&'static str, u64>,
    /// `violating_executions / executions` (0 when nothing was checked).
    pub violation_ratio: f64,
    /// The configured threshold.
    pub max_violation_ratio: f64,
    /// Whether the ratio exceeds the threshold (the run exits 3).
    pub breached: bool,
}

impl QualityReport {
    /// An empty report for a threshold.
    pub fn new(max_violation_ratio: f64) -> Self {
        Self {
            max_violation_ratio,
            violations_per_rule: Rule::ALL.iter().map(|r| (r.name(), 0)).collect(),
            ..Default::default()
        }
    }

    /// Records one checked execution.
    pub fn record(&mut self, broken: &[Rule]) {
        self.executions += 1;
        if !broken.is_empty() {
            self.violating_executions += 1;
        }
        for r in broken {
            *self.violations_per_rule.entry(r.name()).or_default() += 1;
        }
    }

    /// Computes the ratio and the verdict.
    pub fn finish(&mut self) {
        self.violation_ratio = if self.executions == 0 {
            0.0
        } else {
            self.violating_executions as f64 / self.executions as f64
        };
        self.breached = self.violation_ratio > self.max_violation_ratio;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_fires_alone() {
        let ok = || check_values("EXECUTED", Some(12_345), Some(1), false, "BTCUSDC");
        assert!(ok().is_empty());
        assert_eq!(
            check_values("DONE", None, None, false, "BTCUSDC"),
            vec![Rule::StatusInEnum]
        );
        assert_eq!(
            check_values("FAILED", Some(500_001), None, false, "BTCUSDC"),
            vec![Rule::SlippageInRange]
        );
        assert!(check_values("FAILED", Some(-500_000), None, false, "ETHUSDC").is_empty());
        assert_eq!(
            check_values("EXECUTED", None, None, false, "BTCUSDC"),
            vec![Rule::ExecutedHasFillPrice]
        );
        assert_eq!(
            check_values("PENDING", None, None, true, "BTCUSDC"),
            vec![Rule::SingleClient]
        );
        for bad in [
            "btcusdc",
            "B",
            "BTC-USDC",
            "ABCDEFGHIJKLMNOPQRSTU",
            "ÄBC",
            "",
        ] {
            assert_eq!(
                check_values("PENDING", None, None, false, bad),
                vec![Rule::SymbolFormat],
                "{bad}"
            );
        }
        assert!(symbol_ok("1INCHUSDC") && symbol_ok("AB") && symbol_ok("ABCDEFGHIJKLMNOPQRST"));
    }

    #[test]
    fn ratio_and_breach() {
        let mut q = QualityReport::new(0.01);
        for i in 0..200 {
            q.record(if i < 2 {
                &[Rule::SymbolFormat, Rule::SingleClient]
            } else {
                &[]
            });
        }
        q.finish();
        assert_eq!(q.violating_executions, 2);
        assert_eq!(q.violations_per_rule["symbol_format"], 2);
        assert!(!q.breached, "exactly 1 % is not above 1 %");
        q.record(&[Rule::SlippageInRange]);
        q.finish();
        assert!(q.breached);
    }
}
