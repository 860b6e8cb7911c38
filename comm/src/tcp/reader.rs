//! The receiving half of one connection: a thread that drains frames as they arrive into the
//! communicator's mailbox, so that a peer's writes never block on our progress (no write/write
//! deadlock in all-to-all), and that notices when the peer dies, closes or goes silent.

use std::io::{self, BufReader, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::Control;
use super::frame::{FrameKind, Header, HEADER_LEN};
use super::handshake::is_timeout;
use crate::mailbox::{Mailbox, PeerFault};

/// Buffer for small frames; large payloads bypass it and land directly in their `Vec`.
const READ_BUFFER: usize = 64 * 1024;

/// Why the reader stopped.
enum Stop {
    /// The communicator is closing; not the peer's fault.
    Closing,
    Fault(PeerFault),
}

pub(crate) struct Reader {
    peer: usize,
    stream: BufReader<TcpStream>,
    mailbox: Arc<Mailbox>,
    control: Arc<Control>,
    peer_timeout: Duration,
    poll_interval: Duration,
    max_frame_bytes: u64,
    last_seen: Instant,
}

impl Reader {
    /// `stream` must have a read timeout of `poll_interval` set, so that the reader wakes up to
    /// check for silence and shutdown.
    pub(crate) fn new(
        peer: usize,
        stream: TcpStream,
        mailbox: Arc<Mailbox>,
        control: Arc<Control>,
        peer_timeout: Duration,
        poll_interval: Duration,
        max_frame_bytes: u64,
    ) -> Reader {
        Reader {
            peer,
            stream: BufReader::with_capacity(READ_BUFFER, stream),
            mailbox,
            control,
            peer_timeout,
            poll_interval,
            max_frame_bytes,
            last_seen: Instant::now(),
        }
    }

    /// Thread body: reads until the communicator closes or the peer fails, then records the
    /// failure (which wakes every waiting operation).
    pub(crate) fn run(mut self) {
        let Stop::Fault(fault) = self.serve() else {
            return;
        };
        if self.control.is_stopping() {
            return;
        }
        tracing::warn!(peer = self.peer, ?fault, "peer failed");
        self.mailbox.fail(self.peer, fault);
    }

    fn serve(&mut self) -> Stop {
        loop {
            let mut hb = [0u8; HEADER_LEN];
            if let Err(stop) = self.fill(&mut hb, true) {
                return stop;
            }
            let header = match Header::decode(&hb, self.max_frame_bytes) {
                Ok(h) => h,
                Err(msg) => return Stop::Fault(PeerFault::Protocol(msg)),
            };
            let payload = match self.payload(header.len) {
                Ok(p) => p,
                Err(stop) => return stop,
            };
            match header.kind {
                FrameKind::Heartbeat => {}
                FrameKind::Collective(kind) => {
                    if let Err(msg) = self
                        .mailbox
                        .deliver_collective(self.peer, header.tag, kind, payload)
                    {
                        return Stop::Fault(PeerFault::Protocol(msg));
                    }
                }
                FrameKind::P2p => self.mailbox.deliver_p2p(self.peer, header.tag, payload),
                FrameKind::Abort => {
                    let reason = String::from_utf8_lossy(&payload).into_owned();
                    return Stop::Fault(PeerFault::Lost(format!("aborted the group: {reason}")));
                }
                FrameKind::Hello => {
                    return Stop::Fault(PeerFault::Protocol(
                        "unexpected hello frame after the handshake".into(),
                    ))
                }
            }
        }
    }

    fn payload(&mut self, len: u64) -> Result<Vec<u8>, Stop> {
        let len = usize::try_from(len).map_err(|_| {
            Stop::Fault(PeerFault::Protocol(format!(
                "payload length {len} does not fit this machine"
            )))
        })?;
        let mut data = Vec::new();
        if data.try_reserve_exact(len).is_err() {
            return Err(Stop::Fault(PeerFault::Lost(format!(
                "cannot allocate {len} bytes for its frame"
            ))));
        }
        data.resize(len, 0);
        self.fill(&mut data, false)?;
        Ok(data)
    }

    /// Fills `buf` from the socket, waking every poll interval to check for silence (nothing
    /// at all from the peer for `peer_timeout`) and for the communicator closing.
    fn fill(&mut self, buf: &mut [u8], frame_start: bool) -> Result<(), Stop> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.control.is_silent() {
                if self.control.sleep(self.poll_interval) {
                    return Err(Stop::Closing);
                }
                continue;
            }
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    if self.control.is_stopping() {
                        return Err(Stop::Closing);
                    }
                    let reason = if frame_start && filled == 0 {
                        "closed the connection".to_string()
                    } else {
                        "closed the connection in the middle of a frame".to_string()
                    };
                    return Err(Stop::Fault(PeerFault::Lost(reason)));
                }
                Ok(n) => {
                    filled += n;
                    self.last_seen = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if self.control.is_stopping() {
                        return Err(Stop::Closing);
                    }
                    let silent_for = self.last_seen.elapsed();
                    if silent_for > self.peer_timeout {
                        return Err(Stop::Fault(PeerFault::Lost(format!(
                            "silent for {silent_for:?}: no data and no heartbeat within peer_timeout {:?}",
                            self.peer_timeout
                        ))));
                    }
                }
                Err(e) => {
                    if self.control.is_stopping() {
                        return Err(Stop::Closing);
                    }
                    return Err(Stop::Fault(PeerFault::Lost(format!(
                        "connection failed: {e}"
                    ))));
                }
            }
        }
        Ok(())
    }
}
