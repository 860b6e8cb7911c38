//! Forming the mesh of connections, once per group: rank i dials every rank j < i and accepts
//! every rank j > i, so each pair has exactly one persistent connection and nobody waits on
//! a cycle (rank 0 only accepts; every dial targets a rank that finished its own dialling or
//! will, and is queued in the listen backlog until then).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use super::config::TcpConfig;
use super::handshake::{self, Hello};
use crate::error::{CommError, PeerId};

/// Pause between accept polls while waiting for higher ranks.
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// Longest pause between dial attempts to a peer that is not listening yet.
const MAX_DIAL_BACKOFF: Duration = Duration::from_millis(500);

/// Returns one handshaken stream per peer, indexed by rank (`None` at our own rank).
pub(crate) fn establish(
    listener: &TcpListener,
    ours: &Hello,
    peers: &[String],
    cfg: &TcpConfig,
) -> Result<Vec<Option<TcpStream>>, CommError> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut streams: Vec<Option<TcpStream>> = (0..peers.len()).map(|_| None).collect();
    for (peer, addr) in peers.iter().enumerate().take(ours.rank) {
        let mut stream = dial(addr, peer, deadline, cfg.connect_timeout)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        handshake::as_dialer(
            &mut stream,
            ours,
            peer,
            remaining.max(Duration::from_millis(1)),
        )?;
        tracing::debug!(rank = ours.rank, peer, %addr, "connected");
        streams[peer] = Some(stream);
    }
    accept_higher(listener, ours, &mut streams, deadline, cfg)?;
    Ok(streams)
}

fn dial(
    addr: &str,
    peer: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, CommError> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let err = match resolve(addr) {
            Ok(addrs) => match connect_any(&addrs, deadline) {
                Ok(s) => return Ok(s),
                Err(e) => e,
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(CommError::InvalidArgument(format!(
                    "address {addr:?} of rank {peer} is not host:port: {e}"
                )))
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(peer, %addr, error = %err, "giving up dialling");
            return Err(CommError::Timeout {
                op: "connect",
                peer,
                after: timeout,
            });
        }
        tracing::debug!(peer, %addr, error = %err, "peer not reachable yet, retrying");
        thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_DIAL_BACKOFF);
    }
}

fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "name resolved to no address",
        ));
    }
    Ok(addrs)
}

fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(a, remaining) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn accept_higher(
    listener: &TcpListener,
    ours: &Hello,
    streams: &mut [Option<TcpStream>],
    deadline: Instant,
    cfg: &TcpConfig,
) -> Result<(), CommError> {
    let missing = |streams: &[Option<TcpStream>]| {
        (ours.rank + 1..streams.len()).find(|&r| streams[r].is_none())
    };
    if missing(streams).is_none() {
        return Ok(());
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| CommError::io("making the listener non-blocking", e))?;
    while let Some(first_missing) = missing(streams) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| CommError::io("configuring an accepted connection", e))?;
                let hello_timeout = cfg
                    .peer_timeout
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(1));
                match handshake::as_acceptor(&mut stream, ours, hello_timeout)? {
                    None => continue,
                    Some(peer) if streams[peer].is_some() => {
                        return Err(CommError::Protocol {
                            peer: PeerId::Rank(peer),
                            msg: format!("second connection from rank {peer} (from {from})"),
                        })
                    }
                    Some(peer) => {
                        tracing::debug!(rank = ours.rank, peer, %from, "accepted");
                        streams[peer] = Some(stream);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CommError::Timeout {
                        op: "accept",
                        peer: first_missing,
                        after: cfg.connect_timeout,
                    });
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CommError::io("accepting a peer connection", e)),
        }
    }
    Ok(())
}
