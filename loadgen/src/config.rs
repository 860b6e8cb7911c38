//! What one run does: where it sends requests, how many, how fast and how long it may take.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::LoadgenError;
use crate::goodput::GoodputLimits;

/// The OpenAI API a run talks to; it decides the request body and where a chunk's text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`: `prompt` in, `choices[0].text` out.
    Completions,
    /// `/v1/chat/completions`: one user message in, `choices[0].delta.content` out.
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

impl FromStr for Endpoint {
    type Err = LoadgenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "/v1/completions" | "completions" => Ok(Endpoint::Completions),
            "/v1/chat/completions" | "chat" => Ok(Endpoint::Chat),
            other => Err(LoadgenError::Config(format!(
                "--endpoint `{other}`: expected /v1/completions or /v1/chat/completions"
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Requests per second of a Poisson arrival process, or every request at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestRate {
    /// All requests are released at the start (bounded only by the concurrency limit).
    Unlimited,
    /// Mean requests per second; gaps are exponentially distributed.
    PerSecond(f64),
}

impl RequestRate {
    /// `inf` (or any infinite value) means [`RequestRate::Unlimited`]; otherwise a positive rate.
    pub fn from_f64(rate: f64) -> Result<Self, LoadgenError> {
        if rate.is_infinite() && rate > 0.0 {
            Ok(RequestRate::Unlimited)
        } else if rate.is_finite() && rate > 0.0 {
            Ok(RequestRate::PerSecond(rate))
        } else {
            Err(LoadgenError::Config(format!(
                "--request-rate {rate}: must be positive or inf"
            )))
        }
    }
}

impl fmt::Display for RequestRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestRate::Unlimited => f.write_str("inf"),
            RequestRate::PerSecond(r) => write!(f, "{r}"),
        }
    }
}

/// Everything a run needs besides its prompts.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `http://host:port` (a path prefix is kept: the endpoint path is appended).
    pub base_url: String,
    pub endpoint: Endpoint,
    /// Sent as `model` in every request.
    pub model: String,
    /// Requests in flight at most; `None`: no limit besides the arrival process.
    pub max_concurrency: Option<usize>,
    pub request_rate: RequestRate,
    /// Seeds the arrival process (prompts are generated before, from the same seed).
    pub seed: u64,
    /// Stop after this long even if prompts remain; requests still in flight are cancelled.
    pub duration: Option<Duration>,
    /// Per request, from sending it to its last byte.
    pub timeout: Duration,
    /// vLLM's `ignore_eos`, so every output has the asked length.
    pub ignore_eos: bool,
    /// SSE streaming (the default); without it TTFT and ITL cannot be measured.
    pub stream: bool,
    pub temperature: f32,
    /// Sent as `Authorization: Bearer ...`.
    pub api_key: Option<String>,
    pub goodput: GoodputLimits,
    /// Requests sent (and awaited) before measuring, not counted; a failure aborts the run.
    pub warmup_requests: usize,
    /// Retry the first warmup request for up to this long (a server still starting).
    pub ready_timeout: Duration,
    /// Draw a progress bar on stderr.
    pub show_progress: bool,
}

impl BenchConfig {
    /// A configuration with `vllm bench serve`'s defaults for everything but the target.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            endpoint: Endpoint::Completions,
            model: model.into(),
            max_concurrency: None,
            request_rate: RequestRate::Unlimited,
            seed: 0,
            duration: None,
            timeout: Duration::from_secs(300),
            ignore_eos: false,
            stream: true,
            temperature: 0.0,
            api_key: None,
            goodput: GoodputLimits::default(),
            warmup_requests: 1,
            ready_timeout: Duration::ZERO,
            show_progress: false,
        }
    }

    /// Checks what the type system does not.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        if self.max_concurrency == Some(0) {
            return Err(LoadgenError::Config(
                "--max-concurrency must be at least 1".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(LoadgenError::Config("--timeout must be positive".into()));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(LoadgenError::Config("--duration must be positive".into()));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(LoadgenError::Config(
                "--temperature must be a non-negative number".into(),
            ));
        }
        Ok(())
    }
}
