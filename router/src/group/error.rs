//! Why a group operation failed.

use std::time::Duration;

/// Why a group operation failed; always names the rank where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("rank {rank} ({addr}): cannot connect: {msg}")]
    Connect {
        rank: usize,
        addr: String,
        msg: String,
    },
    #[error("rank {rank}: {code:?}: {message}")]
    Rank {
        rank: usize,
        code: tonic::Code,
        message: String,
    },
    #[error("rank {rank}: no answer within {after:?}")]
    Timeout { rank: usize, after: Duration },
    #[error("step has {got} rank batches, the group has {want} ranks")]
    Shape { got: usize, want: usize },
}
