//! The same collective checks on every CPU backend: in-process and TCP on loopback.

mod common;

use common::{check_all_to_all, on_all, pattern, tcp_group};
use moeflow_comm::{CommError, Communicator, InProcComm, TcpConfig};
use rand::{Rng, SeedableRng};

fn random_sizes(n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..n)
                .map(|_| match rng.random_range(0..4) {
                    0 => 0,
                    1 => rng.random_range(1..16),
                    2 => rng.random_range(16..5000),
                    _ => rng.random_range(5000..200_000),
                })
                .collect()
        })
        .collect()
}

fn all_checks<C: Communicator>(comms: &mut [C]) {
    let n = comms.len();
    // all-to-all-v, several rounds with random sizes (zero included), then all zeros.
    for round in 0..5 {
        check_all_to_all(comms, &random_sizes(n, round as u64 + 7 * n as u64), round);
    }
    check_all_to_all(comms, &vec![vec![0; n]; n], 99);

    // all-gather with a different size per rank (rank 0 contributes nothing).
    let gathered = on_all(comms, |c| {
        let r = c.rank();
        c.all_gather(&pattern(r, 0, r * 1000, 1))
    });
    for got in gathered {
        let got = got.expect("all_gather");
        for (src, data) in got.iter().enumerate() {
            assert_eq!(data, &pattern(src, 0, src * 1000, 1));
        }
    }

    // barrier
    for r in on_all(comms, |c| c.barrier()) {
        r.expect("barrier");
    }

    // point-to-point: every rank sends three tags to its right neighbour, in the order 3, 1,
    // 2 (tag 1 twice); the neighbour receives in the order 1, 2, 1, 3.
    let p2p = on_all(comms, |c| -> Result<Vec<Vec<u8>>, CommError> {
        let (r, n) = (c.rank(), c.world_size());
        let right = (r + 1) % n;
        let left = (r + n - 1) % n;
        c.send(right, 3, b"three")?;
        c.send(right, 1, b"one-a")?;
        c.send(right, 2, &[])?;
        c.send(right, 1, b"one-b")?;
        Ok(vec![
            c.recv(left, 1)?,
            c.recv(left, 2)?,
            c.recv(left, 1)?,
            c.recv(left, 3)?,
        ])
    });
    for got in p2p {
        let got = got.expect("p2p");
        assert_eq!(
            got,
            vec![
                b"one-a".to_vec(),
                vec![],
                b"one-b".to_vec(),
                b"three".to_vec()
            ]
        );
    }

    // f32 helper
    let floats = on_all(comms, |c| {
        let r = c.rank() as f32;
        let send = (0..c.world_size())
            .map(|d| vec![r, d as f32, -0.5])
            .collect();
        c.all_to_all_v_f32(send)
    });
    for (dst, got) in floats.into_iter().enumerate() {
        for (src, v) in got.expect("f32").iter().enumerate() {
            assert_eq!(v, &vec![src as f32, dst as f32, -0.5]);
        }
    }

    // collectives and point-to-point still line up after all of the above
    check_all_to_all(comms, &random_sizes(n, 1234), 100);
}

#[test]
fn inproc_collectives() {
    for n in 1..=4 {
        let mut comms = InProcComm::group(n);
        all_checks(&mut comms);
    }
}

#[test]
fn tcp_collectives() {
    for n in 1..=4 {
        let mut comms = tcp_group(n, TcpConfig::default());
        all_checks(&mut comms);
    }
}

#[test]
fn tcp_large_messages() {
    let mut comms = tcp_group(3, TcpConfig::default());
    let big = 6 << 20;
    let sizes = vec![vec![big, 0, big], vec![big, big, 1], vec![0, big, big]];
    check_all_to_all(&mut comms, &sizes, 0);
}

#[test]
fn stats_count_bytes_that_crossed_a_process_boundary() {
    let mut comms = tcp_group(3, TcpConfig::default());
    // rank r sends (r+1)*100 + d bytes to rank d
    let sizes: Vec<Vec<usize>> = (0..3)
        .map(|s| (0..3).map(|d| (s + 1) * 100 + d).collect())
        .collect();
    check_all_to_all(&mut comms, &sizes, 0);
    for (r, c) in comms.iter().enumerate() {
        let st = c.stats();
        for (p, row) in sizes.iter().enumerate() {
            let sent = if p == r { 0 } else { sizes[r][p] as u64 };
            let recv = if p == r { 0 } else { row[r] as u64 };
            assert_eq!(st.bytes_sent[p], sent, "rank {r} to {p}");
            assert_eq!(st.bytes_received[p], recv, "rank {r} from {p}");
        }
    }
    let mut inproc = InProcComm::group(3);
    check_all_to_all(&mut inproc, &sizes, 0);
    for (tcp, local) in comms.iter().zip(&inproc) {
        assert_eq!(tcp.stats(), local.stats());
    }
}

#[test]
fn misuse_is_an_invalid_argument() {
    let mut comms = InProcComm::group(2);
    assert!(matches!(
        comms[0].all_to_all_v(vec![vec![]]),
        Err(CommError::InvalidArgument(_))
    ));
    assert!(matches!(
        comms[0].send(5, 0, b"x"),
        Err(CommError::InvalidArgument(_))
    ));
    let mut tcp = tcp_group(2, TcpConfig::default());
    assert!(matches!(
        tcp[1].all_to_all_v(vec![vec![]; 3]),
        Err(CommError::InvalidArgument(_))
    ));
    assert!(matches!(
        tcp[1].recv(2, 0),
        Err(CommError::InvalidArgument(_))
    ));
}

#[test]
fn inproc_dropped_peer_fails_the_others() {
    let mut comms = InProcComm::group(3);
    drop(comms.pop());
    for r in on_all(&mut comms, |c| c.all_to_all_v(vec![vec![1]; 3])) {
        common::assert_lost(&r, 2);
    }
    // the failed collective aborted the communicators
    for c in &mut comms {
        assert!(matches!(c.barrier(), Err(CommError::Aborted { .. })));
    }
}

#[test]
fn inproc_collective_order_mismatch_is_reported() {
    let mut comms = InProcComm::group(2);
    let results = on_all(&mut comms, |c| {
        if c.rank() == 0 {
            c.barrier().map(|_| ())
        } else {
            c.all_gather(b"x").map(|_| ())
        }
    });
    for r in results {
        assert!(
            matches!(
                r,
                Err(CommError::Protocol { .. }) | Err(CommError::PeerLost { .. })
            ),
            "{r:?}"
        );
    }
}
