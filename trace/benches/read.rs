//! Paper JSON read throughput: the scanner on one file, single-threaded, and `Source::fold`
//! with 2 worker threads over a generated tree (~110 MB, DeepSeek-V3's shape).
//! Run: `cargo bench -p moeflow-trace --bench read`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use divan::counter::BytesCount;
use divan::Bencher;
use moeflow_trace::io::paper::{parse, render};
use moeflow_trace::{open, PaperTreeWriter, ReadOptions};

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

fn main() {
    divan::main();
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
