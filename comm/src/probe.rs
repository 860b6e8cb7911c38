//! Measures the bandwidth one rank's link achieves through this crate's TCP backend between
//! two ranks on this host, the number a device profile's `intra_node_bw` stands for when
//! the ranks of a CPU group share a machine.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use crate::{CommError, Communicator, GroupIdentity, TcpComm, TcpConfig};

/// Median bytes/s of one direction of the link, with every timed transfer kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkThroughput {
    pub bandwidth: f64,
    pub runs: Vec<f64>,
}

/// Forms a two-rank TCP group on 127.0.0.1 (rank 1 on its own thread) and times `repeats`
/// transfers of `bytes` from rank 0 to rank 1, each from the start of the send to rank 0's
/// receipt of rank 1's one-byte acknowledgement, sent once rank 1 holds every byte (after
/// one untimed warm-up). The buffer is filled with a non-zero pattern: a zero-filled one can
/// sit on the kernel's shared zero page and be copied from cache. Fails with the backend's
/// error if the group does not form or breaks.
pub fn tcp_loopback_bandwidth(bytes: usize, repeats: usize) -> Result<LinkThroughput, CommError> {
    if bytes == 0 || repeats == 0 {
        return Err(CommError::InvalidArgument(format!(
            "link probe: bytes ({bytes}) and repeats ({repeats}) must be > 0"
        )));
    }
    const DATA: u64 = 1;
    const ACK: u64 = 2;
    let bind = || {
        TcpListener::bind("127.0.0.1:0")
            .map_err(|e| CommError::InvalidArgument(format!("bind: {e}")))
    };
    let (l0, l1) = (bind()?, bind()?);
    let addr = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.to_string())
            .map_err(|e| CommError::InvalidArgument(format!("local address: {e}")))
    };
    let peers = vec![addr(&l0)?, addr(&l1)?];
    let p1 = peers.clone();
    let follower = thread::spawn(move || -> Result<(), CommError> {
        let mut c = TcpComm::connect(l1, 1, p1, GroupIdentity::default(), TcpConfig::default())?;
        for _ in 0..=repeats {
            let got = c.recv(0, DATA)?;
            c.send(0, ACK, &[u8::from(got.len() == bytes)])?;
        }
        Ok(())
    });
    let mut c = TcpComm::connect(l0, 0, peers, GroupIdentity::default(), TcpConfig::default())?;
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8 | 1).collect();
    let mut runs = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let start = Instant::now();
        c.send(1, DATA, &data)?;
        let ack = c.recv(1, ACK)?;
        let t = start.elapsed().max(Duration::from_nanos(1));
        if ack != [1] {
            return Err(CommError::InvalidArgument(format!(
                "link probe: peer received a transfer of the wrong size ({bytes} bytes sent)"
            )));
        }
        if i > 0 {
            runs.push(bytes as f64 / t.as_secs_f64());
        }
    }
    drop(c);
    follower
        .join()
        .map_err(|_| CommError::InvalidArgument("link probe: peer thread panicked".into()))??;
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let bandwidth = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Ok(LinkThroughput { bandwidth, runs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_positive_rate_per_exchange() {
        let t = tcp_loopback_bandwidth(64 << 10, 5).unwrap();
        assert_eq!(t.runs.len(), 5);
        assert!(t.runs.iter().all(|v| v.is_finite() && *v > 0.0), "{t:?}");
        assert!(t.runs.contains(&t.bandwidth));
    }

    #[test]
    fn refuses_an_empty_probe() {
        assert!(tcp_loopback_bandwidth(0, 3).is_err());
        assert!(tcp_loopback_bandwidth(1024, 0).is_err());
    }
}
