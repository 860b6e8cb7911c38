//! What one request produced: its timings, or why it failed.

use std::fmt;
use std::time::Duration;

/// Why a request did not complete. Its [`Display`](fmt::Display) form is the key under which
/// it is counted in the report's `errors` (`http_429`, `timeout`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The server answered with a status other than 200.
    Status(u16),
    /// No complete answer within the per-request timeout.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The connection closed before any response came.
    NoResponse,
    /// The body ended or broke before `data: [DONE]` (or, unstreamed, before its end).
    BrokenStream,
    /// The stream carried an error event (`data: {"error": ...}` or `event: error`).
    SseError,
    /// Something that is not an OpenAI response (bad JSON, bad UTF-8, an oversized line).
    BadResponse,
}

impl FailureKind {
    /// Whether the server gave no sign of life: enough of these in a row end the run.
    pub fn is_unanswered(self) -> bool {
        matches!(
            self,
            FailureKind::Timeout | FailureKind::Connect | FailureKind::NoResponse
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Status(code) => write!(f, "http_{code}"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Connect => f.write_str("connect"),
            FailureKind::NoResponse => f.write_str("no_response"),
            FailureKind::BrokenStream => f.write_str("broken_stream"),
            FailureKind::SseError => f.write_str("sse_error"),
            FailureKind::BadResponse => f.write_str("bad_response"),
        }
    }
}

/// A failed request.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// For a person reading the report: the status body, the error event, the I/O error.
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A completed request's measurements.
#[derive(Debug, Clone, Default)]
pub struct Success {
    /// The server's `usage.prompt_tokens`, else the prompt's estimate.
    pub prompt_tokens: u64,
    pub prompt_tokens_from_server: bool,
    /// The server's `usage.completion_tokens`, else the number of content chunks.
    pub output_tokens: u64,
    pub output_tokens_from_server: bool,
    /// From sending the request to the first chunk with text; `None` if none came (an empty
    /// output, or an unstreamed request).
    pub ttft: Option<Duration>,
    /// Gaps between consecutive chunks with text. A server may put several tokens in one
    /// chunk (text held back until it is valid UTF-8, or merged), so these are per chunk, as
    /// in vLLM; [`Success::tpot`] is per token.
    pub itl: Vec<Duration>,
    /// Streamed chunks with text.
    pub chunks: u64,
    /// From sending the request to the end of its response.
    pub e2e: Duration,
}

impl Success {
    /// Time per output token after the first: `(e2e - ttft) / (tokens - 1)`; defined for
    /// streamed outputs of two tokens or more.
    pub fn tpot(&self) -> Option<Duration> {
        let ttft = self.ttft?;
        if self.output_tokens < 2 {
            return None;
        }
        let divisor = u32::try_from(self.output_tokens - 1).ok()?;
        Some(self.e2e.saturating_sub(ttft) / divisor)
    }
}

/// One request's outcome.
pub type RequestRecord = Result<Success, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_keys() {
        assert_eq!(FailureKind::Status(429).to_string(), "http_429");
        assert_eq!(FailureKind::BrokenStream.to_string(), "broken_stream");
    }

    #[test]
    fn tpot_excludes_the_first_token() {
        let s = Success {
            output_tokens: 5,
            ttft: Some(Duration::from_millis(100)),
            e2e: Duration::from_millis(500),
            ..Success::default()
        };
        assert_eq!(s.tpot(), Some(Duration::from_millis(100)));
        let one = Success {
            output_tokens: 1,
            ..s.clone()
        };
        assert_eq!(one.tpot(), None);
    }
}
