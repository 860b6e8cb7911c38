//! TCP backend, the default on CPUs: one persistent connection per pair of ranks, established
//! once when the group forms, across hosts (addresses are "host:port"). Frames are
//! length-prefixed (`frame.rs`), every connection starts with an identity handshake
//! (`handshake.rs`), a reader thread per peer drains incoming frames into the mailbox
//! (`reader.rs`) and a heartbeat thread per peer keeps an idle connection provably alive
//! (`link.rs`). A peer that closes, fails or stays silent for `peer_timeout` is lost, and every
//! operation waiting on it fails at once.

mod config;
mod control;
mod establish;
mod frame;
mod handshake;
mod link;
mod reader;
#[cfg(test)]
mod tests;

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

pub use config::TcpConfig;

use self::control::Control;
use self::frame::FrameKind;
use self::handshake::Hello;
use self::link::{heartbeat_loop, write_fault, Link};
use self::reader::Reader;
use crate::error::CommError;
use crate::identity::GroupIdentity;
use crate::inproc::assemble;
use crate::mailbox::{CollectiveKind, Mailbox};
use crate::stats::{CommStats, StatsCounters};
use crate::{check_peer, check_send_count, Communicator};

/// One rank of a group connected over TCP.
pub struct TcpComm {
    rank: usize,
    world_size: usize,
    identity: GroupIdentity,
    cfg: TcpConfig,
    /// Indexed by rank; `None` at our own rank.
    links: Vec<Option<Arc<Link>>>,
    mailbox: Arc<Mailbox>,
    stats: Arc<StatsCounters>,
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    seq: u64,
    aborted: Option<String>,
}

impl TcpComm {
    /// Forms the group: dials every lower rank, accepts every higher rank on `listener`
    /// (already bound, so that its address could be registered before anyone connects),
    /// and checks every peer's identity in a handshake. `peers[i]` is the "host:port" of rank
    /// `i` (our own entry is not used). Blocks until all connections are up, or fails after
    /// `cfg.connect_timeout` naming the missing rank.
    pub fn connect(
        listener: TcpListener,
        rank: usize,
        peers: Vec<String>,
        identity: GroupIdentity,
        cfg: TcpConfig,
    ) -> Result<TcpComm, CommError> {
        cfg.validate()?;
        let world_size = peers.len();
        if rank >= world_size {
            return Err(CommError::InvalidArgument(format!(
                "rank {rank} out of range for {world_size} peer addresses"
            )));
        }
        let ours = Hello {
            rank,
            world_size,
            identity: identity.clone(),
        };
        let streams = establish::establish(&listener, &ours, &peers, &cfg)?;
        drop(listener);

        let stats = Arc::new(StatsCounters::new(world_size));
        let mailbox = Arc::new(Mailbox::new(rank, world_size, stats.clone()));
        let control = Arc::new(Control::default());
        let mut comm = TcpComm {
            rank,
            world_size,
            identity,
            cfg,
            links: (0..world_size).map(|_| None).collect(),
            mailbox,
            stats,
            control,
            threads: Vec::new(),
            seq: 0,
            aborted: None,
        };
        for (peer, stream) in streams.into_iter().enumerate() {
            if let Some(stream) = stream {
                // On failure `comm` is dropped, which stops the threads started so far.
                comm.start_peer(peer, stream)?;
            }
        }
        tracing::info!(rank, world_size, "TCP group formed");
        Ok(comm)
    }

    fn start_peer(&mut self, peer: usize, stream: std::net::TcpStream) -> Result<(), CommError> {
        let io = |e| CommError::io(format!("configuring the connection to rank {peer}"), e);
        stream.set_nodelay(true).map_err(io)?;
        stream
            .set_write_timeout(Some(self.cfg.peer_timeout))
            .map_err(io)?;
        stream
            .set_read_timeout(Some(self.cfg.poll_interval()))
            .map_err(io)?;
        let read_half = stream.try_clone().map_err(io)?;
        let link = Arc::new(Link::new(peer, stream).map_err(io)?);
        self.links[peer] = Some(link.clone());

        let reader = Reader::new(
            peer,
            read_half,
            self.mailbox.clone(),
            self.control.clone(),
            self.cfg.peer_timeout,
            self.cfg.poll_interval(),
            self.cfg.max_frame_bytes,
        );
        let name = format!("comm{}-rx{peer}", self.rank);
        self.spawn(name, move || reader.run())?;

        let (mailbox, control) = (self.mailbox.clone(), self.control.clone());
        let (interval, timeout) = (self.cfg.heartbeat_interval, self.cfg.peer_timeout);
        let name = format!("comm{}-hb{peer}", self.rank);
        self.spawn(name, move || {
            heartbeat_loop(link, mailbox, control, interval, timeout)
        })
    }

    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), CommError> {
        let handle = thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(|e| CommError::io("starting a comm thread", e))?;
        self.threads.push(handle);
        Ok(())
    }

    /// The identity every peer was checked against.
    pub fn identity(&self) -> &GroupIdentity {
        &self.identity
    }

    /// The configuration in force.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    fn others(&self) -> Vec<usize> {
        (1..self.world_size)
            .map(|k| (self.rank + k) % self.world_size)
            .collect()
    }

    fn check_usable(&self) -> Result<(), CommError> {
        match &self.aborted {
            Some(reason) => Err(CommError::Aborted {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes one frame to `peer`; a failed write marks the peer lost.
    fn post(&self, peer: usize, kind: FrameKind, tag: u64, data: &[u8]) -> Result<(), CommError> {
        if let Some(fault) = self.mailbox.fault(peer) {
            return Err(fault.to_error(peer));
        }
        let Some(link) = self.links.get(peer).and_then(Option::as_ref) else {
            return Err(CommError::InvalidArgument(format!(
                "no connection to rank {peer}"
            )));
        };
        if let Err(e) = link.send(kind, tag, data) {
            let fault = write_fault(&e, self.cfg.peer_timeout);
            self.mailbox.fail(peer, fault.clone());
            link.shutdown();
            return Err(fault.to_error(peer));
        }
        self.stats.record_sent(peer, data.len());
        Ok(())
    }

    /// Runs one collective: writes `payload(peer)` to every other rank (each rank starts
    /// with its right neighbour, so that no rank is everyone's first target), then waits for
    /// one frame of this collective from each. On failure the group is aborted.
    fn collective<'a>(
        &mut self,
        kind: CollectiveKind,
        payload: impl Fn(usize) -> &'a [u8],
    ) -> Result<Vec<Vec<u8>>, CommError> {
        self.check_usable()?;
        let seq = self.seq;
        self.seq += 1;
        let deadline = Instant::now() + self.cfg.op_timeout;
        let others = self.others();
        let result = others
            .iter()
            .try_for_each(|&peer| self.post(peer, FrameKind::Collective(kind), seq, payload(peer)))
            .and_then(|()| {
                self.mailbox
                    .collect(kind, seq, &others, deadline, self.cfg.op_timeout)
            });
        result.inspect_err(|err| self.abort(err))
    }

    /// Tells every reachable peer that this rank gives up on the group (so they fail their
    /// current operation now instead of at a timeout) and refuses further collectives.
    fn abort(&mut self, err: &CommError) {
        tracing::error!(rank = self.rank, error = %err, "collective failed, aborting the group");
        let reason = format!("rank {} failed: {err}", self.rank);
        for peer in self.others() {
            if self.mailbox.fault(peer).is_none() {
                if let Some(link) = &self.links[peer] {
                    // Best effort: the peer may be the one that failed.
                    let _ = link.send(FrameKind::Abort, 0, reason.as_bytes());
                }
            }
        }
        self.aborted = Some(err.to_string());
    }

    /// Test hook: stop reading and sending heartbeats, like a frozen process.
    #[cfg(test)]
    pub(crate) fn go_silent(&self) {
        self.control.set_silent();
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_to_all_v(&mut self, mut send: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CommError> {
        check_send_count(&send, self.world_size)?;
        let own = std::mem::take(&mut send[self.rank]);
        let got = self.collective(CollectiveKind::AllToAll, |peer| &send[peer])?;
        drop(send);
        Ok(assemble(self.rank, own, &self.others(), got))
    }

    fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let got = self.collective(CollectiveKind::AllGather, |_| data)?;
        Ok(assemble(self.rank, data.to_vec(), &self.others(), got))
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.collective(CollectiveKind::Barrier, |_| &[])
            .map(|_| ())
    }

    fn send(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<(), CommError> {
        check_peer(peer, self.world_size)?;
        if peer == self.rank {
            self.mailbox.deliver_p2p(peer, tag, data.to_vec());
            return Ok(());
        }
        self.post(peer, FrameKind::P2p, tag, data)
    }

    fn recv(&mut self, peer: usize, tag: u64) -> Result<Vec<u8>, CommError> {
        check_peer(peer, self.world_size)?;
        let deadline = Instant::now() + self.cfg.op_timeout;
        self.mailbox
            .take_p2p(peer, tag, deadline, self.cfg.op_timeout)
    }

    fn set_plan_version(&mut self, version: u64) {
        self.identity.plan_version = version;
    }

    fn stats(&self) -> CommStats {
        self.stats.snapshot()
    }
}

impl Drop for TcpComm {
    fn drop(&mut self) {
        self.control.stop();
        for link in self.links.iter().flatten() {
            link.shutdown();
        }
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!(rank = self.rank, "a comm thread panicked");
            }
        }
    }
}
