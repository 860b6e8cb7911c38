//! Round trips through the binary format and its size against the paper JSON.

mod common;

use moeflow_trace::io::paper::{parse, render};
use moeflow_trace::{BinaryReader, BinaryWriter, FormatError, PaperTreeWriter};

#[test]
fn round_trips_many_requests_with_weights_through_a_file() {
    let shape = common::shape(6, 1, 64, 4);
    let mut rng = common::Rng::new(1);
    let reqs: Vec<_> = (0..20)
        .map(|i| common::request(&mut rng, &shape, &format!("r{i}"), 10 + i, i, i % 2 == 0))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.moeflow");
    let mut w = BinaryWriter::create(&path, &shape).unwrap();
    for r in &reqs {
        w.append(r).unwrap();
    }
    w.finish().unwrap();
    let mut rd = BinaryReader::open(&path).unwrap();
    assert_eq!(rd.shape(), &shape);
    let got: Vec<_> = rd.by_ref().collect::<Result<_, _>>().unwrap();
    assert!(rd.complete());
    assert_eq!(got.len(), reqs.len());
    for (g, r) in got.iter().zip(&reqs) {
        // Gate weights are stored as f16.
        let mut want = r.clone();
        for l in want.iterations.iter_mut().flat_map(|i| i.layers.iter_mut()) {
            if let Some(w) = &mut l.weights {
                w.iter_mut()
                    .for_each(|x| *x = half::f16::from_f32(*x).to_f32());
            }
        }
        assert_eq!(g, &want);
    }
}

#[test]
fn a_live_file_without_end_block_reads_and_a_cut_one_reports_the_cut() {
    let shape = common::shape(4, 0, 8, 2);
    let mut rng = common::Rng::new(2);
    let mut w = BinaryWriter::new(Vec::new(), &shape).unwrap();
    for i in 0..3 {
        w.append(&common::request(
            &mut rng,
            &shape,
            &i.to_string(),
            5,
            3,
            false,
        ))
        .unwrap();
    }
    // Not finished: what a reader sees while the recorder runs.
    let bytes = w.finish().unwrap();
    let live = &bytes[..bytes.len() - 16];
    let mut r = BinaryReader::new(live).unwrap();
    assert_eq!(r.by_ref().filter(Result::is_ok).count(), 3);
    assert!(!r.complete());
    let cut = &live[..live.len() - 3];
    let got: Vec<_> = BinaryReader::new(cut).unwrap().collect();
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 2);
    assert!(matches!(got.last(), Some(Err(FormatError::Truncated(_)))));
}

fn sizes(shape: &moeflow_trace::ModelShape, seed: u64, n: usize) -> (usize, usize) {
    let mut rng = common::Rng::new(seed);
    let mut json = 0;
    let mut w = BinaryWriter::new(Vec::new(), shape).unwrap();
    for i in 0..n {
        let r = common::request(&mut rng, shape, &format!("q{i}"), 200, 100, false);
        let mut out = Vec::new();
        render(&r, shape, &mut out).unwrap();
        json += out.len();
        w.append(&r).unwrap();
    }
    (json, w.finish().unwrap().len())
}

#[test]
fn binary_is_at_least_ten_times_smaller_than_paper_json() {
    // Mixtral's shape: 32 MoE layers, 8 experts, top-2.
    let shape = common::shape(32, 0, 8, 2);
    let (json, bin) = sizes(&shape, 7, 8);
    let ratio = json as f64 / bin as f64;
    println!("8 experts top-2: paper JSON {json} B, binary {bin} B, ratio {ratio:.1}x");
    assert!(ratio >= 10.0, "ratio {ratio:.2}");
}

#[test]
fn the_mixtral_example_file_shrinks_at_least_tenfold() {
    let Some(path) = common::shared_data("mixtral-8x7b-routing/humaneval_p0.paper-format.json")
    else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let doc = parse(&bytes, "p0".into(), None, None).unwrap();
    let shape = common::shape(doc.num_layers, 0, 8, doc.top_k.unwrap());
    let mut w = BinaryWriter::new(Vec::new(), &shape).unwrap();
    w.append(&doc.request).unwrap();
    let bin = w.finish().unwrap();
    let ratio = bytes.len() as f64 / bin.len() as f64;
    println!(
        "Mixtral example: {} B JSON, {} B binary, {ratio:.1}x",
        bytes.len(),
        bin.len()
    );
    assert!(ratio >= 10.0, "ratio {ratio:.2}");
    let back = BinaryReader::new(&bin[..])
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(back, doc.request);
    // And back to the paper layout, byte for byte modulo separators.
    let dir = tempfile::tempdir().unwrap();
    let pw = PaperTreeWriter::new(dir.path(), "mistralai/Mixtral-8x7B", &shape).unwrap();
    let out = pw.write(&back).unwrap();
    let again = parse(&std::fs::read(&out.path).unwrap(), "p0".into(), None, None).unwrap();
    assert_eq!(again.request, doc.request);
    assert_eq!(out.dropped_tokens, 0);
}

/// Paper JSON and binary sizes of 4 requests of 200 prompt + 100 decode tokens over 16 MoE
/// layers, routed by `common::Routing` with the given skew and correlations.
fn routed_ratio(num_experts: usize, zipf: f64, corr: f64) -> f64 {
    let shape = common::shape(17, 1, num_experts, 8);
    let routing = common::Routing::new(&shape, zipf, corr, corr, 5);
    let mut rng = common::Rng::new(11);
    let mut json = 0;
    let mut w = BinaryWriter::new(Vec::new(), &shape).unwrap();
    for i in 0..4 {
        let r = routing.request(&mut rng, &format!("q{i}"), 200, 100, false);
        let mut out = Vec::new();
        render(&r, &shape, &mut out).unwrap();
        json += out.len();
        w.append(&r).unwrap();
    }
    let bin = w.finish().unwrap();
    // The measurement is only worth something if the trace survives.
    let back: Vec<_> = BinaryReader::new(&bin[..])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back.len(), 4);
    let ratio = json as f64 / bin.len() as f64;
    println!(
        "{num_experts} experts top-8, zipf {zipf}, layer/token correlation {corr}: paper JSON {json} B, binary {} B, {ratio:.2}x",
        bin.len()
    );
    ratio
}

/// Skewed, correlated routing (Zipf 1.0 popularity per layer, layer-to-layer and
/// token-to-token re-selection 0.4) at DeepSeek-V3's and Kimi-K2's width. Version 1 reached
/// 5.3x and 4.5x here, version 2 6.3x and 6.1x. Issue 5 asks for 10x, which this does not
/// reach: even a coder that knew the generator's maps and popularities exactly would need
/// about 4.2 bits per id against about 41 bits per id of JSON (about 9.8x), and a block
/// decodable on its own must learn both from one request (docs/trace-format.md, "Size").
#[test]
fn binary_shrinks_skewed_correlated_routing_at_256_and_384_experts() {
    assert!(routed_ratio(256, 1.0, 0.4) >= 6.0);
    assert!(routed_ratio(384, 1.0, 0.4) >= 6.0);
}

/// Printed for the record, not asserted: the worst case, uniform independent routing, which
/// carries log2(256!/248!)/8 = 8.0 bits per id (8.6 at 384 experts), so no lossless format
/// passes about 5.2x (5.0x) on it; and milder and stronger skew and correlation.
#[test]
fn report_uniform_worst_case_ratios() {
    for e in [256, 384] {
        routed_ratio(e, 0.0, 0.0);
    }
    for (e, z, c) in [(256, 0.5, 0.3), (256, 1.0, 0.5), (384, 1.0, 0.5)] {
        routed_ratio(e, z, c);
    }
}
