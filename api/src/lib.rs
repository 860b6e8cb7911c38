//! The contract between the front ends (HTTP, gRPC) and whatever generates tokens: a
//! [`Backend`] takes a tokenized [`GenerateRequest`] and streams [`TokenEvent`]s back.
//!
//! The router's scheduler implements it over worker groups; tests and the router-overhead
//! benchmark implement it in process. Front ends never see workers, batches or KV blocks, and
//! this crate depends on no other moeflow crate, so that both sides can depend on it (the
//! contract lives with neither the caller nor the implementer). The workers take the same
//! [`SamplingParams`] and report the same [`FinishReason`], so nothing is mirrored.

mod backend;
mod error;
mod event;
mod info;
mod request;
mod sampling;

pub use backend::{Backend, SharedBackend};
pub use error::SubmitError;
pub use event::{FinishReason, TokenEvent, Usage};
pub use info::{ComponentHealth, ModelInfo, RankLoad};
pub use request::GenerateRequest;
pub use sampling::{SamplingParams, MAX_TOP_LOGPROBS};
