//! Failure tests that need the backend's internals: hand-written frames on raw sockets and a
//! rank that freezes (stops reading and sending heartbeats) without closing its sockets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use super::frame::{write_frame, FrameKind, Header, HEADER_LEN};
use super::handshake::Hello;
use super::{TcpComm, TcpConfig};
use crate::error::{CommError, PeerId};
use crate::identity::GroupIdentity;
use crate::Communicator;

fn identity() -> GroupIdentity {
    GroupIdentity {
        group_id: "unit".into(),
        model_fingerprint: "m".into(),
        plan_version: 1,
    }
}

fn quick() -> TcpConfig {
    TcpConfig {
        peer_timeout: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(20),
        op_timeout: Duration::from_secs(20),
        max_frame_bytes: 1 << 20,
    }
}

/// Rank 0 of a two-rank group, connecting in a thread; rank 1 is played by the test.
fn rank0(cfg: TcpConfig) -> (String, thread::JoinHandle<Result<TcpComm, CommError>>) {
    let l0 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l0.local_addr().expect("addr").to_string();
    let peers = vec![addr.clone(), "127.0.0.1:9".into()];
    let handle = thread::spawn(move || TcpComm::connect(l0, 0, peers, identity(), cfg));
    (addr, handle)
}

/// Plays rank 1 over a raw socket up to the end of a valid handshake.
fn fake_rank1(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let hello = Hello {
        rank: 1,
        world_size: 2,
        identity: identity(),
    };
    write_frame(&mut s, FrameKind::Hello, 0, &hello.encode()).expect("hello");
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).expect("their hello header");
    let h = Header::decode(&hb, 1 << 16).expect("valid header");
    let mut payload = vec![0u8; h.len as usize];
    s.read_exact(&mut payload).expect("their hello");
    assert_eq!(Hello::decode(&payload).expect("hello").rank, 0);
    s
}

#[test]
fn garbage_instead_of_a_handshake_is_a_protocol_error() {
    let (addr, r0) = rank0(quick());
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    match r0.join().expect("rank 0") {
        Err(CommError::Protocol {
            peer: PeerId::Unidentified(_),
            msg,
        }) => assert!(msg.contains("magic"), "{msg}"),
        other => panic!("expected a protocol error, got {:?}", other.err()),
    }
}

#[test]
fn garbage_answer_to_our_handshake_is_a_protocol_error() {
    let l0 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr0 = l0.local_addr().expect("addr").to_string();
    let fake = thread::spawn(move || {
        let (mut s, _) = l0.accept().expect("accept");
        let mut hb = [0u8; HEADER_LEN];
        s.read_exact(&mut hb).expect("hello header");
        s.write_all(&[0xAB; 64]).expect("garbage");
        s
    });
    let l1 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr1 = l1.local_addr().expect("addr").to_string();
    let r1 = TcpComm::connect(l1, 1, vec![addr0, addr1], identity(), quick());
    let _s = fake.join().expect("fake rank 0");
    match r1 {
        Err(CommError::Protocol {
            peer: PeerId::Rank(0),
            msg,
        }) => assert!(msg.contains("magic"), "{msg}"),
        other => panic!("expected a protocol error, got {:?}", other.err()),
    }
}

#[test]
fn a_malformed_frame_after_the_handshake_fails_the_operation() {
    let (addr, r0) = rank0(quick());
    let mut s = fake_rank1(&addr);
    let mut comm = r0.join().expect("rank 0").expect("group forms");
    s.write_all(&[0x5A; 100]).expect("garbage");
    match comm.barrier() {
        Err(CommError::Protocol {
            peer: PeerId::Rank(1),
            msg,
        }) => assert!(msg.contains("magic"), "{msg}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn an_oversized_frame_is_refused_before_allocating() {
    let (addr, r0) = rank0(quick());
    let mut s = fake_rank1(&addr);
    let mut comm = r0.join().expect("rank 0").expect("group forms");
    let header = Header {
        kind: FrameKind::P2p,
        tag: 0,
        len: 1 << 40,
    };
    s.write_all(&header.encode()).expect("header");
    match comm.recv(1, 0) {
        Err(CommError::Protocol { msg, .. }) => assert!(msg.contains("limit"), "{msg}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn a_health_probe_connection_is_ignored() {
    let (addr, r0) = rank0(quick());
    // A TCP probe connects and closes without a byte; the group still forms.
    drop(TcpStream::connect(&addr).expect("probe"));
    let mut s = fake_rank1(&addr);
    let mut comm = r0.join().expect("rank 0").expect("group forms");
    write_frame(&mut s, FrameKind::P2p, 5, b"hi").expect("p2p");
    assert_eq!(comm.recv(1, 5).expect("recv"), b"hi");
}

#[test]
fn a_silent_peer_is_lost_after_the_peer_timeout() {
    let (addrs, listeners): (Vec<String>, Vec<TcpListener>) = (0..3)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            (l.local_addr().expect("addr").to_string(), l)
        })
        .unzip();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let addrs = addrs.clone();
            thread::spawn(move || TcpComm::connect(l, rank, addrs, identity(), quick()))
        })
        .collect();
    let mut comms: Vec<TcpComm> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("group forms"))
        .collect();
    // Rank 2 freezes: its sockets stay open, but it neither reads nor sends heartbeats.
    comms[2].go_silent();
    let (head, _) = comms.split_at_mut(2);
    let results: Vec<Result<(), CommError>> = thread::scope(|s| {
        let hs: Vec<_> = head.iter_mut().map(|c| s.spawn(|| c.barrier())).collect();
        hs.into_iter().map(|h| h.join().expect("rank")).collect()
    });
    for r in results {
        // Directly, or through the other rank that noticed first and aborted the group.
        match r {
            Err(CommError::PeerLost { peer, reason })
                if peer == 2 || reason.contains("rank 2 lost") =>
            {
                assert!(reason.contains("silent"), "{reason}")
            }
            other => panic!("expected rank 2 lost to silence, got {other:?}"),
        }
    }
}

#[test]
fn received_payloads_are_allocated_exactly_once() {
    let (addr, r0) = rank0(quick());
    let mut s = fake_rank1(&addr);
    let mut comm = r0.join().expect("rank 0").expect("group forms");
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_frame(&mut s, FrameKind::P2p, 9, &sent).expect("p2p");
    let got = comm.recv(1, 9).expect("recv");
    assert_eq!(got, sent);
    // Read into a buffer of exactly the announced size, never grown (and never doubled).
    assert_eq!(got.capacity(), sent.len());
}
