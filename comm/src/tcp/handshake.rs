//! The handshake on every new connection: both sides send a hello frame with their group
//! identity, rank and group size, and both check the other's. Anything that differs is refused
//! with [`CommError::Mismatch`] naming the field, so a worker of another model, plan version
//! or group never exchanges activations with this one.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use super::frame::{write_frame, FrameKind, Header, CONTROL_MAX_BYTES, HEADER_LEN};
use crate::error::{CommError, PeerId};
use crate::identity::GroupIdentity;

/// What each side of a connection says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub rank: usize,
    pub world_size: usize,
    pub identity: GroupIdentity,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.identity.group_id.len());
        out.extend_from_slice(&(self.rank as u64).to_le_bytes());
        out.extend_from_slice(&(self.world_size as u64).to_le_bytes());
        out.extend_from_slice(&self.identity.plan_version.to_le_bytes());
        for s in [&self.identity.group_id, &self.identity.model_fingerprint] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Hello, String> {
        let mut r = Cursor { b, at: 0 };
        let rank = r.u64("rank")?;
        let world_size = r.u64("world size")?;
        let plan_version = r.u64("plan version")?;
        let group_id = r.string("group id")?;
        let model_fingerprint = r.string("model fingerprint")?;
        if r.at != b.len() {
            return Err(format!("{} trailing bytes after the hello", b.len() - r.at));
        }
        let to_usize = |v: u64, field: &str| {
            usize::try_from(v).map_err(|_| format!("{field} {v} does not fit this machine"))
        };
        Ok(Hello {
            rank: to_usize(rank, "rank")?,
            world_size: to_usize(world_size, "world size")?,
            identity: GroupIdentity {
                group_id,
                model_fingerprint,
                plan_version,
            },
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, field: &str) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("hello ends inside the {field} field"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        let s = self.take(8, field)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }

    fn string(&mut self, field: &str) -> Result<String, String> {
        let s = self.take(4, field)?;
        let len = u32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as usize;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{field} is not UTF-8"))
    }
}

/// Checks the other side's hello against ours; `expected_rank` is the rank we dialled, or
/// `None` on the accepting side (then the peer must be a higher rank than ours).
pub(crate) fn check(
    ours: &Hello,
    theirs: &Hello,
    expected_rank: Option<usize>,
) -> Result<(), CommError> {
    let peer = theirs.rank;
    let mismatch = |what: &'static str, a: String, b: String| CommError::Mismatch {
        peer,
        what,
        ours: a,
        theirs: b,
    };
    if theirs.identity.group_id != ours.identity.group_id {
        return Err(mismatch(
            "group id",
            ours.identity.group_id.clone(),
            theirs.identity.group_id.clone(),
        ));
    }
    if theirs.identity.model_fingerprint != ours.identity.model_fingerprint {
        return Err(mismatch(
            "model fingerprint",
            ours.identity.model_fingerprint.clone(),
            theirs.identity.model_fingerprint.clone(),
        ));
    }
    if theirs.identity.plan_version != ours.identity.plan_version {
        return Err(mismatch(
            "plan version",
            ours.identity.plan_version.to_string(),
            theirs.identity.plan_version.to_string(),
        ));
    }
    if theirs.world_size != ours.world_size {
        return Err(mismatch(
            "world size",
            ours.world_size.to_string(),
            theirs.world_size.to_string(),
        ));
    }
    let rank_ok = match expected_rank {
        Some(r) => theirs.rank == r,
        None => theirs.rank > ours.rank && theirs.rank < ours.world_size,
    };
    if !rank_ok {
        let expected = match expected_rank {
            Some(r) => r.to_string(),
            None => format!("one of {}..{}", ours.rank + 1, ours.world_size),
        };
        return Err(mismatch("rank", expected, theirs.rank.to_string()));
    }
    Ok(())
}

/// Dialling side: send our hello, read and check theirs. `peer` is the rank we dialled.
pub(crate) fn as_dialer(
    stream: &mut TcpStream,
    ours: &Hello,
    peer: usize,
    timeout: Duration,
) -> Result<(), CommError> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| CommError::io("setting the handshake timeout", e))?;
    write_frame(stream, FrameKind::Hello, 0, &ours.encode()).map_err(|e| CommError::PeerLost {
        peer,
        reason: format!("sending the handshake failed: {e}"),
    })?;
    let theirs = match read_hello(stream) {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Err(CommError::PeerLost {
                peer,
                reason: "closed the connection during the handshake".into(),
            })
        }
        Err(HelloError::Io(e)) if is_timeout(&e) => {
            return Err(CommError::Timeout {
                op: "handshake",
                peer,
                after: timeout,
            })
        }
        Err(HelloError::Io(e)) => {
            return Err(CommError::PeerLost {
                peer,
                reason: format!("handshake failed: {e}"),
            })
        }
        Err(HelloError::Invalid(msg)) => return Err(CommError::protocol(peer, msg)),
    };
    check(ours, &theirs, Some(peer))
}

/// Accepting side: read their hello, answer with ours (so that the dialler learns about a
/// mismatch too), then check theirs. `Ok(None)`: the connection closed or stayed silent
/// without sending a byte (a TCP health probe, a port scan) and should just be dropped.
pub(crate) fn as_acceptor(
    stream: &mut TcpStream,
    ours: &Hello,
    timeout: Duration,
) -> Result<Option<usize>, CommError> {
    let from = stream
        .peer_addr()
        .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| CommError::io("setting the handshake timeout", e))?;
    let theirs = match read_hello(stream) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(HelloError::Io(e)) => {
            tracing::debug!(%from, error = %e, "dropping a connection that sent no handshake");
            return Ok(None);
        }
        Err(HelloError::Invalid(msg)) => {
            return Err(CommError::Protocol {
                peer: PeerId::Unidentified(from),
                msg,
            })
        }
    };
    // Answer before judging, so that the other side reports the same mismatch.
    if let Err(e) = write_frame(stream, FrameKind::Hello, 0, &ours.encode()) {
        tracing::debug!(%from, error = %e, "could not answer a handshake");
    }
    check(ours, &theirs, None)?;
    Ok(Some(theirs.rank))
}

enum HelloError {
    Io(io::Error),
    Invalid(String),
}

/// Reads one hello frame. `Ok(None)`: end of stream before the first byte.
fn read_hello(stream: &mut TcpStream) -> Result<Option<Hello>, HelloError> {
    let mut hb = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match stream.read(&mut hb[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(HelloError::Invalid(format!(
                    "connection closed after {filled} bytes of the handshake header"
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HelloError::Io(e)),
        }
    }
    let header = Header::decode(&hb, CONTROL_MAX_BYTES).map_err(HelloError::Invalid)?;
    if header.kind != FrameKind::Hello {
        return Err(HelloError::Invalid(format!(
            "expected a hello frame first, got kind {:?}",
            header.kind
        )));
    }
    let mut payload = vec![0u8; header.len as usize];
    stream.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HelloError::Invalid("connection closed inside the hello payload".into())
        } else {
            HelloError::Io(e)
        }
    })?;
    Hello::decode(&payload)
        .map(Some)
        .map_err(HelloError::Invalid)
}

/// Whether an I/O error is a socket timeout (Linux reports `WouldBlock`, others `TimedOut`).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(rank: usize) -> Hello {
        Hello {
            rank,
            world_size: 4,
            identity: GroupIdentity {
                group_id: "g".into(),
                model_fingerprint: "m".into(),
                plan_version: 7,
            },
        }
    }

    #[test]
    fn hello_round_trip() {
        let h = hello(3);
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn truncated_hello_names_the_field() {
        let b = hello(1).encode();
        let err = Hello::decode(&b[..b.len() - 1]).unwrap_err();
        assert!(err.contains("model fingerprint"), "{err}");
    }

    #[test]
    fn check_names_what_differs() {
        let ours = hello(0);
        let mut theirs = hello(2);
        theirs.identity.plan_version = 8;
        match check(&ours, &theirs, None) {
            Err(CommError::Mismatch { what, .. }) => assert_eq!(what, "plan version"),
            other => panic!("{other:?}"),
        }
        let theirs = hello(0);
        match check(&hello(1), &theirs, None) {
            Err(CommError::Mismatch { what, .. }) => assert_eq!(what, "rank"),
            other => panic!("{other:?}"),
        }
        assert!(check(&ours, &hello(2), None).is_ok());
    }
}
