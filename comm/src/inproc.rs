//! In-process backend: the ranks are threads of one process and "sending" is a push into the
//! receiver's mailbox. Unit tests of anything built on [`Communicator`] (the worker's MoE
//! dispatch, accounting) use it to run a whole group without sockets; it follows the same
//! matching, failure and abort rules as the TCP backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::CommError;
use crate::mailbox::{CollectiveKind, Mailbox, PeerFault};
use crate::stats::{CommStats, StatsCounters};
use crate::{check_peer, check_send_count, Communicator};

/// How long a collective waits for a live rank that never joins it, by default.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(60);

/// One rank of an in-process group; move each into its own thread.
pub struct InProcComm {
    rank: usize,
    mailboxes: Arc<Vec<Arc<Mailbox>>>,
    stats: Arc<StatsCounters>,
    seq: u64,
    op_timeout: Duration,
    aborted: Option<String>,
}

impl InProcComm {
    /// A group of `n` ranks (index = rank). Dropping one makes the others' pending and future
    /// operations involving it fail with [`CommError::PeerLost`].
    pub fn group(n: usize) -> Vec<InProcComm> {
        Self::group_with_timeout(n, DEFAULT_OP_TIMEOUT)
    }

    /// Like [`InProcComm::group`], with the time a collective waits for a live rank that does
    /// not take part before failing with [`CommError::Timeout`].
    pub fn group_with_timeout(n: usize, op_timeout: Duration) -> Vec<InProcComm> {
        let stats: Vec<Arc<StatsCounters>> =
            (0..n).map(|_| Arc::new(StatsCounters::new(n))).collect();
        let mailboxes: Arc<Vec<Arc<Mailbox>>> = Arc::new(
            stats
                .iter()
                .enumerate()
                .map(|(rank, s)| Arc::new(Mailbox::new(rank, n, s.clone())))
                .collect(),
        );
        stats
            .into_iter()
            .enumerate()
            .map(|(rank, stats)| InProcComm {
                rank,
                mailboxes: mailboxes.clone(),
                stats,
                seq: 0,
                op_timeout,
                aborted: None,
            })
            .collect()
    }

    fn own(&self) -> &Mailbox {
        &self.mailboxes[self.rank]
    }

    fn others(&self) -> Vec<usize> {
        let n = self.mailboxes.len();
        (1..n).map(|k| (self.rank + k) % n).collect()
    }

    fn check_usable(&self) -> Result<(), CommError> {
        match &self.aborted {
            Some(reason) => Err(CommError::Aborted {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Sends one collective message; fails if the receiver is already known to be gone.
    fn post(
        &self,
        peer: usize,
        seq: u64,
        kind: CollectiveKind,
        data: Vec<u8>,
    ) -> Result<(), CommError> {
        if let Some(fault) = self.own().fault(peer) {
            return Err(fault.to_error(peer));
        }
        let len = data.len();
        self.mailboxes[peer]
            .deliver_collective(self.rank, seq, kind, data)
            .map_err(|msg| CommError::protocol(self.rank, msg))?;
        self.stats.record_sent(peer, len);
        Ok(())
    }

    /// Runs one collective: posts `outgoing` (peer, data) and collects one message from every
    /// other rank. A failure aborts the communicator and tells the peers.
    fn collective(
        &mut self,
        kind: CollectiveKind,
        outgoing: Vec<(usize, Vec<u8>)>,
    ) -> Result<Vec<Vec<u8>>, CommError> {
        self.check_usable()?;
        let seq = self.seq;
        self.seq += 1;
        let deadline = Instant::now() + self.op_timeout;
        let result = outgoing
            .into_iter()
            .try_for_each(|(peer, data)| self.post(peer, seq, kind, data))
            .and_then(|()| {
                self.own()
                    .collect(kind, seq, &self.others(), deadline, self.op_timeout)
            });
        result.inspect_err(|err| self.abort(err))
    }

    fn abort(&mut self, err: &CommError) {
        let reason = format!("rank {} aborted the group: {err}", self.rank);
        for peer in self.others() {
            self.mailboxes[peer].fail(self.rank, PeerFault::Lost(reason.clone()));
        }
        self.aborted = Some(err.to_string());
    }
}

impl Communicator for InProcComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.mailboxes.len()
    }

    fn all_to_all_v(&mut self, mut send: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CommError> {
        check_send_count(&send, self.world_size())?;
        let own = std::mem::take(&mut send[self.rank]);
        let others = self.others();
        let outgoing = others
            .iter()
            .map(|&p| (p, std::mem::take(&mut send[p])))
            .collect();
        let got = self.collective(CollectiveKind::AllToAll, outgoing)?;
        Ok(assemble(self.rank, own, &others, got))
    }

    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let others = self.others();
        let outgoing = others.iter().map(|&p| (p, data.to_vec())).collect();
        let got = self.collective(CollectiveKind::AllGather, outgoing)?;
        Ok(assemble(self.rank, data.to_vec(), &others, got))
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        let outgoing = self.others().into_iter().map(|p| (p, Vec::new())).collect();
        self.collective(CollectiveKind::Barrier, outgoing)
            .map(|_| ())
    }

    fn send(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<(), CommError> {
        check_peer(peer, self.world_size())?;
        if peer != self.rank {
            if let Some(fault) = self.own().fault(peer) {
                return Err(fault.to_error(peer));
            }
            self.stats.record_sent(peer, data.len());
        }
        self.mailboxes[peer].deliver_p2p(self.rank, tag, data.to_vec());
        Ok(())
    }

    fn recv(&mut self, peer: usize, tag: u64) -> Result<Vec<u8>, CommError> {
        check_peer(peer, self.world_size())?;
        let deadline = Instant::now() + self.op_timeout;
        self.own().take_p2p(peer, tag, deadline, self.op_timeout)
    }

    fn stats(&self) -> CommStats {
        self.stats.snapshot()
    }
}

impl Drop for InProcComm {
    fn drop(&mut self) {
        let reason = format!("rank {} closed its communicator", self.rank);
        for peer in self.others() {
            self.mailboxes[peer].fail(self.rank, PeerFault::Lost(reason.clone()));
        }
    }
}

/// Puts the received messages (in `others` order) and our own part in rank order.
pub(crate) fn assemble(
    rank: usize,
    own: Vec<u8>,
    others: &[usize],
    got: Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![Vec::new(); others.len() + 1];
    out[rank] = own;
    for (&peer, data) in others.iter().zip(got) {
        out[peer] = data;
    }
    out
}
