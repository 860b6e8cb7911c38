//! Helpers shared by the integration tests: forming groups, running one closure per rank in
//! its own thread, and deterministic message contents that a receiver can verify.
#![allow(dead_code)]

use std::net::TcpListener;
use std::thread;

use moeflow_comm::{CommError, Communicator, GroupIdentity, TcpComm, TcpConfig};

pub fn identity() -> GroupIdentity {
    GroupIdentity {
        group_id: "test-group".into(),
        model_fingerprint: "tiny-moe:abc123".into(),
        plan_version: 3,
    }
}

/// Binds one loopback listener per rank; returns them with their addresses.
pub fn listeners(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs = ls
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    (ls, addrs)
}

/// Connects `n` ranks in threads, each with its own identity; returns every rank's result.
pub fn try_tcp_group_with(
    identities: Vec<GroupIdentity>,
    cfg: TcpConfig,
) -> Vec<Result<TcpComm, CommError>> {
    let cfgs = vec![cfg; identities.len()];
    try_tcp_group_cfgs(identities, cfgs)
}

/// Connects ranks in threads, each with its own identity and configuration.
pub fn try_tcp_group_cfgs(
    identities: Vec<GroupIdentity>,
    cfgs: Vec<TcpConfig>,
) -> Vec<Result<TcpComm, CommError>> {
    let n = identities.len();
    let (ls, addrs) = listeners(n);
    let handles: Vec<_> = ls
        .into_iter()
        .zip(identities.into_iter().zip(cfgs))
        .enumerate()
        .map(|(rank, (l, (id, cfg)))| {
            let addrs = addrs.clone();
            thread::spawn(move || TcpComm::connect(l, rank, addrs, id, cfg))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("connect thread"))
        .collect()
}

/// A working TCP group of `n` ranks on loopback.
pub fn tcp_group(n: usize, cfg: TcpConfig) -> Vec<TcpComm> {
    try_tcp_group_with(vec![identity(); n], cfg)
        .into_iter()
        .map(|r| r.expect("group forms"))
        .collect()
}

/// Runs `f` on every rank at once (one thread each) and returns the results by rank.
pub fn on_all<C, T, F>(comms: &mut [C], f: F) -> Vec<T>
where
    C: Communicator,
    T: Send,
    F: Fn(&mut C) -> T + Sync,
{
    thread::scope(|s| {
        let handles: Vec<_> = comms.iter_mut().map(|c| s.spawn(|| f(c))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

/// Contents of the message from `src` to `dst` of length `len` in round `round`.
pub fn pattern(src: usize, dst: usize, len: usize, round: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (src * 31 + dst * 7 + round * 13 + k * 3 + k / 251) as u8)
        .collect()
}

/// Runs one all-to-all-v with `sizes[src][dst]` bytes and checks that every rank got exactly
/// what was sent to it.
pub fn check_all_to_all<C: Communicator>(comms: &mut [C], sizes: &[Vec<usize>], round: usize) {
    let results = on_all(comms, |c| {
        let src = c.rank();
        let send = (0..c.world_size())
            .map(|dst| pattern(src, dst, sizes[src][dst], round))
            .collect();
        c.all_to_all_v(send)
    });
    for (dst, r) in results.into_iter().enumerate() {
        let got = r.expect("all_to_all_v");
        assert_eq!(got.len(), sizes.len());
        for (src, data) in got.iter().enumerate() {
            assert_eq!(
                data,
                &pattern(src, dst, sizes[src][dst], round),
                "rank {dst} from rank {src}, round {round}"
            );
        }
    }
}

/// Asserts that an operation failed because rank `lost` was lost: either directly, or through
/// another rank that noticed first and aborted the group (its reason names the lost rank).
pub fn assert_lost<T: std::fmt::Debug>(r: &Result<T, CommError>, lost: usize) {
    match r {
        Err(CommError::PeerLost { peer, .. }) if *peer == lost => {}
        Err(CommError::PeerLost { reason, .. })
            if reason.contains("aborted") && reason.contains(&format!("rank {lost} lost")) => {}
        other => panic!("expected rank {lost} lost, got {other:?}"),
    }
}
