//! Communication inside a moeflow worker group.
//!
//! A worker group is N processes (ranks) running one model in lockstep; at every MoE layer
//! each rank sends token activations to the ranks hosting the selected experts and gets the
//! results back. The model's forward pass is synchronous CPU code, so [`Communicator`] is a
//! blocking trait: every call returns a result or fails within a bounded time, never hangs,
//! even when a peer dies.
//!
//! Backends, one file each: [`TcpComm`] (the default on CPUs, across hosts), [`InProcComm`]
//! (threads of one process, for tests) and `NcclComm` (GPUs, cargo feature `nccl`). Groups are
//! formed through the gRPC [`bootstrap`] coordinator.
//!
//! Rules every backend follows:
//! - All ranks call the collectives in the same order; each call is matched across ranks by a
//!   sequence number, so a rank calling a different collective is reported, not mis-matched.
//! - After any collective fails, the ranks are no longer in lockstep: the communicator refuses
//!   further collectives ([`CommError::Aborted`]), tells its peers so they fail promptly too,
//!   and the group must be formed again.
//! - Byte counters per peer ([`CommStats`]) count payload that crossed a process boundary.

pub mod bootstrap;
mod error;
mod identity;
mod inproc;
mod mailbox;
#[cfg(feature = "nccl")]
mod nccl;
pub mod probe;
mod stats;
pub mod tcp;
mod typed;

pub use error::{CommError, PeerId};
pub use identity::GroupIdentity;
pub use inproc::InProcComm;
#[cfg(feature = "nccl")]
pub use nccl::NcclComm;
pub use stats::CommStats;
pub use tcp::{TcpComm, TcpConfig};
pub use typed::{bytes_to_f32, f32_to_bytes};

/// What a worker group needs from its transport. Blocking, with deadlines: a dead or silent
/// peer makes every pending call fail with [`CommError::PeerLost`] within the backend's peer
/// timeout.
pub trait Communicator: Send {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// Number of ranks in the group.
    fn world_size(&self) -> usize;

    /// Personalised all-to-all: `send[i]` goes to rank `i` (`send[self.rank()]` is handed back
    /// without crossing the wire); returns what every rank sent to us, indexed by source rank.
    /// Sizes vary per peer and may be zero; `send.len()` must equal `world_size()`.
    fn all_to_all_v(&mut self, send: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CommError>;

    /// Every rank contributes `data` (sizes may differ); returns all contributions indexed by
    /// rank, our own included.
    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, CommError>;

    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CommError>;

    /// Point-to-point send (KV-cache blocks, control data), matched on the receiving side by
    /// (source rank, `tag`); messages with the same tag arrive in order. Independent of the
    /// collectives' sequence. Sending to oneself is allowed.
    fn send(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<(), CommError>;

    /// Receives the next message that `peer` sent with `tag`, whatever else arrived meanwhile.
    fn recv(&mut self, peer: usize, tag: u64) -> Result<Vec<u8>, CommError>;

    /// Payload bytes and messages sent to and received from each peer since creation.
    fn stats(&self) -> CommStats;

    /// Records that the group switched to the placement plan with fingerprint `version`.
    /// Every rank calls it at the same step boundary (after agreeing on the version), so the
    /// identity each rank presents and checks from then on names the plan it runs. Backends
    /// without an identity ignore it.
    fn set_plan_version(&mut self, _version: u64) {}

    /// [`Communicator::all_to_all_v`] for f32 activations (little-endian on the wire).
    fn all_to_all_v_f32(&mut self, send: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, CommError> {
        let bytes = send.iter().map(|v| f32_to_bytes(v)).collect();
        let recv = self.all_to_all_v(bytes)?;
        recv.iter()
            .enumerate()
            .map(|(peer, b)| bytes_to_f32(peer, b))
            .collect()
    }
}

/// Checks the buffer count of an all-to-all against the group size.
pub(crate) fn check_send_count(send: &[Vec<u8>], world_size: usize) -> Result<(), CommError> {
    if send.len() != world_size {
        return Err(CommError::InvalidArgument(format!(
            "all_to_all_v needs one buffer per rank: got {}, world size is {world_size}",
            send.len()
        )));
    }
    Ok(())
}

/// Checks a point-to-point peer rank.
pub(crate) fn check_peer(peer: usize, world_size: usize) -> Result<(), CommError> {
    if peer >= world_size {
        return Err(CommError::InvalidArgument(format!(
            "rank {peer} out of range (world size {world_size})"
        )));
    }
    Ok(())
}
