//! The one error type of every backend, so that callers (the worker's MoE dispatch, the router)
//! can tell a dead peer from a bad peer from their own misuse without knowing the backend.

use std::fmt;
use std::time::Duration;

/// Who a protocol error came from: a rank, or a connection that has not said who it is yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerId {
    /// A rank of the group (claimed in its handshake, or the rank we dialled).
    Rank(usize),
    /// An accepted connection whose handshake was not understood; holds its socket address.
    Unidentified(String),
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerId::Rank(r) => write!(f, "rank {r}"),
            PeerId::Unidentified(addr) => write!(f, "unidentified connection from {addr}"),
        }
    }
}

/// Everything a communicator operation can fail with. Every variant names the peer (or the
/// field) involved, because the first question after a failed batch is "which rank, and why".
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// The peer died, closed its connection, aborted the group, or was silent (no byte and no
    /// heartbeat) for longer than the peer timeout. Terminal for the group.
    #[error("rank {peer} lost: {reason}")]
    PeerLost { peer: usize, reason: String },
    /// A live peer did not take part in `op` within `after` (it is stuck elsewhere or the
    /// ranks called collectives in different orders).
    #[error("{op} timed out after {after:?} waiting for rank {peer}")]
    Timeout {
        op: &'static str,
        peer: usize,
        after: Duration,
    },
    /// The peer sent bytes that are not a valid frame: bad magic, unknown version or kind, a
    /// length over the limit, a collective that does not match ours.
    #[error("protocol error from {peer}: {msg}")]
    Protocol { peer: PeerId, msg: String },
    /// The peer belongs to another group, model, plan version or group size.
    #[error(
        "rank {peer} does not match this group: {what} differs (ours {ours:?}, theirs {theirs:?})"
    )]
    Mismatch {
        peer: usize,
        what: &'static str,
        ours: String,
        theirs: String,
    },
    /// A local I/O failure (binding, resolving an address, socket options).
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// NCCL (or the CUDA driver under it) returned an error.
    #[error("NCCL error while {context}: {msg}")]
    Nccl { context: String, msg: String },
    /// The backend cannot run here (no libnccl, no CUDA driver or device, feature not built).
    #[error("backend not available: {0}")]
    NotAvailable(String),
    /// The caller passed something that cannot work (wrong number of buffers, rank out of
    /// range, an invalid configuration).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier collective on this communicator failed; the ranks are no longer in lockstep,
    /// so the group must be formed again.
    #[error("communicator aborted by an earlier failure: {reason}")]
    Aborted { reason: String },
}

impl CommError {
    /// Wraps an I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CommError::Io {
            context: context.into(),
            source,
        }
    }

    /// A protocol error from a known rank.
    pub(crate) fn protocol(peer: usize, msg: impl Into<String>) -> Self {
        CommError::Protocol {
            peer: PeerId::Rank(peer),
            msg: msg.into(),
        }
    }
}
