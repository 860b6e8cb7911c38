//! Where arrived messages wait for the operation that wants them. Messages are matched by
//! source rank and either a collective sequence number or a point-to-point tag, so arrival
//! order never matters; a peer failure (lost, or a protocol violation) is recorded here too
//! and wakes every waiting operation at once. Both the TCP and the in-process backend deliver
//! into a `Mailbox`, so the matching and waiting rules are the same for both.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{CommError, PeerId};
use crate::stats::StatsCounters;

/// The collective a message belongs to; ranks must call collectives in the same order, and a
/// message for sequence number `n` of another kind proves they did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CollectiveKind {
    AllToAll,
    AllGather,
    Barrier,
}

impl CollectiveKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CollectiveKind::AllToAll => "all_to_all_v",
            CollectiveKind::AllGather => "all_gather",
            CollectiveKind::Barrier => "barrier",
        }
    }
}

/// Why a peer can no longer be talked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerFault {
    /// Died, closed, aborted or went silent.
    Lost(String),
    /// Sent something that is not a valid frame.
    Protocol(String),
}

impl PeerFault {
    pub(crate) fn to_error(&self, peer: usize) -> CommError {
        match self {
            PeerFault::Lost(reason) => CommError::PeerLost {
                peer,
                reason: reason.clone(),
            },
            PeerFault::Protocol(msg) => CommError::Protocol {
                peer: PeerId::Rank(peer),
                msg: msg.clone(),
            },
        }
    }
}

#[derive(Default)]
struct PeerBox {
    collectives: HashMap<u64, (CollectiveKind, Vec<u8>)>,
    p2p: HashMap<u64, VecDeque<Vec<u8>>>,
    fault: Option<PeerFault>,
}

/// Arrived messages of one rank, from every peer.
pub(crate) struct Mailbox {
    own_rank: usize,
    peers: Mutex<Vec<PeerBox>>,
    arrived: Condvar,
    stats: Arc<StatsCounters>,
}

impl Mailbox {
    /// The mailbox of `own_rank`; received bytes are counted in `stats` except what the rank
    /// sends itself.
    pub(crate) fn new(own_rank: usize, world_size: usize, stats: Arc<StatsCounters>) -> Self {
        Mailbox {
            own_rank,
            peers: Mutex::new((0..world_size).map(|_| PeerBox::default()).collect()),
            arrived: Condvar::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PeerBox>> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the group, so keep going with the data as it is.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `peer`'s message of collective `seq`. A second message for the same sequence
    /// number is a protocol violation (the caller marks the peer failed).
    pub(crate) fn deliver_collective(
        &self,
        peer: usize,
        seq: u64,
        kind: CollectiveKind,
        data: Vec<u8>,
    ) -> Result<(), String> {
        let len = data.len();
        {
            let mut peers = self.lock();
            let Some(pb) = peers.get_mut(peer) else {
                return Err(format!("no rank {peer} in this group"));
            };
            if pb.collectives.contains_key(&seq) {
                return Err(format!(
                    "second message for collective #{seq} ({})",
                    kind.name()
                ));
            }
            pb.collectives.insert(seq, (kind, data));
        }
        self.stats.record_received(peer, len);
        self.arrived.notify_all();
        Ok(())
    }

    /// Queues `peer`'s point-to-point message with `tag` (FIFO per tag).
    pub(crate) fn deliver_p2p(&self, peer: usize, tag: u64, data: Vec<u8>) {
        let len = data.len();
        {
            let mut peers = self.lock();
            let Some(pb) = peers.get_mut(peer) else {
                return;
            };
            pb.p2p.entry(tag).or_default().push_back(data);
        }
        if peer != self.own_rank {
            self.stats.record_received(peer, len);
        }
        self.arrived.notify_all();
    }

    /// Records that `peer` failed (the first reason wins) and wakes every waiting operation.
    pub(crate) fn fail(&self, peer: usize, fault: PeerFault) {
        {
            let mut peers = self.lock();
            if let Some(pb) = peers.get_mut(peer) {
                if pb.fault.is_none() {
                    pb.fault = Some(fault);
                }
            }
        }
        self.arrived.notify_all();
    }

    /// The recorded failure of `peer`, if any.
    pub(crate) fn fault(&self, peer: usize) -> Option<PeerFault> {
        self.lock().get(peer).and_then(|pb| pb.fault.clone())
    }

    /// Waits for one message of collective `seq` from each of `from` and returns them in the
    /// same order. Fails as soon as a peer whose message is missing has failed, when a peer's
    /// message belongs to another collective, or at `deadline`.
    pub(crate) fn collect(
        &self,
        kind: CollectiveKind,
        seq: u64,
        from: &[usize],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, CommError> {
        let mut got: Vec<Option<Vec<u8>>> = vec![None; from.len()];
        let mut missing = from.len();
        let mut peers = self.lock();
        loop {
            for (slot, &peer) in got.iter_mut().zip(from) {
                if slot.is_some() {
                    continue;
                }
                let Some(pb) = peers.get_mut(peer) else {
                    return Err(CommError::InvalidArgument(format!(
                        "no rank {peer} in this group"
                    )));
                };
                if let Some((their_kind, data)) = pb.collectives.remove(&seq) {
                    if their_kind != kind {
                        return Err(CommError::protocol(
                            peer,
                            format!(
                                "collective #{seq} is {} there but {} here: ranks called collectives in different orders",
                                their_kind.name(),
                                kind.name()
                            ),
                        ));
                    }
                    *slot = Some(data);
                    missing -= 1;
                }
            }
            if missing == 0 {
                return Ok(got.into_iter().map(Option::unwrap_or_default).collect());
            }
            for (slot, &peer) in got.iter().zip(from) {
                if slot.is_none() {
                    if let Some(fault) = peers.get(peer).and_then(|pb| pb.fault.as_ref()) {
                        return Err(fault.to_error(peer));
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let peer = got
                    .iter()
                    .zip(from)
                    .find(|(slot, _)| slot.is_none())
                    .map_or(0, |(_, &p)| p);
                return Err(CommError::Timeout {
                    op: kind.name(),
                    peer,
                    after: timeout,
                });
            }
            peers = self
                .arrived
                .wait_timeout(peers, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for the next point-to-point message from `peer` with `tag`.
    pub(crate) fn take_p2p(
        &self,
        peer: usize,
        tag: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<u8>, CommError> {
        let mut peers = self.lock();
        loop {
            let Some(pb) = peers.get_mut(peer) else {
                return Err(CommError::InvalidArgument(format!(
                    "no rank {peer} in this group"
                )));
            };
            if let Some(queue) = pb.p2p.get_mut(&tag) {
                if let Some(data) = queue.pop_front() {
                    if queue.is_empty() {
                        pb.p2p.remove(&tag);
                    }
                    return Ok(data);
                }
            }
            if let Some(fault) = &pb.fault {
                return Err(fault.to_error(peer));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CommError::Timeout {
                    op: "recv",
                    peer,
                    after: timeout,
                });
            }
            peers = self
                .arrived
                .wait_timeout(peers, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
