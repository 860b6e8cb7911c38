//! A generation request as a backend receives it: validated and tokenized by a front end.

use crate::SamplingParams;

/// A validated, tokenized generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Unique per request (the front end assigns it); used by `abort`.
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// At least 1.
    pub max_tokens: u32,
    /// Token ids that end generation (EOS of the model, plus any the client asked for).
    pub stop_token_ids: Vec<u32>,
    /// Workload label (request field or header), recorded with the request's trace.
    pub workload: Option<String>,
}
