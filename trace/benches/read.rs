//! Read throughput: the paper JSON scanner on one file, single-threaded; `Source::fold` with 2
//! worker threads over a generated tree (~110 MB, DeepSeek-V3's shape); and the binary format,
//! decoded and encoded on one thread, counted in bytes of the equivalent paper JSON so that
//! the numbers compare (skewed, correlated routing, DeepSeek-V3's shape).
//! Run: `cargo bench -p moeflow-trace --bench read`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use divan::counter::BytesCount;
use divan::Bencher;
use moeflow_trace::io::paper::{parse, render};
use moeflow_trace::{open, BinaryReader, BinaryWriter, PaperTreeWriter, ReadOptions, RequestTrace};

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    one: Vec<u8>,
    bytes: u64,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let shape = common::shape(61, 3, 256, 8);
        let dir = tempfile::tempdir().expect("temp dir");
        let w = PaperTreeWriter::new(dir.path(), "deepseek-ai/DeepSeek-V3", &shape)
            .expect("tree writer");
        let mut rng = common::Rng::new(42);
        let mut bytes = 0;
        let mut one = Vec::new();
        for i in 0..100 {
            let mut r = common::request(&mut rng, &shape, &format!("q{i}"), 512, 64, false);
            r.workload = Some(format!("mmlu/s{}", i % 4));
            let out = w.write(&r).expect("write");
            bytes += std::fs::metadata(&out.path).expect("size").len();
            if i == 0 {
                render(&r, &shape, &mut one).expect("render");
            }
        }
        Tree {
            root: dir.path().to_path_buf(),
            _dir: dir,
            one,
            bytes,
        }
    })
}

/// A binary trace of 8 requests (512 prompt + 64 decode tokens) and its paper JSON size.
struct Binary {
    requests: Vec<RequestTrace>,
    shape: moeflow_trace::ModelShape,
    bytes: Vec<u8>,
    json: usize,
}

fn binary() -> &'static Binary {
    static BIN: OnceLock<Binary> = OnceLock::new();
    BIN.get_or_init(|| {
        let shape = common::shape(61, 3, 256, 8);
        let routing = common::Routing::new(&shape, 1.0, 0.4, 0.4, 5);
        let mut rng = common::Rng::new(42);
        let requests: Vec<_> = (0..8)
            .map(|i| routing.request(&mut rng, &format!("q{i}"), 512, 64, false))
            .collect();
        let mut json = 0;
        let mut w = BinaryWriter::new(Vec::new(), &shape).expect("writer");
        for r in &requests {
            let mut out = Vec::new();
            render(r, &shape, &mut out).expect("render");
            json += out.len();
            w.append(r).expect("append");
        }
        let bytes = w.finish().expect("finish");
        println!(
            "binary bench trace: {json} B paper JSON, {} B binary ({:.2}x)",
            bytes.len(),
            json as f64 / bytes.len() as f64
        );
        Binary {
            requests,
            shape,
            bytes,
            json,
        }
    })
}

fn main() {
    divan::main();
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn binary_decode_one_thread(b: Bencher) {
    let t = binary();
    b.counter(BytesCount::new(t.json)).bench(|| {
        let r = BinaryReader::new(divan::black_box(&t.bytes[..])).expect("header");
        let mut n = 0;
        for x in r {
            divan::black_box(x.expect("decode"));
            n += 1;
        }
        assert_eq!(n, 8);
        n
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn binary_encode_one_thread(b: Bencher) {
    let t = binary();
    b.counter(BytesCount::new(t.json)).bench(|| {
        let mut w = BinaryWriter::new(Vec::new(), &t.shape).expect("writer");
        for r in &t.requests {
            w.append(divan::black_box(r)).expect("append");
        }
        w.finish().expect("finish").len()
    });
}

#[divan::bench(sample_count = 20)]
fn paper_scan_one_thread(b: Bencher) {
    let t = tree();
    b.counter(BytesCount::new(t.one.len()))
        .bench(|| parse(divan::black_box(&t.one), String::new(), None, None).expect("parse"));
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn fold_two_threads(b: Bencher) {
    let t = tree();
    let opts = ReadOptions {
        num_experts: Some(256),
        top_k: None,
        threads: 2,
        progress: false,
    };
    let src = open(&t.root, &opts).expect("open");
    b.counter(BytesCount::new(t.bytes)).bench(|| {
        let (accs, report) = src.fold(|| 0u64, |n, _item| *n += 1).expect("fold");
        assert_eq!(report.items, 100);
        accs
    });
}

/// CPU seconds (user + system) of the calling thread, from /proc: wall time on a shared
/// machine counts other processes' turns.
fn thread_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

#[divan::bench(sample_count = 1, sample_size = 1)]
fn binary_decode_cpu_time(b: Bencher) {
    let t = binary();
    b.bench(|| {
        let t0 = thread_cpu_s();
        let mut n = 0;
        for _ in 0..10 {
            let r = BinaryReader::new(divan::black_box(&t.bytes[..])).expect("header");
            for x in r {
                divan::black_box(x.expect("decode"));
                n += 1;
            }
        }
        let cpu = thread_cpu_s() - t0;
        println!(
            "binary decode: {} requests, {:.1} MB of paper JSON in {cpu:.2} CPU s: {:.1} MB/s per core",
            n,
            10.0 * t.json as f64 / 1e6,
            10.0 * t.json as f64 / 1e6 / cpu
        );
        n
    });
}
