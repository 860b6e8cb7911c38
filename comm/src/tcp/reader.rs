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
            if let Err(stop) = self.fill(&mut hb) {
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

    /// Reads a payload of `len` bytes straight into a `Vec` of that capacity (no zero-fill:
    /// `read_to_end` reads into the spare capacity), in pieces so that silence and shutdown
    /// are still noticed in the middle of a large frame.
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
        while data.len() < len {
            self.wait_while_silent()?;
            let before = data.len();
            let want = (len - before) as u64;
            let result = (&mut self.stream).take(want).read_to_end(&mut data);
            if data.len() > before {
                self.last_seen = Instant::now();
            }
            match result {
                Ok(_) if data.len() == len => {}
                Ok(_) => {
                    if self.control.is_stopping() {
                        return Err(Stop::Closing);
                    }
                    return Err(Stop::Fault(PeerFault::Lost(
                        "closed the connection in the middle of a frame".into(),
                    )));
                }
                Err(e) => self.on_read_error(&e)?,
            }
        }
        Ok(data)
    }

    /// Test hook: a silent rank stops reading (it stays connected).
    fn wait_while_silent(&self) -> Result<(), Stop> {
        while self.control.is_silent() {
            if self.control.sleep(self.poll_interval) {
                return Err(Stop::Closing);
            }
        }
        Ok(())
    }

    /// A read error: a timeout is fine unless the peer has been silent for too long (or we
    /// are closing); anything else ends the connection.
    fn on_read_error(&self, e: &io::Error) -> Result<(), Stop> {
        if self.control.is_stopping() {
            return Err(Stop::Closing);
        }
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(());
        }
        if is_timeout(e) {
            let silent_for = self.last_seen.elapsed();
            if silent_for > self.peer_timeout {
                return Err(Stop::Fault(PeerFault::Lost(format!(
                    "silent for {silent_for:?}: no data and no heartbeat within peer_timeout {:?}",
                    self.peer_timeout
                ))));
            }
            return Ok(());
        }
        Err(Stop::Fault(PeerFault::Lost(format!(
            "connection failed: {e}"
        ))))
    }

    /// Fills `buf` (a frame header) from the socket, waking every poll interval to check for
    /// silence (nothing at all from the peer for `peer_timeout`) and for shutdown.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Stop> {
        let mut filled = 0;
        while filled < buf.len() {
            self.wait_while_silent()?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    if self.control.is_stopping() {
                        return Err(Stop::Closing);
                    }
                    let reason = if filled == 0 {
                        "closed the connection"
                    } else {
                        "closed the connection in the middle of a frame"
                    };
                    return Err(Stop::Fault(PeerFault::Lost(reason.into())));
                }
                Ok(n) => {
                    filled += n;
                    self.last_seen = Instant::now();
                }
                Err(e) => self.on_read_error(&e)?,
            }
        }
        Ok(())
    }
}
