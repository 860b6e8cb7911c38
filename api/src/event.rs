//! What a request's stream carries back, and why a sequence stopped.

/// Why a sequence stopped; the same for the workers' own generation loop and for requests
/// served through a [`Backend`](crate::Backend).
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

/// Token counts of a finished request, as OpenAI's `usage` reports them.
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
