//! Forming a group over gRPC (`moeflow.v1.GroupBootstrap`). Every worker binds its comm
//! listener first, then joins the group's [`Coordinator`] with that address; the coordinator
//! assigns ranks (in join order, or the rank each worker asks for, as with Kubernetes
//! LeaderWorkerSet's `LWS_WORKER_INDEX`), waits until the whole group is there, and answers
//! every joiner with the same [`Membership`]. The workers then connect to each other
//! directly ([`crate::TcpComm::connect`] or the NCCL backend); the coordinator is out of the
//! data path.

mod client;
mod coordinator;

use std::time::Duration;

pub use client::{join, join_blocking, JoinRequest, Membership};
pub use coordinator::{Coordinator, CoordinatorConfig, NcclIdSource};

/// Why joining or hosting a group failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The coordinator URL cannot be used.
    #[error("invalid coordinator URL {url:?}: {msg}")]
    InvalidUrl { url: String, msg: String },
    /// Nobody answered at the coordinator's address within the connect timeout.
    #[error("coordinator {url} unreachable after {after:?}: {source}")]
    Unreachable {
        url: String,
        after: Duration,
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator refused this worker (mismatched identity, rank taken, group formed
    /// without it, join timeout); the message names the field or rank.
    #[error("coordinator refused the join ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    /// The coordinator's answer is inconsistent (wrong rank, peer count, NCCL id length).
    #[error("coordinator sent an invalid membership: {0}")]
    BadResponse(String),
    /// Hosting the coordinator failed.
    #[error("coordinator server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The blocking join could not start its runtime.
    #[error("cannot start a runtime for the blocking join: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Checks that `address` looks like "host:port", so that a typo is refused at join time
/// instead of failing every peer's dial later.
pub(crate) fn check_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("address {address:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("address {address:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("address {address:?} has no valid port")),
    }
}
