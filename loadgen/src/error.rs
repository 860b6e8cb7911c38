//! Errors that stop a run before or instead of measuring. Failures of single requests are not
//! errors here: they are counted by kind in the report ([`crate::record::FailureKind`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("--base-url `{url}`: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("--goodput `{spec}`: {reason}")]
    Goodput { spec: String, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("listing models at {url}: {reason}")]
    Models { url: String, reason: String },
    #[error("the server did not answer the warmup request: {0}")]
    Warmup(String),
}
