//! Per-peer byte and message counters: the raw material of data-movement accounting (bytes of
//! activations crossing worker boundaries). Only payload bytes that cross a process boundary
//! count: frame headers, heartbeats and data a rank "sends" to itself do not.

use std::sync::atomic::{AtomicU64, Ordering};

/// Snapshot of the counters since the communicator was created, indexed by peer rank (the
/// entry of the own rank stays zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommStats {
    pub bytes_sent: Vec<u64>,
    pub bytes_received: Vec<u64>,
    pub messages_sent: Vec<u64>,
    pub messages_received: Vec<u64>,
}

impl CommStats {
    /// Payload bytes sent to all peers together.
    pub fn total_bytes_sent(&self) -> u64 {
        self.bytes_sent.iter().sum()
    }

    /// Payload bytes received from all peers together.
    pub fn total_bytes_received(&self) -> u64 {
        self.bytes_received.iter().sum()
    }
}

/// Lock-free counters shared between an operation thread and reader threads.
#[derive(Debug)]
pub(crate) struct StatsCounters {
    bytes_sent: Vec<AtomicU64>,
    bytes_received: Vec<AtomicU64>,
    messages_sent: Vec<AtomicU64>,
    messages_received: Vec<AtomicU64>,
}

fn zeros(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl StatsCounters {
    pub(crate) fn new(world_size: usize) -> Self {
        StatsCounters {
            bytes_sent: zeros(world_size),
            bytes_received: zeros(world_size),
            messages_sent: zeros(world_size),
            messages_received: zeros(world_size),
        }
    }

    pub(crate) fn record_sent(&self, peer: usize, bytes: usize) {
        if let (Some(b), Some(m)) = (self.bytes_sent.get(peer), self.messages_sent.get(peer)) {
            b.fetch_add(bytes as u64, Ordering::Relaxed);
            m.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_received(&self, peer: usize, bytes: usize) {
        if let (Some(b), Some(m)) = (
            self.bytes_received.get(peer),
            self.messages_received.get(peer),
        ) {
            b.fetch_add(bytes as u64, Ordering::Relaxed);
            m.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> CommStats {
        let load = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        CommStats {
            bytes_sent: load(&self.bytes_sent),
            bytes_received: load(&self.bytes_received),
            messages_sent: load(&self.messages_sent),
            messages_received: load(&self.messages_received),
        }
    }
}
