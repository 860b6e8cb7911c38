//! moeflow's load generator: drives any OpenAI-compatible server (moeflow, vLLM, SGLang, ...)
//! with `vllm bench serve`-style workloads and reports the same statistics under the same JSON
//! field names, so results from different servers and existing dashboards line up.
//!
//! The pieces, each with one job:
//! - [`dataset`]: the prompts (random words, ShareGPT conversations, text or JSONL files);
//! - [`arrivals`]: when each request is sent (all at once or Poisson);
//! - [`http`] and [`sse`]: one plain HTTP/1.1 client and a server-sent-events parser;
//! - [`request`]: one request, timed chunk by chunk, ending in a [`record::RequestRecord`];
//! - [`runner`]: a whole run, bounded by a request count, a duration and per-request timeouts;
//! - [`stats`] and [`report`]: the summary (`mean_ttft_ms`, `p99_itl_ms`, ...), table and JSON.

pub mod arrivals;
pub mod config;
pub mod dataset;
pub mod error;
pub mod goodput;
pub mod http;
pub mod progress;
pub mod record;
pub mod report;
pub mod request;
pub mod runner;
pub mod sse;
pub mod stats;

pub use config::{BenchConfig, Endpoint, RequestRate};
pub use dataset::{DatasetSpec, Prompt};
pub use error::LoadgenError;
pub use goodput::GoodputLimits;
pub use record::FailureKind;
pub use report::{sweep_table, BenchReport};
pub use runner::{fetch_model_name, run, run_sweep, Sweep};
