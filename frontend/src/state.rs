//! What every front-end handler needs: the backend, the tokenizer, the served model's name and
//! the request limits.

use std::sync::Arc;

use moeflow_api::{ModelInfo, SharedBackend, MAX_TOP_LOGPROBS};
use moeflow_tokenizer::Tokenizer;

/// Limits on what a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted HTTP request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most stop strings per request (OpenAI allows 4; vLLM does not limit). Each one is
    /// searched for in the output text at every token, so the count is bounded.
    pub max_stop_strings: usize,
    /// Longest stop string, in bytes.
    pub max_stop_len: usize,
    /// Largest `logprobs` (completions) or `top_logprobs` (chat) accepted; by default what
    /// the backends accept ([`MAX_TOP_LOGPROBS`]).
    pub max_logprobs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_stop_strings: 16,
            max_stop_len: 256,
            max_logprobs: MAX_TOP_LOGPROBS,
        }
    }
}

/// Shared state of the HTTP and gRPC front ends; cheap to clone.
#[derive(Clone)]
pub struct FrontendState {
    pub backend: SharedBackend,
    pub tokenizer: Arc<Tokenizer>,
    /// The name clients send as `model` and see in `/v1/models`. Requests that name another
    /// model get 400; requests that name none are served.
    pub model_name: String,
    pub limits: Limits,
}

impl FrontendState {
    /// State serving `backend` under the name its [`ModelInfo::id`] gives, with default
    /// limits.
    pub fn new(backend: SharedBackend, tokenizer: Arc<Tokenizer>) -> Self {
        let model_name = backend.model_info().id;
        Self {
            backend,
            tokenizer,
            model_name,
            limits: Limits::default(),
        }
    }

    /// The same state serving under another model name.
    pub fn with_model_name(mut self, name: impl Into<String>) -> Self {
        self.model_name = name.into();
        self
    }

    /// The same state with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The served model's facts, with `id` replaced by the served name.
    pub fn model_info(&self) -> ModelInfo {
        let mut info = self.backend.model_info();
        info.id.clone_from(&self.model_name);
        info
    }
}
