//! TCP backend on loopback: random size matrices, handshake refusals, lost peers, group
//! formation failures.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use common::{check_all_to_all, identity, on_all, tcp_group, try_tcp_group_with};
use moeflow_comm::{CommError, Communicator, GroupIdentity, TcpComm, TcpConfig};
use proptest::prelude::*;

/// Short timeouts for the failure tests (only error kinds are asserted, never timings).
fn quick() -> TcpConfig {
    TcpConfig {
        peer_timeout: Duration::from_millis(600),
        heartbeat_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(20),
        op_timeout: Duration::from_secs(20),
        ..TcpConfig::default()
    }
}

fn size_matrix() -> impl Strategy<Value = Vec<Vec<usize>>> {
    let size = prop_oneof![
        3 => Just(0usize),
        4 => 1usize..64,
        3 => 64usize..20_000,
        1 => 20_000usize..300_000,
    ];
    (2usize..=4)
        .prop_flat_map(move |n| prop::collection::vec(prop::collection::vec(size.clone(), n), n))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the size matrix, every rank receives exactly what each rank sent it.
    #[test]
    fn all_to_all_delivers_every_byte(sizes in size_matrix(), rounds in 1usize..3) {
        let mut comms = tcp_group(sizes.len(), TcpConfig::default());
        for round in 0..rounds {
            check_all_to_all(&mut comms, &sizes, round);
        }
    }
}

fn expect_mismatch(r: &Result<TcpComm, CommError>, field: &str) {
    match r {
        Err(CommError::Mismatch { what, .. }) => assert_eq!(*what, field),
        Err(other) => panic!("expected a {field} mismatch, got {other}"),
        Ok(_) => panic!("expected a {field} mismatch, the group formed"),
    }
}

#[test]
fn handshake_refuses_another_model_plan_or_group() {
    type Change = fn(&mut GroupIdentity);
    let cases: Vec<(&str, Change)> = vec![
        ("model fingerprint", |id| {
            id.model_fingerprint = "other-model".into()
        }),
        ("plan version", |id| id.plan_version += 1),
        ("group id", |id| id.group_id = "another-group".into()),
    ];
    for (field, change) in cases {
        let mut odd = identity();
        change(&mut odd);
        let results = try_tcp_group_with(vec![identity(), odd], quick());
        // Both sides refuse, each naming the field.
        expect_mismatch(&results[0], field);
        expect_mismatch(&results[1], field);
    }
}

#[test]
fn handshake_refuses_a_different_world_size() {
    let (mut ls, addrs) = common::listeners(2);
    let l1 = ls.pop().expect("listener");
    let l0 = ls.pop().expect("listener");
    let a = addrs.clone();
    let r0 = thread::spawn(move || TcpComm::connect(l0, 0, a, identity(), quick()));
    // Rank 1 believes the group has three ranks.
    let mut three = addrs;
    three.push("127.0.0.1:9".into());
    let r1 = TcpComm::connect(l1, 1, three, identity(), quick());
    expect_mismatch(&r1, "world size");
    expect_mismatch(&r0.join().expect("rank 0"), "world size");
}

#[test]
fn a_dropped_peer_fails_every_other_rank() {
    let mut comms = tcp_group(3, quick());
    check_all_to_all(&mut comms, &vec![vec![100; 3]; 3], 0);
    // Rank 2 goes away (process exit, crash) while the others enter a collective.
    drop(comms.pop());
    let results = on_all(&mut comms, |c| c.all_to_all_v(vec![vec![7; 1000]; 3]));
    for r in results {
        common::assert_lost(&r, 2);
    }
    // The failed collective aborted both communicators.
    for c in &mut comms {
        assert!(matches!(c.barrier(), Err(CommError::Aborted { .. })));
    }
}

#[test]
fn a_peer_dropping_during_a_collective_fails_the_others() {
    let mut comms = tcp_group(4, quick());
    let last = comms.pop().expect("rank 3");
    let dropper = thread::spawn(move || {
        // Let the others block in the collective first (not required for correctness: the
        // outcome is the same whenever the drop happens).
        thread::sleep(Duration::from_millis(50));
        drop(last);
    });
    let results = on_all(&mut comms, |c| c.all_gather(&[1; 4096]));
    dropper.join().expect("dropper");
    for r in results {
        common::assert_lost(&r, 3);
    }
}

#[test]
fn a_failed_rank_aborts_the_group_for_the_others() {
    // Ranks 0 and 1 enter a barrier; rank 2 is busy elsewhere (waiting for a message that
    // never comes), so they time out on it and abort the group. The abort must reach rank 2
    // and end its wait with rank 0 lost, instead of leaving it blocked until its own timeout.
    let short = TcpConfig {
        op_timeout: Duration::from_millis(300),
        ..quick()
    };
    let mut comms: Vec<TcpComm> =
        common::try_tcp_group_cfgs(vec![identity(); 3], vec![short.clone(), short, quick()])
            .into_iter()
            .map(|r| r.expect("group forms"))
            .collect();
    let results = on_all(&mut comms, |c| match c.rank() {
        2 => c.recv(0, 42).map(|_| ()),
        _ => c.barrier(),
    });
    for r in &results[..2] {
        assert!(
            matches!(r, Err(CommError::Timeout { peer: 2, .. })),
            "{r:?}"
        );
    }
    match &results[2] {
        Err(CommError::PeerLost { peer: 0, reason }) => {
            assert!(reason.contains("aborted"), "{reason}")
        }
        other => panic!("expected rank 0 lost by abort, got {other:?}"),
    }
}

#[test]
fn formation_fails_when_a_rank_never_comes() {
    // Find a port with nobody behind it.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let cfg = TcpConfig {
        connect_timeout: Duration::from_millis(400),
        ..quick()
    };
    // Rank 1 dials rank 0, which is not there.
    let l1 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let me = l1.local_addr().expect("addr").to_string();
    match TcpComm::connect(l1, 1, vec![dead_addr, me.clone()], identity(), cfg.clone()) {
        Err(CommError::Timeout {
            op: "connect",
            peer: 0,
            ..
        }) => {}
        other => panic!("expected a connect timeout, got {:?}", other.err()),
    }
    // Rank 0 waits for rank 1, which never dials.
    let l0 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let me = l0.local_addr().expect("addr").to_string();
    match TcpComm::connect(l0, 0, vec![me, "127.0.0.1:9".into()], identity(), cfg) {
        Err(CommError::Timeout {
            op: "accept",
            peer: 1,
            ..
        }) => {}
        other => panic!("expected an accept timeout, got {:?}", other.err()),
    }
}

#[test]
fn bad_arguments_are_refused_before_any_connection() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let me = l.local_addr().expect("addr").to_string();
    match TcpComm::connect(l, 1, vec!["no-port-here".into(), me], identity(), quick()) {
        Err(CommError::InvalidArgument(msg)) => assert!(msg.contains("no-port-here"), "{msg}"),
        other => panic!("{:?}", other.err()),
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let bad = TcpConfig {
        heartbeat_interval: Duration::from_secs(5),
        ..quick()
    };
    assert!(matches!(
        TcpComm::connect(l, 0, vec!["127.0.0.1:1".into()], identity(), bad),
        Err(CommError::InvalidArgument(_))
    ));
}

#[test]
fn idle_group_stays_alive_on_heartbeats() {
    // More than two peer timeouts without any traffic but heartbeats.
    let cfg = TcpConfig {
        peer_timeout: Duration::from_millis(1500),
        heartbeat_interval: Duration::from_millis(100),
        ..quick()
    };
    let mut comms = tcp_group(2, cfg);
    thread::sleep(Duration::from_millis(3500));
    for r in on_all(&mut comms, |c| c.barrier()) {
        r.expect("barrier after idling");
    }
}
