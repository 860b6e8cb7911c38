//! moeflow's serving front ends: the OpenAI-compatible HTTP API ([`http_app`], SSE streaming,
//! `/v1/models`, `/health`, `/metrics`) and the gRPC generation API ([`grpc_service`]), both
//! over the [`Backend`](moeflow_api::Backend) trait of the `moeflow-api` contract crate (the
//! router's scheduler implements it; this crate never sees the router or the workers).
//!
//! The front ends own everything a client sees and the backend never does: request
//! validation, tokenization and chat templates, incremental detokenization, stop strings,
//! response shapes, and the per-request latency metrics. Cancellation is by ownership: a
//! request's backend receiver lives in the response stream (or the handler's future), so a
//! client that goes away drops it and the backend frees the sequence.
//!
//! Wiring, as `moeflow serve` does it:
//!
//! ```text
//! let metrics = moeflow_frontend::install_recorder();   // first, before anything records
//! let state = FrontendState::new(backend, Arc::new(tokenizer)).with_model_name(name);
//! let http = serve_http(http_listener, http_app(state.clone()), shutdown_signal_1);
//! let grpc = tonic::transport::Server::builder()
//!     .add_service(grpc_service(state))
//!     .serve_with_shutdown(grpc_addr, shutdown_signal_2);
//! ```

pub mod error;
pub mod generation;
pub mod grpc;
pub mod http;
mod ids;
pub mod metrics;
pub mod state;
pub mod stop;
#[cfg(feature = "testing")]
pub mod testing;
mod tokenize;
pub mod validate;

pub use error::RequestError;
pub use grpc::grpc_service;
pub use http::{http_app, serve_http};
pub use metrics::install_recorder;
pub use state::{FrontendState, Limits};
