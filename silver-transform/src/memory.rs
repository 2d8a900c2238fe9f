//! The memory budget of a run (`SILVER_MEMORY_MB`, SPEC §10) and the model
//! that turns what a run holds into bytes (docs/silver.md, "Memory and speed",
//! where the constants are measured).
//!
//! The budget sizes what a run can choose: the bronze it decodes at a time
//! (the fold windows, [`Budget::window_rows`]). What it cannot choose, the
//! executions of the partitions it recomputes, is counted after the fold and
//! compared with the budget ([`Held`]): a run that held more than its budget
//! says so, with the fix (more shards), before the next larger one meets the
//! pod's limit.

use serde::Serialize;

// The model's constants are an upper envelope of the peak RSS measured on
// the image's binary (jemalloc, release build) for 0.1 M, 0.3 M and 1 M events
// in one UTC day and 1 M events over 30 days, with windows of 50 000 rows and
// the default: docs/silver.md, "Memory and speed", has the table. It
// overestimates by up to a third, never under (a test checks both).

/// Bytes per bronze row of a fold window in flight (decoded columns, the
/// sort vector, the window's partial folds; `payload_json` is never read).
pub const ROW_BYTES: u64 = 350;
/// Bytes per execution held until its partition is published (its fold, its
/// key, its slot in the table, its row in the partition lists, its index entry).
pub const EXECUTION_BYTES: u64 = 600;
/// Bytes per event of a day folded in several windows (its id, held to check
/// that no event is in two windows).
pub const DAY_EVENT_BYTES: u64 = 70;
/// Bytes per key index entry loaded and not folded ([`crate::index::KeyIndex`]).
pub const KEY_BYTES: u64 = 80;
/// What a run holds besides those: the runtime, buffers of the Parquet
/// writers and readers, the manifests.
pub const BASE_BYTES: u64 = 30 << 20;

/// The budget when neither `SILVER_MEMORY_MB` nor a cgroup limit gives one:
/// the deployed pod's limit.
pub const DEFAULT_MB: u64 = 512;
/// Share of the budget the fold windows in flight may fill: the rest is for
/// the executions, the index and the writers.
const WINDOW_SHARE: u64 = 4;
/// Smallest fold window, in rows (a window of a few rows still folds, but
/// each one reads at least one row group).
pub const MIN_WINDOW_ROWS: u64 = 1_000;
/// Most key-hash passes a fold runs in: each reads its days of bronze again,
/// so a budget far too small for the input gets slow rather than unbounded
/// passes (and says it is over budget).
pub const MAX_PASSES: u32 = 64;
/// Of a cgroup limit, the share the budget takes (the allocator keeps some
/// freed memory, and the kernel counts the page cache of the process's files).
const LIMIT_SHARE_PERCENT: u64 = 80;

/// Where the budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `SILVER_MEMORY_MB` (or `--memory-mb`).
    Setting,
    /// 80 % of the container's cgroup memory limit.
    Cgroup,
    /// [`DEFAULT_MB`].
    Default,
}

/// The memory a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// MiB.
    pub mb: u64,
    /// Where it came from.
    pub source: Source,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            mb: DEFAULT_MB,
            source: Source::Default,
        }
    }
}

impl Budget {
    /// The budget: `setting` (MiB) if given, else 80 % of the cgroup limit
    /// the process runs under (cgroup v2 `memory.max`, v1
    /// `memory.limit_in_bytes`), else [`DEFAULT_MB`].
    pub fn detect(setting: Option<u64>) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let limit = read("/sys/fs/cgroup/memory.max")
            .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
            .and_then(|s| cgroup_limit(&s));
        if let Some(mb) = setting {
            if let Some(bytes) = limit.filter(|b| mb > b >> 20) {
                tracing::warn!(
                    budget_mb = mb,
                    limit_mb = bytes >> 20,
                    "SILVER_MEMORY_MB is above the container's memory limit: a run that uses its \
                     budget is killed first; set it to at most 80 % of the limit, or unset it"
                );
            }
            return Self {
                mb,
                source: Source::Setting,
            };
        }
        match limit {
            Some(bytes) => Self {
                mb: (bytes / 100 * LIMIT_SHARE_PERCENT) >> 20,
                source: Source::Cgroup,
            },
            None => Self::default(),
        }
    }

    /// Bytes.
    pub fn bytes(&self) -> u64 {
        self.mb.saturating_mul(1 << 20)
    }

    /// Bronze rows per fold window so that `parallel` windows in flight fill
    /// a quarter of the budget.
    pub fn window_rows(&self, parallel: usize) -> u64 {
        (self.bytes() / WINDOW_SHARE / ROW_BYTES / parallel.max(1) as u64).max(MIN_WINDOW_ROWS)
    }

    /// Key-hash passes ([`crate::fold::KeyFilter::Part`]) a fold of about
    /// `c.executions` executions needs: the fewest whose largest fits the
    /// budget by the model ([`Held`]). A pass holds its share of the
    /// executions and of the largest windowed day's event ids; every pass
    /// holds the base, the windows in flight and the other index entries, and
    /// the earlier passes' executions as index entries (their rows wait on
    /// local disk, [`crate::spill`]), or one pass's worth of those when they
    /// are written out as the passes end ([`Counts::index_streamed`]). [`MAX_PASSES`] if none fits; 1 if what
    /// every pass holds is over the budget alone (a window too large for
    /// it: passes cannot help, and the run says it is over budget).
    pub fn passes(&self, c: Counts) -> u32 {
        let fixed = [
            c.window_rows
                .saturating_mul(c.parallel as u64)
                .saturating_mul(ROW_BYTES),
            c.index_keys.saturating_mul(KEY_BYTES),
        ]
        .into_iter()
        .fold(BASE_BYTES, u64::saturating_add);
        let held = c
            .executions
            .saturating_mul(EXECUTION_BYTES)
            .saturating_add(c.windowed_day_events.saturating_mul(DAY_EVENT_BYTES));
        let parked = c.executions.saturating_mul(KEY_BYTES);
        if fixed >= self.bytes() {
            return 1;
        }
        (1..=MAX_PASSES)
            .find(|p| {
                let p = u64::from(*p);
                let parked = if c.index_streamed {
                    parked / p
                } else {
                    parked / p * (p - 1)
                };
                let peak = fixed
                    .saturating_add(parked)
                    .saturating_add(held.div_ceil(p));
                peak <= self.bytes()
            })
            .unwrap_or(MAX_PASSES)
    }
}

/// A cgroup memory limit file's value in bytes; `None` for no limit
/// (`max`, or v1's page-rounded `i64::MAX`).
pub fn cgroup_limit(contents: &str) -> Option<u64> {
    let v: u64 = contents.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// What a run held at its largest, by the model, against its budget (in the
/// run report as `memory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Held {
    /// The budget, MiB.
    pub budget_mb: u64,
    /// Where the budget came from.
    pub budget_source: Option<Source>,
    /// Bronze rows per fold window.
    pub fold_window_rows: u64,
    /// Windows (or days) in flight.
    pub parallel_days: u64,
    /// Key-hash passes of the fold (1: one pass).
    pub passes: u32,
    /// Executions held until published (of the largest pass).
    pub executions: u64,
    /// Key index entries held besides those of the executions.
    pub index_keys: u64,
    /// Events of the largest day folded in windows (of one pass).
    pub windowed_day_events: u64,
    /// The model's peak, MiB: base + windows in flight + executions + the
    /// largest windowed day's events + other index entries.
    pub model_peak_mb: u64,
}

/// What a run held, for [`Held::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Bronze rows per fold window.
    pub window_rows: u64,
    /// Windows in flight.
    pub parallel: usize,
    /// Executions held until published (of one pass, for [`Held::new`]).
    pub executions: u64,
    /// Events of the largest day folded in windows.
    pub windowed_day_events: u64,
    /// Key index entries held besides those of the executions.
    pub index_keys: u64,
    /// The earlier passes' index entries are written out as the passes end
    /// (a rebuilt index, [`crate::segments::Rebuild`]): a pass holds at most
    /// one pass's worth of them, not all.
    pub index_streamed: bool,
}

impl Held {
    /// What a run that held `c` in the largest of its `passes` needed, by the model.
    pub fn new(budget: Budget, c: Counts, passes: u32) -> Self {
        let peak = [
            c.window_rows
                .saturating_mul(c.parallel as u64)
                .saturating_mul(ROW_BYTES),
            c.executions.saturating_mul(EXECUTION_BYTES),
            c.windowed_day_events.saturating_mul(DAY_EVENT_BYTES),
            c.index_keys.saturating_mul(KEY_BYTES),
        ]
        .into_iter()
        .fold(BASE_BYTES, u64::saturating_add);
        Self {
            budget_mb: budget.mb,
            budget_source: Some(budget.source),
            fold_window_rows: c.window_rows,
            parallel_days: c.parallel as u64,
            passes,
            executions: c.executions,
            index_keys: c.index_keys,
            windowed_day_events: c.windowed_day_events,
            model_peak_mb: peak.div_ceil(1 << 20),
        }
    }

    /// The budget alone (a run that held nothing yet, or nothing at all).
    pub fn of_budget(budget: Budget) -> Self {
        Self {
            budget_mb: budget.mb,
            budget_source: Some(budget.source),
            ..Self::default()
        }
    }

    /// Whether the model says the run needed more than its budget.
    pub fn over_budget(&self) -> bool {
        self.model_peak_mb > self.budget_mb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files() {
        assert_eq!(cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712\n"), None, "v1 unlimited");
        assert_eq!(cgroup_limit(""), None);
    }

    #[test]
    fn a_setting_wins_and_sizes_the_windows() {
        let b = Budget::detect(Some(256));
        assert_eq!(
            b,
            Budget {
                mb: 256,
                source: Source::Setting
            }
        );
        // A quarter of 256 MiB over two windows of 350-byte rows.
        assert_eq!(b.window_rows(2), (256 << 20) / 4 / 350 / 2);
        assert_eq!(Budget::detect(Some(1)).window_rows(8), MIN_WINDOW_ROWS);
        // Without a cgroup limit (512 MiB) about the windows runs had before
        // (200 000 rows); in the deployed pod (512 Mi: 409 MiB) ~153 000.
        let d = Budget::default().window_rows(2);
        assert!((150_000..=200_000).contains(&d), "{d}");
    }

    #[test]
    fn the_model_adds_what_a_run_holds() {
        let b = Budget {
            mb: 256,
            source: Source::Setting,
        };
        let c = Counts {
            window_rows: 100_000,
            parallel: 2,
            executions: 1_000,
            windowed_day_events: 10_000,
            index_keys: 10_000,
            index_streamed: false,
        };
        let small = Held::new(b, c, 1);
        let bytes: u64 = (30 << 20) + 100_000 * 2 * 350 + 1_000 * 600 + 10_000 * 70 + 10_000 * 80;
        assert_eq!(small.model_peak_mb, bytes.div_ceil(1 << 20));
        assert!(!small.over_budget());
        // A day of 3.3 M executions does not fit 256 MiB.
        let big = Counts {
            executions: 3_300_000,
            windowed_day_events: 10_000_000,
            ..c
        };
        assert!(Held::new(b, big, 1).over_budget());
    }

    #[test]
    fn a_fold_too_large_for_the_budget_runs_in_passes_that_fit() {
        let b = Budget {
            mb: 256,
            source: Source::Setting,
        };
        let window_rows = b.window_rows(2);
        // One UTC day of 1 M events (329 116 executions, measured).
        let day = Counts {
            window_rows,
            parallel: 2,
            executions: 329_116,
            windowed_day_events: 1_000_000,
            index_keys: 0,
            index_streamed: false,
        };
        let passes = b.passes(day);
        assert_eq!(passes, 2);
        let one = Counts {
            executions: day.executions.div_ceil(u64::from(passes)),
            windowed_day_events: day.windowed_day_events.div_ceil(u64::from(passes)),
            index_keys: day.executions - day.executions.div_ceil(u64::from(passes)),
            ..day
        };
        assert!(
            !Held::new(b, one, passes).over_budget(),
            "{:?}",
            Held::new(b, one, passes)
        );
        // The deployed budget (409 MiB) folds the same day in one pass, and a
        // month of small days too.
        let pod = Budget { mb: 409, ..b };
        assert_eq!(
            pod.passes(Counts {
                window_rows: pod.window_rows(2),
                ..day
            }),
            1
        );
        // Ten times the day takes more passes at 512 MiB; at 256 its index
        // entries alone nearly fill the budget: as many passes as allowed.
        let big = Counts {
            executions: 3_291_160,
            windowed_day_events: 10_000_000,
            ..day
        };
        let more = Budget { mb: 512, ..b }.passes(big);
        assert!((10..MAX_PASSES).contains(&more), "{more}");
        assert_eq!(b.passes(big), MAX_PASSES);
        // Windows larger than the budget: passes would not help.
        let wide = Counts {
            window_rows: 1_000_000,
            ..day
        };
        assert_eq!(Budget { mb: 300, ..b }.passes(wide), 1);
    }

    /// The envelope holds over what docs/silver.md measured (peak RSS, MiB),
    /// and overestimates by at most a third.
    #[test]
    fn the_model_covers_the_measured_peaks() {
        let b = Budget::default();
        // (window rows, parallel, executions, windowed day events, measured MiB)
        for (w, p, e, d, measured) in [
            (100_000, 1, 32_957, 0, 71),
            (150_000, 2, 98_595, 300_000, 171),
            (166_667, 2, 330_241, 943_035, 332),
            (50_000, 2, 330_241, 943_035, 309),
            (33_333, 2, 329_116, 0, 203),
        ] {
            let c = Counts {
                window_rows: w,
                parallel: p,
                executions: e,
                windowed_day_events: d,
                index_keys: 0,
                index_streamed: false,
            };
            let model = Held::new(b, c, 1).model_peak_mb;
            assert!(
                model >= measured && model * 3 <= measured * 4,
                "{c:?}: model {model}, measured {measured}"
            );
        }
    }
}
