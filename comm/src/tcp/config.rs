//! Tuning of the TCP backend; the defaults suit a group on one host or one data-centre network.

use std::time::Duration;

use crate::error::CommError;

/// Timeouts and limits of a [`super::TcpComm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// A peer from which no byte (data or heartbeat) arrived for this long is lost: every
    /// operation waiting on it fails. Also the longest a write may stall on a peer that does
    /// not read. Default 3 s.
    pub peer_timeout: Duration,
    /// How often each connection carries a heartbeat, so that an idle but healthy peer is
    /// never mistaken for a dead one. Must be well under `peer_timeout`. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// How long forming the group (dialling lower ranks, accepting higher ones, handshakes)
    /// may take; peers that start later are retried until then. Default 60 s.
    pub connect_timeout: Duration,
    /// How long an operation waits for a live peer that does not take part (stuck elsewhere,
    /// or collectives called in different orders). Default 120 s.
    pub op_timeout: Duration,
    /// Largest payload of one frame; a header announcing more is a protocol error, so a
    /// corrupt length never turns into a huge allocation. Default 1 GiB.
    pub max_frame_bytes: u64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            peer_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(60),
            op_timeout: Duration::from_secs(120),
            max_frame_bytes: 1 << 30,
        }
    }
}

impl TcpConfig {
    pub(crate) fn validate(&self) -> Result<(), CommError> {
        let bad = |msg: String| Err(CommError::InvalidArgument(msg));
        if self.heartbeat_interval.is_zero() || self.peer_timeout.is_zero() {
            return bad("peer_timeout and heartbeat_interval must be positive".into());
        }
        if self.heartbeat_interval >= self.peer_timeout {
            return bad(format!(
                "heartbeat_interval {:?} must be shorter than peer_timeout {:?}",
                self.heartbeat_interval, self.peer_timeout
            ));
        }
        if self.connect_timeout.is_zero() || self.op_timeout.is_zero() {
            return bad("connect_timeout and op_timeout must be positive".into());
        }
        Ok(())
    }

    /// How often a reader blocked on a quiet socket wakes up to check for silence and shutdown.
    pub(crate) fn poll_interval(&self) -> Duration {
        (self.peer_timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(250))
    }
}
