//! A run's metrics, in the Prometheus text format, pushed to a Pushgateway.
//!
//! The jobs are batch jobs: nothing stays up to be scraped, so each run pushes
//! what it did when `PUSHGATEWAY_URL` is set (`deploy/monitoring/` has the alert
//! rules that read these series). Each run pushes with `POST`, which replaces
//! only the series it sends within its group (`job`, plus `shard` for silver
//! or `mode` for bronze's audit): a failed run sends its exit code but not
//! `robson_lake_last_success_timestamp_seconds`, so the time of the last success
//! survives the failure and the staleness alerts can count from it.
//!
//! A push that fails, or a `PUSHGATEWAY_URL` that is not a URL, is a warning,
//! never a failed run: the data is fine, and the staleness and "metrics
//! absent" alerts fire anyway when pushes stop arriving.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::{ConfigError, Problem};

/// The variable naming the Pushgateway (`http://pushgateway.monitoring:9091`).
pub const PUSHGATEWAY_URL: &str = "PUSHGATEWAY_URL";

/// How long a push may take before it is given up (with a warning).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The metrics of one run, named `robson_lake_<name>`, every series labelled
/// with the job.
#[derive(Debug)]
pub struct RunMetrics {
    job: &'static str,
    group: Vec<(&'static str, String)>,
    registry: Registry,
    families: Vec<(&'static str, Family<Labels, FloatGauge>)>,
}

impl RunMetrics {
    /// Metrics of a run of `job`, pushed to the group `job` + `group` (for
    /// example `[("shard", "0")]`): runs of one group replace each other's
    /// series, other groups are untouched.
    pub fn new(job: &'static str, group: &[(&'static str, String)]) -> Self {
        Self {
            job,
            group: group.to_vec(),
            registry: Registry::with_prefix("robson_lake"),
            families: Vec::new(),
        }
    }

    /// Sets gauge `name` (described by `help`) for these extra labels.
    pub fn set(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = match self.families.iter().find(|(n, _)| *n == name) {
            Some((_, f)) => f.clone(),
            None => {
                let f = Family::<Labels, FloatGauge>::default();
                self.registry.register(name, help, f.clone());
                self.families.push((name, f.clone()));
                f
            }
        };
        let mut all: Labels = vec![("job".into(), self.job.into())];
        all.extend(self.group.iter().map(|(k, v)| ((*k).into(), v.clone())));
        all.extend(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        family.get_or_create(&all).set(value);
    }

    /// Sets the series every run has: when it ended, how long it took, its exit
    /// code, its peak memory, and — only if it succeeded — the time of the last
    /// success.
    pub fn set_run(&mut self, finished: chrono::DateTime<chrono::Utc>, seconds: f64, exit: u8) {
        let at = finished.timestamp_millis() as f64 / 1000.0;
        self.set(
            "run_finished_timestamp_seconds",
            "When the job's latest run ended.",
            &[],
            at,
        );
        self.set(
            "run_duration_seconds",
            "Wall time of the latest run.",
            &[],
            seconds,
        );
        self.set(
            "run_exit_code",
            "Exit code of the latest run (SPEC §8: 0 ok, 1 failure, 2 configuration, 3 quality, 4 busy).",
            &[],
            f64::from(exit),
        );
        if let Some(rss) = crate::telemetry::peak_rss_bytes() {
            self.set(
                "run_peak_rss_bytes",
                "Peak resident memory of the latest run.",
                &[],
                rss as f64,
            );
        }
        if exit == 0 {
            self.set(
                "last_success_timestamp_seconds",
                "When a run of the job last succeeded.",
                &[],
                at,
            );
        }
    }

    /// The text exposition of every series set.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Pushes to `gateway` if one is configured. A failure is logged, never
    /// returned: `false` tells the caller to skip its other groups (one
    /// timeout per run, not one per group).
    pub async fn push(&self, gateway: Option<&Pushgateway>) -> bool {
        let Some(gateway) = gateway else { return true };
        match gateway.push(self).await {
            Ok(()) => {
                tracing::debug!(url = %gateway.group_url(self), "Pushed the run's metrics");
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "Could not push the run's metrics to {PUSHGATEWAY_URL}; check that the Pushgateway is reachable (the staleness alerts will fire if pushes keep failing)"
                );
                false
            }
        }
    }
}

/// A Pushgateway the runs push to.
#[derive(Debug, Clone)]
pub struct Pushgateway {
    base: url::Url,
    client: reqwest::Client,
}

/// Two gateways are the same when they have the same address.
impl PartialEq for Pushgateway {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
    }
}

impl Pushgateway {
    /// Reads `PUSHGATEWAY_URL` from the process environment: `None` when unset.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_value(std::env::var(PUSHGATEWAY_URL).ok().as_deref())
    }

    /// [`Pushgateway::from_env`], with a bad value a warning (naming the
    /// variable and the fix) and no pushes: metrics must never stop a data job
    /// (the "metrics absent" alerts notice the silence).
    pub fn from_env_or_warn() -> Option<Self> {
        Self::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; this run pushes no metrics");
            None
        })
    }

    /// Validates a `PUSHGATEWAY_URL` value (`None` or blank: no pushes).
    pub fn from_value(value: Option<&str>) -> Result<Option<Self>, ConfigError> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let bad = |why: &str| ConfigError {
            problems: vec![Problem {
                variable: PUSHGATEWAY_URL,
                message: format!(
                    "is {v:?}, {why}: set it to the Pushgateway's http(s) address, e.g. http://pushgateway.monitoring:9091, or unset it"
                ),
            }],
        };
        let base = url::Url::parse(v).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad("not an http(s) URL with a host"));
        }
        let client = reqwest::Client::builder()
            .timeout(PUSH_TIMEOUT)
            .build()
            .map_err(|e| bad(&format!("no HTTP client for it ({e})")))?;
        Ok(Some(Self { base, client }))
    }

    /// `<base>/metrics/job/<job>/<label>/<value>…`, each segment escaped.
    fn group_url(&self, m: &RunMetrics) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["metrics", "job", m.job]);
            for (k, v) in &m.group {
                segments.extend([*k, v.as_str()]);
            }
        }
        url
    }

    async fn push(&self, m: &RunMetrics) -> Result<(), String> {
        let url = self.group_url(m);
        let response = self
            .client
            .post(url.clone())
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(m.render())
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(format!("POST {url}: {status} {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_does_not_move_the_last_success() {
        let now = chrono::Utc::now();
        let mut ok = RunMetrics::new("bronze-ingest", &[("mode", "ingest".into())]);
        ok.set_run(now, 1.5, 0);
        ok.set(
            "bronze_rows",
            "Rows.",
            &[("dataset", "bronze/events")],
            42.0,
        );
        let text = ok.render();
        assert!(
            text.contains(
                "robson_lake_last_success_timestamp_seconds{job=\"bronze-ingest\",mode=\"ingest\"}"
            ),
            "{text}"
        );
        assert!(text.contains("robson_lake_bronze_rows{job=\"bronze-ingest\",mode=\"ingest\",dataset=\"bronze/events\"} 42.0"), "{text}");
        let mut failed = RunMetrics::new("bronze-ingest", &[]);
        failed.set_run(now, 1.5, 1);
        let text = failed.render();
        assert!(
            text.contains("robson_lake_run_exit_code{job=\"bronze-ingest\"} 1.0"),
            "{text}"
        );
        assert!(!text.contains("last_success"), "{text}");
    }

    #[test]
    fn the_url_is_checked_and_the_group_escaped() {
        assert!(Pushgateway::from_value(None).unwrap().is_none());
        assert!(Pushgateway::from_value(Some(" ")).unwrap().is_none());
        let err = Pushgateway::from_value(Some("pushgateway:9091")).unwrap_err();
        assert!(err.to_string().contains("PUSHGATEWAY_URL"), "{err}");
        assert!(Pushgateway::from_value(Some("ftp://x")).is_err());
        let g = Pushgateway::from_value(Some("http://pg.monitoring:9091/"))
            .unwrap()
            .unwrap();
        let m = RunMetrics::new("silver-transform", &[("shard", "0".into())]);
        assert_eq!(
            g.group_url(&m).as_str(),
            "http://pg.monitoring:9091/metrics/job/silver-transform/shard/0"
        );
    }
}
