//! A run's summary: built from its request records, printed as `vllm bench serve`'s table,
//! and written as JSON under vLLM's field names so existing dashboards read it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{BenchConfig, Endpoint, RequestRate};
use crate::goodput::GoodputLimits;
use crate::record::RequestRecord;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub model_id: String,
    pub base_url: String,
    pub endpoint: Endpoint,
    /// Prompts the run was given.
    pub num_prompts: usize,
    pub request_rate: RequestRate,
    pub max_concurrency: Option<usize>,
    /// From the first request sent to the last one finished (or the deadline).
    pub duration: Duration,
    pub completed: usize,
    /// Requests that finished with an error (counted by kind in `errors`).
    pub failed: usize,
    /// Requests in flight when the run stopped early (`--duration` or an abort): neither
    /// completed nor failed.
    pub cancelled: usize,
    /// Prompts never sent because the run stopped early.
    pub not_sent: usize,
    /// Prompt tokens of the completed requests (the server's counts where it reported them).
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Whether every completed request's token counts came from the server's `usage`.
    pub input_tokens_from_server: bool,
    pub output_tokens_from_server: bool,
    pub ttft: Summary,
    pub tpot: Summary,
    pub itl: Summary,
    pub e2el: Summary,
    /// Output tokens per streamed chunk with text (1 when every token is its own chunk; more
    /// when the server merges tokens, which makes ITL larger than TPOT). `None` unstreamed.
    pub output_tokens_per_chunk: Option<f64>,
    pub goodput_limits: GoodputLimits,
    /// Completed requests within every goodput limit (`None` without limits).
    pub good_requests: Option<usize>,
    /// Failures by kind (`http_429`, `timeout`, `broken_stream`, ...).
    pub errors: BTreeMap<String, usize>,
    /// The first message of each kind, to tell a person what went wrong.
    pub error_examples: BTreeMap<String, String>,
    /// Why the run stopped before its end, if it did because the server stopped answering.
    pub aborted: Option<String>,
}

/// How a run ended besides its records.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    pub cancelled: usize,
    pub not_sent: usize,
    pub aborted: Option<String>,
}

impl BenchReport {
    pub fn build(
        config: &BenchConfig,
        num_prompts: usize,
        records: &[RequestRecord],
        duration: Duration,
        end: RunEnd,
    ) -> Self {
        let ok: Vec<_> = records.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut errors = BTreeMap::new();
        let mut error_examples = BTreeMap::new();
        for f in records.iter().filter_map(|r| r.as_ref().err()) {
            let key = f.kind.to_string();
            *errors.entry(key.clone()).or_insert(0) += 1;
            error_examples
                .entry(key)
                .or_insert_with(|| truncate(&f.message, 500));
        }
        let streamed: Vec<_> = ok.iter().filter(|s| s.chunks > 0).collect();
        let chunks: u64 = streamed.iter().map(|s| s.chunks).sum();
        let output_tokens_per_chunk = (chunks > 0)
            .then(|| streamed.iter().map(|s| s.output_tokens).sum::<u64>() as f64 / chunks as f64);
        let good_requests = (!config.goodput.is_empty())
            .then(|| ok.iter().filter(|s| config.goodput.is_met(s)).count());
        Self {
            model_id: config.model.clone(),
            base_url: config.base_url.clone(),
            endpoint: config.endpoint,
            num_prompts,
            request_rate: config.request_rate,
            max_concurrency: config.max_concurrency,
            duration,
            completed: ok.len(),
            failed: records.len() - ok.len(),
            cancelled: end.cancelled,
            not_sent: end.not_sent,
            total_input_tokens: ok.iter().map(|s| s.prompt_tokens).sum(),
            total_output_tokens: ok.iter().map(|s| s.output_tokens).sum(),
            input_tokens_from_server: ok.iter().all(|s| s.prompt_tokens_from_server),
            output_tokens_from_server: ok.iter().all(|s| s.output_tokens_from_server),
            ttft: Summary::of_durations(ok.iter().filter_map(|s| s.ttft)),
            tpot: Summary::of_durations(ok.iter().filter_map(|s| s.tpot())),
            itl: Summary::of_durations(ok.iter().flat_map(|s| s.itl.iter().copied())),
            e2el: Summary::of_durations(ok.iter().map(|s| s.e2e)),
            output_tokens_per_chunk,
            goodput_limits: config.goodput,
            good_requests,
            errors,
            error_examples,
            aborted: end.aborted,
        }
    }

    fn per_second(&self, x: f64) -> f64 {
        let d = self.duration.as_secs_f64();
        if d > 0.0 {
            x / d
        } else {
            0.0
        }
    }

    pub fn request_throughput(&self) -> f64 {
        self.per_second(self.completed as f64)
    }

    pub fn output_throughput(&self) -> f64 {
        self.per_second(self.total_output_tokens as f64)
    }

    pub fn total_token_throughput(&self) -> f64 {
        self.per_second((self.total_input_tokens + self.total_output_tokens) as f64)
    }

    pub fn request_goodput(&self) -> Option<f64> {
        self.good_requests.map(|g| self.per_second(g as f64))
    }

    /// Whether the run measured something: it was not aborted and some request completed.
    pub fn is_success(&self) -> bool {
        self.aborted.is_none() && self.completed > 0
    }

    /// The JSON result: `vllm bench serve`'s field names where it has one.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put(
            "backend",
            json!(match self.endpoint {
                Endpoint::Completions => "openai",
                Endpoint::Chat => "openai-chat",
            }),
        );
        put("model_id", json!(self.model_id));
        put("base_url", json!(self.base_url));
        put("endpoint", json!(self.endpoint.path()));
        put("num_prompts", json!(self.num_prompts));
        put(
            "request_rate",
            match self.request_rate {
                RequestRate::Unlimited => json!("inf"),
                RequestRate::PerSecond(r) => json!(r),
            },
        );
        put("burstiness", json!(1.0));
        put("max_concurrency", json!(self.max_concurrency));
        put("duration", json!(self.duration.as_secs_f64()));
        put("completed", json!(self.completed));
        put("failed", json!(self.failed));
        put("cancelled", json!(self.cancelled));
        put("not_sent", json!(self.not_sent));
        put("total_input_tokens", json!(self.total_input_tokens));
        put("total_output_tokens", json!(self.total_output_tokens));
        put(
            "token_counts",
            json!({
                "input": if self.input_tokens_from_server { "server" } else { "estimated" },
                "output": if self.output_tokens_from_server { "server" } else { "chunks" },
            }),
        );
        put("request_throughput", json!(self.request_throughput()));
        put("request_goodput", json!(self.request_goodput()));
        put("output_throughput", json!(self.output_throughput()));
        put(
            "total_token_throughput",
            json!(self.total_token_throughput()),
        );
        for (name, s) in self.metrics() {
            put(&format!("mean_{name}_ms"), json!(s.mean_ms));
            put(&format!("median_{name}_ms"), json!(s.median_ms));
            put(&format!("std_{name}_ms"), json!(s.std_ms));
            put(&format!("p90_{name}_ms"), json!(s.p90_ms));
            put(&format!("p99_{name}_ms"), json!(s.p99_ms));
        }
        put(
            "output_tokens_per_chunk",
            json!(self.output_tokens_per_chunk),
        );
        put("errors", json!(self.errors));
        put("error_examples", json!(self.error_examples));
        put(
            "goodput",
            match self.good_requests {
                None => Value::Null,
                Some(good) => json!({
                    "ttft_ms": self.goodput_limits.ttft_ms,
                    "tpot_ms": self.goodput_limits.tpot_ms,
                    "e2el_ms": self.goodput_limits.e2el_ms,
                    "good_requests": good,
                }),
            },
        );
        put("aborted", json!(self.aborted));
        Value::Object(m)
    }

    fn metrics(&self) -> [(&'static str, &Summary); 4] {
        [
            ("ttft", &self.ttft),
            ("tpot", &self.tpot),
            ("itl", &self.itl),
            ("e2el", &self.e2el),
        ]
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// `vllm bench serve`'s result table.
impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, k: &str, v: String| writeln!(f, "{k:<40} {v:<10}");
        let head = |f: &mut fmt::Formatter<'_>, t: &str| writeln!(f, "{t:-^50}");
        writeln!(f, "{:=^50}", " Serving Benchmark Result ")?;
        line(f, "Successful requests:", self.completed.to_string())?;
        line(f, "Failed requests:", self.failed.to_string())?;
        if self.cancelled + self.not_sent > 0 {
            line(
                f,
                "Cancelled / not sent:",
                format!("{} / {}", self.cancelled, self.not_sent),
            )?;
        }
        line(
            f,
            "Maximum request concurrency:",
            self.max_concurrency
                .map_or_else(|| "unlimited".into(), |c| c.to_string()),
        )?;
        line(f, "Request rate (req/s):", self.request_rate.to_string())?;
        line(
            f,
            "Benchmark duration (s):",
            format!("{:.2}", self.duration.as_secs_f64()),
        )?;
        let src = |server: bool, other: &str| if server { "" } else { other }.to_string();
        line(
            f,
            "Total input tokens:",
            format!(
                "{}{}",
                self.total_input_tokens,
                src(self.input_tokens_from_server, " (estimated)")
            ),
        )?;
        line(
            f,
            "Total generated tokens:",
            format!(
                "{}{}",
                self.total_output_tokens,
                src(self.output_tokens_from_server, " (chunks)")
            ),
        )?;
        line(
            f,
            "Request throughput (req/s):",
            format!("{:.2}", self.request_throughput()),
        )?;
        if let Some(g) = self.request_goodput() {
            line(f, "Request goodput (req/s):", format!("{g:.2}"))?;
        }
        line(
            f,
            "Output token throughput (tok/s):",
            format!("{:.2}", self.output_throughput()),
        )?;
        line(
            f,
            "Total token throughput (tok/s):",
            format!("{:.2}", self.total_token_throughput()),
        )?;
        if let Some(t) = self.output_tokens_per_chunk {
            line(f, "Output tokens per chunk:", format!("{t:.2}"))?;
        }
        for (name, title, s) in [
            ("TTFT", "Time to First Token", &self.ttft),
            (
                "TPOT",
                "Time per Output Token (excl. 1st token)",
                &self.tpot,
            ),
            ("ITL", "Inter-token Latency", &self.itl),
            ("E2EL", "End-to-end Latency", &self.e2el),
        ] {
            head(f, title)?;
            line(
                f,
                &format!("Mean {name} (ms):"),
                format!("{:.2}", s.mean_ms),
            )?;
            line(
                f,
                &format!("Median {name} (ms):"),
                format!("{:.2}", s.median_ms),
            )?;
            line(f, &format!("P90 {name} (ms):"), format!("{:.2}", s.p90_ms))?;
            line(f, &format!("P99 {name} (ms):"), format!("{:.2}", s.p99_ms))?;
        }
        if !self.errors.is_empty() {
            head(f, "Errors")?;
            for (kind, n) in &self.errors {
                line(f, &format!("{kind}:"), n.to_string())?;
            }
            for (kind, msg) in &self.error_examples {
                writeln!(f, "  e.g. {kind}: {msg}")?;
            }
        }
        if let Some(why) = &self.aborted {
            writeln!(f, "ABORTED: {why}")?;
        }
        writeln!(f, "{}", "=".repeat(50))
    }
}

/// One Markdown row per run of a sweep, for comparing points (and pasting into BENCHMARKS.md).
pub fn sweep_table(reports: &[BenchReport]) -> String {
    let mut t = String::from(
        "| concurrency | rate (req/s) | completed | failed | req/s | output tok/s | total tok/s \
         | mean TTFT ms | p99 TTFT ms | mean ITL ms | p99 ITL ms | mean TPOT ms | mean E2EL ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r.max_concurrency
                .map_or_else(|| "unlimited".into(), |c| c.to_string()),
            r.request_rate,
            r.completed,
            r.failed,
            r.request_throughput(),
            r.output_throughput(),
            r.total_token_throughput(),
            r.ttft.mean_ms,
            r.ttft.p99_ms,
            r.itl.mean_ms,
            r.itl.p99_ms,
            r.tpot.mean_ms,
            r.e2el.mean_ms,
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Failure, FailureKind, Success};

    fn ok(ttft_ms: u64, e2e_ms: u64, tokens: u64) -> RequestRecord {
        Ok(Success {
            prompt_tokens: 10,
            prompt_tokens_from_server: true,
            output_tokens: tokens,
            output_tokens_from_server: true,
            ttft: Some(Duration::from_millis(ttft_ms)),
            itl: vec![Duration::from_millis(10); tokens as usize - 1],
            chunks: tokens / 2,
            e2e: Duration::from_millis(e2e_ms),
        })
    }

    #[test]
    fn vllm_field_names_and_values() {
        let mut c = BenchConfig::new("http://h:1", "m");
        c.max_concurrency = Some(4);
        c.goodput = GoodputLimits::parse(&["ttft:150"]).unwrap();
        let records = vec![
            ok(100, 190, 10),
            ok(200, 290, 10),
            Err(Failure::new(FailureKind::Status(429), "busy")),
        ];
        let r = BenchReport::build(&c, 3, &records, Duration::from_secs(2), RunEnd::default());
        let j = r.to_json();
        assert_eq!(j["completed"], 2);
        assert_eq!(j["failed"], 1);
        assert_eq!(j["total_input_tokens"], 20);
        assert_eq!(j["total_output_tokens"], 20);
        assert_eq!(j["request_throughput"], 1.0);
        assert_eq!(j["output_throughput"], 10.0);
        assert_eq!(j["total_token_throughput"], 20.0);
        assert_eq!(j["mean_ttft_ms"], 150.0);
        assert_eq!(j["median_itl_ms"], 10.0);
        assert_eq!(j["mean_tpot_ms"], 10.0);
        assert_eq!(j["p99_e2el_ms"], 289.0);
        assert_eq!(j["max_concurrency"], 4);
        assert_eq!(j["output_tokens_per_chunk"], 2.0);
        assert_eq!(j["request_rate"], "inf");
        assert_eq!(j["errors"]["http_429"], 1);
        assert_eq!(j["goodput"]["good_requests"], 1);
        assert_eq!(j["request_goodput"], 0.5);
        for key in ["p90_ttft_ms", "p99_tpot_ms", "mean_e2el_ms", "duration"] {
            assert!(j[key].is_number(), "{key}");
        }
        let table = r.to_string();
        assert!(table.contains("Mean TTFT (ms):"));
        assert!(table.contains("http_429:"));
        assert!(sweep_table(&[r]).contains("| 4 | inf | 2 | 1 |"));
    }
}
