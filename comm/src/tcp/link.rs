//! The sending half of one connection: frames from the operation thread and heartbeats from a
//! background thread share one socket without interleaving, and a heartbeat never waits
//! behind a large frame (the frame's bytes already prove we are alive).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::Duration;

use super::control::Control;
use super::frame::{write_frame, FrameKind};
use super::handshake::is_timeout;
use crate::mailbox::{Mailbox, PeerFault};

pub(crate) struct Link {
    pub(crate) peer: usize,
    writer: Mutex<TcpStream>,
    /// A second handle on the socket, to shut it down while a writer may hold the lock.
    closer: TcpStream,
}

impl Link {
    pub(crate) fn new(peer: usize, stream: TcpStream) -> io::Result<Link> {
        let closer = stream.try_clone()?;
        Ok(Link {
            peer,
            writer: Mutex::new(stream),
            closer,
        })
    }

    /// Writes one frame; blocks while the socket buffer is full, at most the socket's write
    /// timeout (the peer timeout) without progress.
    pub(crate) fn send(&self, kind: FrameKind, tag: u64, payload: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *w, kind, tag, payload)
    }

    /// Sends a heartbeat unless a frame is being written right now.
    fn try_heartbeat(&self) -> io::Result<()> {
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(TryLockError::WouldBlock) => return Ok(()),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        write_frame(&mut *w, FrameKind::Heartbeat, 0, &[])
    }

    /// Closes both directions; wakes this connection's reader and any blocked writer.
    pub(crate) fn shutdown(&self) {
        // Already closed by the peer is fine.
        let _ = self.closer.shutdown(Shutdown::Both);
    }
}

/// What a failed write means for the group.
pub(crate) fn write_fault(e: &io::Error, peer_timeout: Duration) -> PeerFault {
    if is_timeout(e) {
        PeerFault::Lost(format!(
            "not reading: a write made no progress for {peer_timeout:?} (peer_timeout)"
        ))
    } else {
        PeerFault::Lost(format!("connection failed while sending: {e}"))
    }
}

/// Body of a connection's heartbeat thread: one heartbeat per `interval` until the
/// communicator stops or the peer has failed.
pub(crate) fn heartbeat_loop(
    link: Arc<Link>,
    mailbox: Arc<Mailbox>,
    control: Arc<Control>,
    interval: Duration,
    peer_timeout: Duration,
) {
    while !control.sleep(interval) {
        if control.is_silent() {
            continue;
        }
        if mailbox.fault(link.peer).is_some() {
            return;
        }
        if let Err(e) = link.try_heartbeat() {
            if control.is_stopping() {
                return;
            }
            let fault = write_fault(&e, peer_timeout);
            tracing::warn!(peer = link.peer, ?fault, "heartbeat failed");
            mailbox.fail(link.peer, fault);
            link.shutdown();
            return;
        }
    }
}
