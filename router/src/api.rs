//! The contract between the front ends (HTTP, gRPC) and whatever generates tokens: a
//! [`Backend`] takes a tokenized request and streams [`TokenEvent`]s back.
//!
//! The router's scheduler implements it over worker groups; tests and the router-overhead
//! benchmark implement it in process. Front ends never see workers, batches or KV blocks.

use std::sync::Arc;

use tokio::sync::mpsc;

/// How tokens are chosen (mirrors `moeflow_worker::sampling::SamplingParams`, which the
/// router crate does not depend on).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// In (0, 1]; 1 disables nucleus sampling.
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    pub seed: Option<u64>,
    /// Report this many most likely tokens with every generated one (OpenAI's
    /// `top_logprobs`, at most 20); 0: none.
    #[serde(default)]
    pub top_logprobs: u32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            top_logprobs: 0,
        }
    }
}

/// Most alternatives per token a request may ask for (`Sampling::top_logprobs`; OpenAI's
/// limit, also the workers').
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A validated, tokenized generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Unique per request (the front end assigns it); used by `abort`.
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    /// At least 1.
    pub max_tokens: u32,
    /// Token ids that end generation (EOS of the model, plus any the client asked for).
    pub stop_token_ids: Vec<u32>,
    /// Workload label (request field or header), recorded with the request's trace.
    pub workload: Option<String>,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token (or, decided by the front end, a stop string).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled by the client or by `abort`.
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What a request's stream carries. Every stream ends with exactly one `Finished` or one
/// `Error`, within a bounded time, whatever happens to the workers.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    Token {
        id: u32,
        logprob: f32,
        /// The `sampling.top_logprobs` most likely tokens at this position with their
        /// log-probabilities, most likely first.
        top: Vec<(u32, f32)>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    /// A terminal failure (a worker died, the request could not be scheduled); the message
    /// is safe to show to the client.
    Error {
        message: String,
    },
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The admission queue is full: HTTP 429 / gRPC RESOURCE_EXHAUSTED.
    #[error("server overloaded: {0}")]
    Overloaded(String),
    /// The request cannot run on this model (e.g. prompt + max_tokens over the context):
    /// HTTP 400 / gRPC INVALID_ARGUMENT. The message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No healthy worker group can take it: HTTP 503 / gRPC UNAVAILABLE.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Shutting down (SIGTERM drain): HTTP 503.
    #[error("shutting down")]
    ShuttingDown,
}

/// Health of one part of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentHealth {
    pub name: String,
    pub healthy: bool,
    pub detail: String,
}

/// Load of one worker rank, as the `Loads` API reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RankLoad {
    pub group: String,
    pub rank: u32,
    pub running_sequences: u32,
    pub queued_tokens: u64,
    pub kv_usage: f32,
}

/// Static facts about the served model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    /// The name clients use in `model`.
    pub id: String,
    pub architecture: String,
    pub max_context: u32,
    pub vocab_size: u32,
    pub num_experts: u32,
    pub experts_per_token: u32,
}

/// A token generator as the front ends see it.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Accepts a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request (its KV blocks are freed).
    async fn submit(&self, req: GenerateRequest)
        -> Result<mpsc::Receiver<TokenEvent>, SubmitError>;
    /// Cancels a request by id; false if it is unknown or finished.
    async fn abort(&self, request_id: &str) -> bool;
    fn health(&self) -> Vec<ComponentHealth>;
    async fn loads(&self) -> Vec<RankLoad>;
    fn model_info(&self) -> ModelInfo;
}

/// Shared handle used by the front ends.
pub type SharedBackend = Arc<dyn Backend>;
