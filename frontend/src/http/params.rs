//! Request fields that completions and chat share, and the checks and conversions that turn
//! them into a [`Prepared`] request.

use std::time::Instant;

use axum::http::HeaderMap;
use moeflow_api::GenerateRequest;
use serde::Deserialize;

use crate::error::RequestError;
use crate::generation::Prepared;
use crate::state::FrontendState;
use crate::validate::{self, SamplingInput};

/// The header that carries a workload label (the body's `workload` field wins).
pub const WORKLOAD_HEADER: &str = "x-moeflow-workload";

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct StreamOptions {
    /// Adds a last chunk with the usage and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints take, gathered from either request type.
#[derive(Debug, Clone, Default)]
pub struct CommonFields {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub workload: Option<String>,
    /// Alternatives per token to report (completions' `logprobs`, chat's `top_logprobs`),
    /// checked by the endpoint.
    pub top_logprobs: u32,
}

/// The checked common fields, waiting for the prompt.
#[derive(Debug, Clone)]
pub struct Checked {
    sampling: moeflow_api::SamplingParams,
    stop_strings: Vec<String>,
    stop_token_ids: Vec<u32>,
    skip_special_tokens: bool,
    workload: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl CommonFields {
    /// Checks everything that does not need the prompt.
    pub fn check(
        self,
        state: &FrontendState,
        headers: &HeaderMap,
    ) -> Result<Checked, RequestError> {
        validate::model(self.model.as_deref(), &state.model_name)?;
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(RequestError::invalid(
                "n",
                format!("only n=1 is supported, got {n}"),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(RequestError::invalid(
                "stream_options",
                "stream_options is only allowed with stream=true",
            ));
        }
        let sampling = validate::sampling(SamplingInput {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            top_logprobs: self.top_logprobs,
        })?;
        let stop_strings = self.stop.map(StopSpec::into_vec).unwrap_or_default();
        validate::stop_strings(&stop_strings, &state.limits, "stop")?;
        let info = state.backend.model_info();
        let mut stop_token_ids = self.stop_token_ids.unwrap_or_default();
        if let Some(id) = stop_token_ids.iter().find(|&&id| id >= info.vocab_size) {
            return Err(RequestError::invalid(
                "stop_token_ids",
                format!(
                    "token id {id} is outside the vocabulary (size {})",
                    info.vocab_size
                ),
            ));
        }
        if !self.ignore_eos.unwrap_or(false) {
            stop_token_ids.extend(state.tokenizer.eos_token_ids());
        }
        let header = headers
            .get(WORKLOAD_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Checked {
            sampling,
            stop_strings,
            stop_token_ids,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            workload: validate::workload(self.workload, header),
            stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

impl Checked {
    /// The request to submit.
    pub fn prepare(
        self,
        request_id: String,
        prompt: Vec<u32>,
        max_tokens: u32,
        arrived: Instant,
    ) -> Prepared {
        Prepared {
            request: GenerateRequest {
                request_id,
                prompt,
                sampling: self.sampling,
                max_tokens,
                stop_token_ids: self.stop_token_ids,
                workload: self.workload,
            },
            stop_strings: self.stop_strings,
            skip_special_tokens: self.skip_special_tokens,
            arrived,
        }
    }

    /// Whether special tokens are dropped from the output text.
    pub fn skip_special_tokens(&self) -> bool {
        self.skip_special_tokens
    }
}
