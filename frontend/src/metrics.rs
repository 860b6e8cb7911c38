//! The process's Prometheus recorder and the per-request latency metrics of the front ends.
//!
//! Names follow vLLM and SGLang under a `moeflow:` prefix so existing dashboards work with a
//! prefix change. The scheduler records the queue and KV metrics
//! (`moeflow:num_requests_running`, `moeflow:num_requests_waiting`,
//! `moeflow:kv_cache_usage_perc`, `moeflow:request_queue_time_seconds`) through the same
//! facade, and the workers their expert and all-to-all metrics; `GET /metrics` renders all of
//! them.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use moeflow_api::FinishReason;

/// Time from a request's arrival to its first generated token.
pub const TTFT: &str = "moeflow:time_to_first_token_seconds";
/// Time between consecutive tokens of one request.
pub const ITL: &str = "moeflow:inter_token_latency_seconds";
/// Time from arrival to the last event of a request.
pub const E2E: &str = "moeflow:e2e_request_latency_seconds";
/// Prompt tokens of finished requests.
pub const PROMPT_TOKENS: &str = "moeflow:prompt_tokens_total";
/// Generated tokens of finished requests.
pub const GENERATION_TOKENS: &str = "moeflow:generation_tokens_total";
/// Finished requests by `finished_reason` (`stop`, `length`, `abort`, `error`).
pub const REQUEST_SUCCESS: &str = "moeflow:request_success_total";

/// Bucket bounds (seconds) for first-token and end-to-end latency: 1 ms to 10 minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0,
];
/// Bucket bounds (seconds) for inter-token latency: 1 ms to 5 s, dense where decode lives.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
];

/// How often accumulated histogram samples are folded into their buckets, so memory stays
/// bounded between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the global Prometheus recorder (once per process; later calls return the same
/// handle) and describes the front-end metrics. Everything recorded through the `metrics`
/// facade anywhere in the process is rendered by [`PrometheusHandle::render`].
///
/// Call it at startup, before anything records: a metric handle taken while no recorder is
/// installed stays a no-op. [`crate::http_app`] calls it too, so tests need not.
///
/// If another recorder was installed first, ours cannot be, and the handle renders
/// nothing; that is logged, not fatal, because serving matters more than metrics.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!("metrics recorder not installed ({e}): /metrics will be empty");
            }
            describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!("no metrics upkeep thread ({e}); histograms drain at scrapes only");
            }
            handle
        })
        .clone()
}

fn builder() -> PrometheusBuilder {
    let base = PrometheusBuilder::new();
    let with_buckets = base
        .set_buckets_for_metric(Matcher::Full(ITL.into()), ITL_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        });
    match with_buckets {
        Ok(b) => b,
        // Only an empty bucket list fails, and ours are constants.
        Err(e) => {
            tracing::warn!("histogram buckets rejected ({e}); rendering summaries");
            PrometheusBuilder::new()
        }
    }
}

fn describe() {
    metrics::describe_histogram!(TTFT, Unit::Seconds, "Time to first token, from arrival.");
    metrics::describe_histogram!(
        ITL,
        Unit::Seconds,
        "Time between consecutive output tokens."
    );
    metrics::describe_histogram!(
        E2E,
        Unit::Seconds,
        "Request latency from arrival to the end."
    );
    metrics::describe_counter!(
        PROMPT_TOKENS,
        Unit::Count,
        "Prompt tokens of finished requests."
    );
    metrics::describe_counter!(
        GENERATION_TOKENS,
        Unit::Count,
        "Generated tokens of finished requests."
    );
    metrics::describe_counter!(
        REQUEST_SUCCESS,
        Unit::Count,
        "Finished requests by finished_reason (stop, length, abort, error)."
    );
}

/// How a request ended, as the `finished_reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished(FinishReason),
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Finished(FinishReason::Stop) => "stop",
            Outcome::Finished(FinishReason::Length) => "length",
            Outcome::Finished(FinishReason::Abort) => "abort",
            Outcome::Error => "error",
        }
    }
}

/// One request's latency timer. Handles are looked up once per request, so a token costs an
/// `Instant::now` and one histogram record. Dropped before [`RequestMetrics::finish`] (the
/// client went away), it counts the request as aborted.
#[derive(Debug)]
pub struct RequestMetrics {
    arrived: Instant,
    last_token: Option<Instant>,
    ttft: Histogram,
    itl: Histogram,
    prompt_tokens: u32,
    generated: u32,
    finished: bool,
}

impl RequestMetrics {
    /// Starts timing a request that arrived at `arrived` with a prompt of `prompt_tokens`.
    pub fn new(arrived: Instant, prompt_tokens: u32) -> Self {
        Self {
            arrived,
            last_token: None,
            ttft: metrics::histogram!(TTFT),
            itl: metrics::histogram!(ITL),
            prompt_tokens,
            generated: 0,
            finished: false,
        }
    }

    /// Records one generated token's arrival.
    pub fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.ttft.record(now.duration_since(self.arrived)),
            Some(prev) => self.itl.record(now.duration_since(prev)),
        }
        self.last_token = Some(now);
        self.generated += 1;
    }

    /// Records the end of the request (only the first call counts).
    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        metrics::histogram!(E2E).record(self.arrived.elapsed());
        metrics::counter!(PROMPT_TOKENS).increment(u64::from(self.prompt_tokens));
        metrics::counter!(GENERATION_TOKENS).increment(u64::from(self.generated));
        metrics::counter!(REQUEST_SUCCESS, "finished_reason" => outcome.label()).increment(1);
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        self.finish(Outcome::Finished(FinishReason::Abort));
    }
}
