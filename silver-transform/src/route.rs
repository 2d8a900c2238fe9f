//! Checks recomputed executions (SPEC §7) and routes each to its partition's
//! silver or quarantine rows, counting what the run report says about them.
//!
//! A fold in several key-hash passes ([`crate::spill`]) routes each pass's
//! executions as the pass ends, so one [`Routing`] accumulates over the passes:
//! the quality counts, the summary and the lineage are the run's, whatever the
//! number of passes.

use std::collections::{BTreeMap, BTreeSet};

use crate::fold::Folded;
use crate::key::PartitionKey;
use crate::publish::PartitionRows;
use crate::quality::{self, QualityReport};
use crate::summary::SummaryBuilder;

/// What routing counted so far.
#[derive(Debug)]
pub struct Routing {
    /// Executions checked and rules broken (the threshold is the caller's).
    pub quality: QualityReport,
    /// The summary of the executions routed to silver.
    pub summary: SummaryBuilder,
    /// Bronze batches each partition's rows came from (lineage for the manifest).
    pub batches: BTreeMap<PartitionKey, BTreeSet<u64>>,
    /// Silver rows routed.
    pub silver_rows: u64,
    /// Quarantine rows routed (one per broken rule).
    pub quarantine_rows: u64,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            quality: QualityReport::new(0.0),
            summary: SummaryBuilder::default(),
            batches: BTreeMap::new(),
            silver_rows: 0,
            quarantine_rows: 0,
        }
    }
}

impl Routing {
    /// Checks every execution of `executions` whose partition `keep` accepts
    /// (executions of other shards' partitions were only folded to find that
    /// out) and routes it: the rows by partition, each sorted into file order.
    pub fn route<'a>(
        &mut self,
        executions: &'a Folded,
        keep: impl Fn(&PartitionKey) -> bool,
    ) -> BTreeMap<PartitionKey, PartitionRows<'a>> {
        let mut rows: BTreeMap<PartitionKey, PartitionRows<'a>> = BTreeMap::new();
        for (key, acc) in executions.iter() {
            let p = acc.partition();
            if !keep(&p) {
                continue;
            }
            let part = rows.entry(p).or_default();
            self.batches
                .entry(p)
                .or_default()
                .extend(acc.batches.iter());
            let broken = quality::check(acc);
            self.quality.record(&broken);
            if broken.is_empty() {
                self.summary.add(acc);
                self.silver_rows += 1;
                part.silver.push((key, acc));
            } else {
                self.quarantine_rows += broken.len() as u64;
                part.quarantine
                    .extend(broken.into_iter().map(|r| ((key, acc), r)));
            }
        }
        for part in rows.values_mut() {
            part.sort();
        }
        rows
    }
}
