//! Why a request failed, independent of the protocol: the HTTP front end turns these into
//! OpenAI error bodies and status codes, the gRPC front end into `tonic::Status`.

use moeflow_api::SubmitError;

/// A request's failure, with what each protocol needs to report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The client sent something unusable; `param` names the field (OpenAI's `param`).
    #[error("{message}")]
    Invalid {
        param: Option<String>,
        message: String,
    },
    /// The admission queue is full; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// No healthy worker group can take the request, or the server is draining.
    #[error("{0}")]
    Unavailable(String),
    /// The backend ended the request with a terminal error (a worker died mid-stream).
    #[error("{0}")]
    Backend(String),
    /// A bug or broken model files on our side (the tokenizer failed).
    #[error("{0}")]
    Internal(String),
}

impl RequestError {
    /// A client error naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// The field this error names, if any.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Invalid { param, .. } => param.as_deref(),
            _ => None,
        }
    }
}

impl From<SubmitError> for RequestError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Overloaded(m) => Self::Overloaded(format!("server overloaded: {m}")),
            SubmitError::Invalid(message) => Self::Invalid {
                param: None,
                message,
            },
            SubmitError::Unavailable(m) => Self::Unavailable(format!("unavailable: {m}")),
            SubmitError::ShuttingDown => Self::Unavailable("the server is shutting down".into()),
        }
    }
}
