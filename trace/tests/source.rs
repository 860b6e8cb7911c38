//! The source: format detection, shape, parallel streaming, and every bad-file case skipped
//! with its reason.

mod common;

use std::path::Path;

use moeflow_trace::io::paper::render;
use moeflow_trace::io::recording;
use moeflow_trace::{
    open, BinaryWriter, Format, LoadSummary, Origin, PaperTreeWriter, Phase, ReadOptions,
    ReadReport, Source, TraceItem, MISSING_EXPERT,
};

fn opts(num_experts: Option<usize>) -> ReadOptions {
    ReadOptions {
        num_experts,
        top_k: None,
        threads: 2,
        progress: false,
    }
}

fn read_all(src: &Source) -> (Vec<TraceItem>, ReadReport) {
    let (accs, report) = src
        .fold(Vec::new, |acc: &mut Vec<TraceItem>, item| acc.push(item))
        .unwrap();
    let mut items: Vec<TraceItem> = accs.into_iter().flatten().collect();
    items.sort_by(|a, b| a.id().cmp(b.id()));
    (items, report)
}

/// The expert loads of every item of `src`, merged over the reading threads.
fn loads(src: &Source) -> (LoadSummary, ReadReport) {
    let shape = src.shape().clone();
    let (accs, report) = src
        .fold(
            || LoadSummary::new(shape.clone(), false),
            |acc, item| acc.add(&item).unwrap(),
        )
        .unwrap();
    let mut total = LoadSummary::new(shape.clone(), false);
    accs.iter().for_each(|a| total.merge(a));
    (total, report)
}

fn reason<'a>(report: &'a ReadReport, path_part: &str) -> &'a str {
    report
        .skipped
        .iter()
        .find(|s| s.path.contains(path_part))
        .map(|s| s.reason.as_str())
        .unwrap_or_else(|| panic!("{path_part} not skipped: {:?}", report.skipped))
}

fn tar_gz(dir: &Path, subject: &str, files: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(dir.join(format!("{subject}.tar.gz"))).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("{subject}/{name}"), &bytes[..])
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn paper_tree_with_tar_gz_subjects_and_every_bad_file_reported() {
    let shape = common::shape(4, 1, 16, 2);
    let mut rng = common::Rng::new(5);
    let root = tempfile::tempdir().unwrap();
    let w = PaperTreeWriter::new(root.path(), "acme/Moe-16E", &shape).unwrap();
    let mut want = Vec::new();
    for i in 0..10 {
        let mut r = common::request(&mut rng, &shape, &format!("q{i}"), 3 + i, 2, false);
        r.workload = Some(format!("mmlu/{}", if i < 5 { "law" } else { "math" }));
        w.write(&r).unwrap();
        want.push(r);
    }
    // A tar.gz subject next to the plain ones.
    let mut tarred = Vec::new();
    for i in 0..4 {
        let mut r = common::request(&mut rng, &shape, &format!("t{i}"), 4, 3, false);
        r.workload = Some("ceval/physics".into());
        let mut b = Vec::new();
        render(&r, &shape, &mut b).unwrap();
        tarred.push((format!("t{i}.json"), b));
        want.push(r);
    }
    let bench = w.dir().join("ceval");
    std::fs::create_dir_all(&bench).unwrap();
    tar_gz(&bench, "physics", &tarred);

    // Bad files.
    let law = w.dir().join("mmlu/law");
    let good = std::fs::read(law.join("q0.json")).unwrap();
    std::fs::write(law.join("truncated.json"), &good[..good.len() / 2]).unwrap();
    std::fs::write(
        law.join("malformed.json"),
        b"[{\"0\": null, \"1\": [[1, 2], [3 4]]}]",
    )
    .unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let i = text.find("[[").unwrap() + 2;
    let j = i + text[i..].find(',').unwrap();
    std::fs::write(
        law.join("range.json"),
        format!("{}99{}", &text[..i], &text[j..]),
    )
    .unwrap();
    let small = common::shape(3, 1, 16, 2);
    let mut b = Vec::new();
    render(
        &common::request(&mut rng, &small, "w", 3, 1, false),
        &small,
        &mut b,
    )
    .unwrap();
    std::fs::write(law.join("layers.json"), &b).unwrap();
    let top3 = common::shape(4, 1, 16, 3);
    let mut b = Vec::new();
    render(
        &common::request(&mut rng, &top3, "k", 3, 1, false),
        &top3,
        &mut b,
    )
    .unwrap();
    std::fs::write(law.join("topk.json"), &b).unwrap();
    let other = PaperTreeWriter::new(root.path(), "acme/Other", &shape).unwrap();
    let mut r = common::request(&mut rng, &shape, "x", 3, 1, false);
    r.workload = Some("mmlu/law".into());
    other.write(&r).unwrap();

    let src = open(root.path(), &opts(Some(16))).unwrap();
    assert_eq!(src.format(), Format::PaperTree);
    assert_eq!(src.shape().num_layers, 4);
    assert_eq!(src.shape().moe_layers, vec![1, 2, 3]);
    assert_eq!(src.shape().top_k, 2);
    assert_eq!(src.num_experts_origin(), &Origin::Options);
    let (items, report) = read_all(&src);
    assert_eq!(report.items, want.len() as u64);
    assert_eq!(items.len(), want.len());
    for r in &want {
        let got = items
            .iter()
            .find_map(|i| match i {
                TraceItem::Request(g) if g.id.ends_with(&format!("/{}.json", r.id)) => Some(g),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} not read", r.id));
        assert_eq!(got.iterations, r.iterations);
        assert_eq!(got.workload, r.workload);
    }
    assert!(reason(&report, "truncated.json").contains("truncated"));
    assert!(reason(&report, "malformed.json").contains("expected `,`"));
    assert!(reason(&report, "range.json").contains("expert 99 out of range"));
    assert!(reason(&report, "layers.json").contains("3 layers"));
    assert!(reason(&report, "topk.json").contains("top_k 3"));
    assert!(reason(&report, "Other/").contains("model `acme/Other`"));
    assert_eq!(report.skipped.len(), 6, "{:?}", report.skipped);
}

#[test]
fn expert_count_comes_from_known_models_or_a_scan_and_says_so() {
    let shape = common::shape(32, 0, 8, 2);
    let mut rng = common::Rng::new(9);
    let root = tempfile::tempdir().unwrap();
    for org_model in ["mistralai/Mixtral-8x7B-Instruct", "someone/unknown"] {
        let w = PaperTreeWriter::new(root.path(), org_model, &shape).unwrap();
        w.write(&common::request(&mut rng, &shape, "a", 4, 1, false))
            .unwrap();
        let src = open(w.dir(), &opts(None)).unwrap();
        assert_eq!(src.shape().num_experts, 8);
        if org_model.contains("Mixtral") {
            assert_eq!(
                src.num_experts_origin(),
                &Origin::KnownModel("mistralai/Mixtral-8x7B")
            );
        } else {
            assert_eq!(src.num_experts_origin(), &Origin::Scanned { files: 1 });
        }
    }
}

#[test]
fn binary_source_streams_in_parallel_and_reports_a_cut_last_block() {
    let shape = common::shape(8, 2, 300, 4);
    let mut rng = common::Rng::new(11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.moeflow");
    let mut w = BinaryWriter::create(&path, &shape).unwrap();
    let mut single = LoadSummary::new(shape.clone(), false);
    for i in 0..50 {
        let r = common::request(&mut rng, &shape, &format!("r{i}"), 20, 5, i % 3 == 0);
        if i < 49 {
            single.add(&TraceItem::Request(r.clone())).unwrap();
        }
        w.append(&r).unwrap();
    }
    drop(w);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    let src = open(&path, &opts(None)).unwrap();
    assert_eq!(src.format(), Format::Binary);
    assert_eq!(src.shape(), &shape);
    let (total, report) = loads(&src);
    assert_eq!(total, single);
    assert_eq!(report.items, 49);
    assert_eq!(report.bytes, len - 10);
    assert!(reason(&report, "live.moeflow").contains("truncated"));
}

#[test]
fn real_sglang_counts_directory() {
    let Some(dir) = common::shared_data("deepseek-v3-expert-counts") else {
        return;
    };
    let src = open(&dir, &opts(None)).unwrap();
    assert_eq!(src.format(), Format::SglangCounts);
    let s = src.shape();
    assert_eq!(
        (s.num_layers, s.num_experts, s.moe_layers.len()),
        (61, 256, 58)
    );
    assert_eq!(s.moe_layers[0], 3);
    // The folder name says DeepSeek-V3, whose published top-k is 8.
    assert_eq!(
        src.top_k_origin(),
        &Origin::KnownModel("deepseek-ai/DeepSeek-V3")
    );
    let (items, report) = read_all(&src);
    assert_eq!(report.items, 8, "{:?}", report.skipped);
    assert!(
        report.skipped.iter().all(|s| s.path.ends_with("README.md")) || report.skipped.is_empty()
    );
    let TraceItem::Counts(c) = &items[0] else {
        panic!("not counts")
    };
    assert_eq!(c.phase, Some(Phase::Decode));
    assert_eq!(c.workload.as_deref(), Some("in1000out1000"));
    // Renamed elsewhere, nobody states top-k: it is reported unknown, not guessed.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("prefill_in512.json"),
        tmp.path().join("prefill_in512.json"),
    )
    .unwrap();
    let src = open(&tmp.path().join("prefill_in512.json"), &opts(None)).unwrap();
    if moeflow_trace::io::known_models::find_in_path(tmp.path()).is_none() {
        assert_eq!(src.top_k_origin(), &Origin::Unknown);
        assert_eq!(src.shape().top_k, 0);
    }
}

#[test]
fn real_mixtral_jsonl_matches_the_published_paper_conversion() {
    let (Some(jsonl), Some(paper)) = (
        common::shared_data("mixtral-8x7b-routing/humaneval_p0_prompt_and_generation.jsonl"),
        common::shared_data("mixtral-8x7b-routing/humaneval_p0.paper-format.json"),
    ) else {
        return;
    };
    let src = open(&jsonl, &opts(None)).unwrap();
    assert_eq!(src.format(), Format::Jsonl);
    let s = src.shape().clone();
    assert_eq!((s.num_layers, s.num_experts, s.top_k), (32, 8, 2));
    let (items, report) = read_all(&src);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let TraceItem::Request(r) = &items[0] else {
        panic!()
    };
    assert_eq!(r.prompt_len, 135);
    assert!(r.iterations[0].layers.iter().all(|l| l.weights.is_some()));
    // The tokens present at every layer are exactly the published prefill.
    let pre = &r.iterations[0];
    let full: Vec<usize> = (0..r.prompt_len)
        .filter(|&t| pre.layers.iter().all(|l| l.present(t)))
        .collect();
    let psrc = open(&paper, &opts(Some(8))).unwrap();
    let (pitems, _) = read_all(&psrc);
    let TraceItem::Request(p) = &pitems[0] else {
        panic!()
    };
    assert_eq!(full.len(), p.prompt_len);
    for l in &p.iterations[0].layers {
        let ours = pre.layer(l.layer as usize).unwrap();
        let picked: Vec<u16> = full.iter().flat_map(|&t| ours.token(t).to_vec()).collect();
        assert_eq!(picked, l.experts, "layer {}", l.layer);
    }
    assert!(pre
        .layers
        .iter()
        .any(|l| l.experts.contains(&MISSING_EXPERT)));

    // Generation-only file: two requests aligned by token_idx.
    let gen = common::shared_data("mixtral-8x7b-routing/humaneval_generation.jsonl").unwrap();
    let (items, report) = read_all(&open(&gen, &opts(None)).unwrap());
    assert!(report.skipped.is_empty());
    assert_eq!(items.len(), 2);
    assert!(items
        .iter()
        .all(|i| matches!(i, TraceItem::Request(r) if r.prompt_len == 0)));
}

#[test]
fn a_directory_of_mixed_formats_reads_one_and_reports_the_rest() {
    let Some(dir) = common::shared_data("mixtral-8x7b-routing") else {
        return;
    };
    let src = open(&dir, &opts(None)).unwrap();
    let (_, report) = read_all(&src);
    assert_eq!(src.format(), Format::Jsonl);
    assert_eq!(report.items, 3);
    assert!(reason(&report, "paper-format.json").contains("paper JSON file in a JSONL"));
}

#[test]
fn a_recording_directory_is_read_once_through_its_binary_file() {
    // What `moeflow serve --trace-dir DIR` writes: the same requests as DIR/paper/... and
    // DIR/trace.mfbin.
    let shape = common::shape(6, 1, 16, 2);
    let mut rng = common::Rng::new(5);
    let dir = tempfile::tempdir().unwrap();
    let paper = dir.path().join(recording::PAPER_DIR);
    let tree = PaperTreeWriter::new(&paper, "org/model", &shape).unwrap();
    let mut bin = BinaryWriter::create(&dir.path().join(recording::BINARY_FILE), &shape).unwrap();
    let mut want = LoadSummary::new(shape.clone(), false);
    for i in 0..6 {
        let r = common::request(&mut rng, &shape, &format!("r{i}"), 9, 4, true);
        tree.write(&r).unwrap();
        bin.append(&r).unwrap();
        want.add(&TraceItem::Request(r)).unwrap();
    }
    bin.finish().unwrap();
    let src = open(dir.path(), &opts(Some(16))).unwrap();
    assert_eq!(src.format(), Format::Binary);
    let (got, report) = loads(&src);
    assert_eq!(report.items, 6);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(got, want, "every request counted once");

    // Anything else beside them makes it an ordinary directory again: the majority format
    // (the paper files) is read and the binary file is reported.
    std::fs::write(dir.path().join("notes.json"), b"[]").unwrap();
    let src = open(dir.path(), &opts(Some(16))).unwrap();
    assert_eq!(src.format(), Format::PaperTree);
    let (_, report) = loads(&src);
    assert!(reason(&report, recording::BINARY_FILE).contains("binary file in a paper JSON"));
}
