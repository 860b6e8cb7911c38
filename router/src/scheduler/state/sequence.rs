//! A request's life in the scheduler: waiting for admission, then running (prefill, decode).

use std::time::Instant;

use tokio::sync::mpsc;

use crate::trace::TraceAssembler;
use moeflow_api::{GenerateRequest, TokenEvent, Usage};

/// Which group a role refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Prefill,
    Decode,
}

/// A request accepted by `submit`, not yet admitted to any rank.
pub(super) struct Waiting {
    pub req: GenerateRequest,
    pub tx: mpsc::Sender<TokenEvent>,
    pub arrived: Instant,
    /// Unix milliseconds of arrival, for the request's trace.
    pub arrived_ms: u64,
}

/// An admitted sequence and the budget it holds.
pub(super) struct Running {
    pub req: GenerateRequest,
    pub tx: mpsc::Sender<TokenEvent>,
    /// Where the sequence's KV cache is now.
    pub at: (Role, usize),
    /// The decode rank whose budget holds this sequence.
    pub decode_rank: usize,
    /// The prefill rank whose budget holds it until it moves (prefill group only).
    pub prefill_rank: Option<usize>,
    /// Prompt tokens sent to the rank so far (chunked prefill).
    pub prefilled: usize,
    pub generated: Vec<u32>,
    pub decode_blocks: usize,
    pub prefill_blocks: usize,
    /// The sampling settings travel with the first chunk only; the rank keeps the sampler.
    pub sampling_sent: bool,
    /// The request's trace so far, when it is sampled for recording.
    pub trace: Option<TraceAssembler>,
}

impl Running {
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.req.prompt.len() as u32,
            completion_tokens: self.generated.len() as u32,
        }
    }
}
