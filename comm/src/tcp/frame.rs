//! The wire format: every message is one frame, a fixed 24-byte header followed by the
//! payload. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "MOEF"
//!      4     2  protocol version (1)
//!      6     2  frame kind (hello, heartbeat, all-to-all, all-gather, barrier, p2p, abort)
//!      8     8  collective sequence number, or point-to-point tag
//!     16     8  payload length in bytes
//! ```
//!
//! Everything read is validated before any payload is allocated: a wrong magic or version, an
//! unknown kind or a length over the limit is a protocol error naming the field.

use std::io::{self, IoSlice, Write};

use crate::mailbox::CollectiveKind;

/// First bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"MOEF";
/// Protocol version this build speaks; peers must speak the same.
pub(crate) const VERSION: u16 = 1;
/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 24;
/// Limit for control payloads (hello, abort reason), whatever `max_frame_bytes` says.
pub(crate) const CONTROL_MAX_BYTES: u64 = 64 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// Handshake: group identity of the sender (first frame on a connection, both ways).
    Hello,
    /// "Still alive"; no payload.
    Heartbeat,
    /// A collective's message; the tag is the collective's sequence number.
    Collective(CollectiveKind),
    /// Point-to-point message; the tag is the caller's.
    P2p,
    /// The sender gave up on the group; payload is the reason (UTF-8).
    Abort,
}

impl FrameKind {
    fn code(self) -> u16 {
        match self {
            FrameKind::Hello => 1,
            FrameKind::Heartbeat => 2,
            FrameKind::Collective(CollectiveKind::AllToAll) => 3,
            FrameKind::Collective(CollectiveKind::AllGather) => 4,
            FrameKind::Collective(CollectiveKind::Barrier) => 5,
            FrameKind::P2p => 6,
            FrameKind::Abort => 7,
        }
    }

    fn from_code(code: u16) -> Option<FrameKind> {
        Some(match code {
            1 => FrameKind::Hello,
            2 => FrameKind::Heartbeat,
            3 => FrameKind::Collective(CollectiveKind::AllToAll),
            4 => FrameKind::Collective(CollectiveKind::AllGather),
            5 => FrameKind::Collective(CollectiveKind::Barrier),
            6 => FrameKind::P2p,
            7 => FrameKind::Abort,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "hello",
            FrameKind::Heartbeat => "heartbeat",
            FrameKind::Collective(k) => k.name(),
            FrameKind::P2p => "p2p",
            FrameKind::Abort => "abort",
        }
    }

    /// Largest payload this kind may carry.
    fn max_len(self, max_frame_bytes: u64) -> u64 {
        match self {
            FrameKind::Heartbeat | FrameKind::Collective(CollectiveKind::Barrier) => 0,
            FrameKind::Hello | FrameKind::Abort => CONTROL_MAX_BYTES,
            FrameKind::Collective(_) | FrameKind::P2p => max_frame_bytes,
        }
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: FrameKind,
    pub tag: u64,
    pub len: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.code().to_le_bytes());
        b[8..16].copy_from_slice(&self.tag.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Validates and decodes a header; the error names the offending field.
    pub(crate) fn decode(b: &[u8; HEADER_LEN], max_frame_bytes: u64) -> Result<Header, String> {
        if b[0..4] != MAGIC {
            return Err(format!(
                "bad magic {:02x?} (expected {:02x?} \"MOEF\"): not a moeflow comm connection",
                &b[0..4],
                MAGIC
            ));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(format!(
                "protocol version {version}, this build speaks version {VERSION}"
            ));
        }
        let code = u16::from_le_bytes([b[6], b[7]]);
        let kind =
            FrameKind::from_code(code).ok_or_else(|| format!("unknown frame kind {code}"))?;
        let tag = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        let len = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
        let max = kind.max_len(max_frame_bytes);
        if len > max {
            return Err(format!(
                "payload length {len} of a {} frame is over the limit of {max} bytes",
                kind.name()
            ));
        }
        Ok(Header { kind, tag, len })
    }
}

/// Writes one frame: header and payload in as few system calls as the kernel allows, without
/// copying the payload.
pub(crate) fn write_frame<W: Write>(
    w: &mut W,
    kind: FrameKind,
    tag: u64,
    payload: &[u8],
) -> io::Result<()> {
    let header = Header {
        kind,
        tag,
        len: payload.len() as u64,
    }
    .encode();
    write_all_two(w, &header, payload)
}

/// `write_all` of two buffers with vectored writes (std's `write_all_vectored` is unstable).
fn write_all_two<W: Write>(w: &mut W, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut a_off = 0;
    let mut b_off = 0;
    while a_off < a.len() {
        match w.write_vectored(&[IoSlice::new(&a[a_off..]), IoSlice::new(&b[b_off..])]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let rest_a = a.len() - a_off;
                if n <= rest_a {
                    a_off += n;
                } else {
                    a_off = a.len();
                    b_off += n - rest_a;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.write_all(&b[b_off..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            kind: FrameKind::P2p,
            tag: 0xdead_beef,
            len: 12345,
        };
        assert_eq!(Header::decode(&h.encode(), 1 << 20), Ok(h));
    }

    #[test]
    fn header_validation_names_the_field() {
        let good = Header {
            kind: FrameKind::Collective(CollectiveKind::AllToAll),
            tag: 1,
            len: 10,
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert!(Header::decode(&b, 100).unwrap_err().contains("magic"));
        let mut b = good;
        b[4] = 9;
        assert!(Header::decode(&b, 100).unwrap_err().contains("version"));
        let mut b = good;
        b[6] = 99;
        assert!(Header::decode(&b, 100).unwrap_err().contains("kind"));
        assert!(Header::decode(&good, 5).unwrap_err().contains("limit"));
        let hb = Header {
            kind: FrameKind::Heartbeat,
            tag: 0,
            len: 1,
        }
        .encode();
        assert!(Header::decode(&hb, 100).unwrap_err().contains("heartbeat"));
    }

    /// A writer that accepts at most 7 bytes per call, to exercise partial vectored writes.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_every_byte() {
        let payload: Vec<u8> = (0..100u8).collect();
        let mut w = Trickle(Vec::new());
        write_frame(&mut w, FrameKind::P2p, 3, &payload).unwrap();
        assert_eq!(w.0.len(), HEADER_LEN + payload.len());
        assert_eq!(&w.0[HEADER_LEN..], &payload[..]);
    }
}
