//! All-to-all throughput of the TCP backend on loopback (4 ranks, threads of one process)
//! against a raw TCP stream moving the same bytes, measured in the same run.
//!
//! Per iteration the all-to-all moves 4 x 3 x `size` bytes between processes' sockets (each
//! rank sends `size` to each of the 3 others; its own part never touches the wire). The raw
//! baseline writes the same 12 x `size` bytes with `write_all` over one connection, the
//! receiver reads them with `read_exact` into a reused buffer and acknowledges with one byte,
//! so both sides measure "all bytes delivered". Throughput = bytes / median time.
//!
//! Run: `cargo bench -p moeflow-comm --bench all_to_all`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use divan::counter::BytesCount;
use divan::Bencher;
use moeflow_comm::{Communicator, GroupIdentity, TcpComm, TcpConfig};

const RANKS: usize = 4;
const SIZES: &[usize] = &[4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20];

fn main() {
    divan::main();
}

fn bytes_per_iteration(size: usize) -> BytesCount {
    BytesCount::new(RANKS * (RANKS - 1) * size)
}

fn group() -> Vec<TcpComm> {
    let listeners: Vec<TcpListener> = (0..RANKS)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let addrs = addrs.clone();
            thread::spawn(move || {
                TcpComm::connect(
                    l,
                    rank,
                    addrs,
                    GroupIdentity::default(),
                    TcpConfig::default(),
                )
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("group forms"))
        .collect()
}

#[divan::bench(args = SIZES, max_time = 3)]
fn tcp_all_to_all(bencher: Bencher, size: usize) {
    let mut comms = group();
    let mut rank0 = comms.remove(0);
    // Ranks 1..4 follow rank 0 collective by collective until it leaves the group.
    let followers: Vec<_> = comms
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut bufs = vec![vec![c.rank() as u8; size]; RANKS];
                while let Ok(recv) = c.all_to_all_v(bufs) {
                    bufs = recv;
                }
            })
        })
        .collect();
    // The received buffers (same sizes) are sent again: no allocation on the caller's side.
    let mut bufs = Some(vec![vec![0u8; size]; RANKS]);
    bencher.counter(bytes_per_iteration(size)).bench_local(|| {
        let send = bufs.take().expect("buffers");
        bufs = Some(rank0.all_to_all_v(send).expect("all_to_all_v"));
    });
    drop(rank0);
    for f in followers {
        f.join().expect("follower");
    }
}

#[divan::bench(args = SIZES, max_time = 3)]
fn raw_tcp(bencher: Bencher, size: usize) {
    let messages = RANKS * (RANKS - 1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = vec![0u8; size];
        loop {
            for _ in 0..messages {
                if s.read_exact(&mut buf).is_err() {
                    return;
                }
            }
            if s.write_all(&[1]).is_err() {
                return;
            }
        }
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let data = vec![7u8; size];
    let mut ack = [0u8; 1];
    bencher.counter(bytes_per_iteration(size)).bench_local(|| {
        for _ in 0..messages {
            s.write_all(&data).expect("write");
        }
        s.read_exact(&mut ack).expect("ack");
    });
    drop(s);
    receiver.join().expect("receiver");
}
