//! Why a backend refuses a request, in the classes the front ends map to protocol statuses.

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
