use super::*;
use crate::model::{CountsTrace, Iteration, LayerRouting};

fn shape() -> ModelShape {
    ModelShape {
        model: Some("tiny".into()),
        num_layers: 4,
        num_experts: 6,
        top_k: 2,
        moe_layers: vec![1, 2, 3],
    }
}

fn layer(layer: u32, experts: Vec<u16>) -> LayerRouting {
    LayerRouting {
        layer,
        top_k: 2,
        experts,
        weights: None,
    }
}

/// Prefill of two tokens, then three decode steps.
fn request(workload: &str) -> TraceItem {
    let it = |phase, l1: Vec<u16>, l2: Vec<u16>, l3: Vec<u16>| Iteration {
        phase,
        layers: vec![layer(1, l1), layer(2, l2), layer(3, l3)],
    };
    TraceItem::Request(RequestTrace {
        id: format!("{workload}-r"),
        workload: Some(workload.into()),
        prompt_len: 2,
        started_ms: None,
        finished_ms: None,
        iterations: vec![
            it(
                Phase::Prefill,
                vec![0, 1, 2, 3],
                vec![1, 2, 3, 4],
                vec![2, 3, 4, 5],
            ),
            it(Phase::Decode, vec![0, 1], vec![1, 2], vec![2, 3]),
            it(
                Phase::Decode,
                vec![0, 1],
                vec![1, MISSING_EXPERT],
                vec![2, 3],
            ),
            it(Phase::Decode, vec![0, 5], vec![1, 2], vec![2, 3]),
        ],
    })
}

fn counts(workload: &str, phase: Option<Phase>) -> TraceItem {
    TraceItem::Counts(CountsTrace {
        id: workload.into(),
        workload: Some(workload.into()),
        phase,
        counts: vec![
            None,
            Some(vec![10, 1, 1, 1, 1, 1]),
            Some(vec![1, 10, 1, 1, 1, 1]),
            Some(vec![1, 1, 10, 1, 1, 1]),
        ],
    })
}

#[test]
fn aggregate_counts_leave_per_token_statistics_unavailable() {
    let mut a = Analyzer::new(shape(), AnalyzerConfig::default()).unwrap();
    a.add(&counts("x", Some(Phase::Prefill))).unwrap();
    a.add(&counts("x", Some(Phase::Decode))).unwrap();
    let r = a.finish();
    assert!(r.layer_transitions.all.is_none());
    assert!(r.token_transitions.is_none());
    assert!(r.coactivation.all.is_none());
    assert!(r.notes.iter().any(|n| n.contains("not available")));
    let pf = r.frequencies.prefill.as_ref().unwrap();
    assert_eq!(pf.layers[0].max_over_mean, Some(10.0 / (15.0 / 6.0)));
    assert_eq!(pf.layers[0].hot, vec![0]);
    let pd = &r.prefill_vs_decode;
    assert_eq!(pd.workloads.len(), 1);
    assert!((pd.mean_spearman.unwrap() - 1.0).abs() < 1e-12);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["token_transitions"].is_null());
    assert!(json["coactivation"]["all"].is_null());
    let md = render_markdown(&r, &[]);
    assert!(md.contains("n/a"));
}

#[test]
fn per_token_statistics_count_what_they_should() {
    let mut a = Analyzer::new(shape(), AnalyzerConfig::default()).unwrap();
    a.add(&request("w")).unwrap();
    a.flush();
    let lt = a.layer_transitions.as_ref().unwrap();
    // Prefill, layer 1 -> 2: token 0 {0,1} -> {1,2}, token 1 {2,3} -> {3,4}.
    let e = 6;
    let cell = |row: usize, col: usize| row * e + col;
    let m = lt[0].slot(0);
    assert_eq!(m[cell(0, 1)], 1);
    assert_eq!(m[cell(2, 4)], 1);
    assert_eq!(m.iter().sum::<u64>(), 8);
    // Decode 1 -> 2: the second step has a missing expert at layer 2.
    let d = lt[1].slot(0);
    assert_eq!(d.iter().sum::<u64>(), 4 + 2 + 4);
    // Token level at layer 1: {0,1}->{0,1}, {0,1}->{0,5}.
    let tt = a.token_transitions.as_ref().unwrap();
    let t = tt.slot(0);
    assert_eq!(t[cell(0, 0)], 2);
    assert_eq!(t[cell(1, 5)], 1);
    assert_eq!(tt.observations, vec![2, 2, 2]);
    // Pairs at layer 2, decode: (1,2) twice, the half-missing token adds no pair.
    let p = &a.pairs.as_ref().unwrap()[1];
    assert_eq!(p.tokens[1], 3);
    assert_eq!(p.pair(1, 1, 2), 2);

    let r = a.report();
    assert!(r.layer_transitions.all.as_ref().unwrap().coverage.is_some());
    assert!(r.token_transitions.as_ref().unwrap().coverage.is_some());
    assert!(r.coactivation.decode.is_some());
    assert_eq!(r.inputs.prefill_tokens, 2);
    assert_eq!(r.inputs.decode_tokens, 3);
}

#[test]
fn merge_equals_sequential_folding() {
    let items = [
        request("a"),
        counts("b", Some(Phase::Prefill)),
        request("b"),
        counts("c", None),
    ];
    let mut seq = Analyzer::new(shape(), AnalyzerConfig::default()).unwrap();
    items.iter().for_each(|i| seq.add(i).unwrap());
    let mut left = Analyzer::new(shape(), AnalyzerConfig::default()).unwrap();
    let mut right = left.clone();
    items[..2].iter().for_each(|i| left.add(i).unwrap());
    items[2..].iter().for_each(|i| right.add(i).unwrap());
    left.merge(&right).unwrap();
    assert_eq!(left.report(), seq.report());

    let other = Analyzer::new(
        ModelShape {
            num_experts: 7,
            ..shape()
        },
        AnalyzerConfig::default(),
    )
    .unwrap();
    assert!(matches!(left.merge(&other), Err(AnalysisError::Mismatch)));
}

#[test]
fn bad_items_and_configs_are_refused() {
    let mut a = Analyzer::new(shape(), AnalyzerConfig::default()).unwrap();
    let bad = TraceItem::Counts(CountsTrace {
        id: "bad".into(),
        workload: None,
        phase: None,
        counts: vec![Some(vec![1; 6])],
    });
    assert!(a.add(&bad).is_err());
    assert_eq!(a.report().inputs.counts_items, 0);
    let cfg = AnalyzerConfig {
        top_fraction: 0.0,
        ..AnalyzerConfig::default()
    };
    assert!(matches!(
        Analyzer::new(shape(), cfg),
        Err(AnalysisError::Config(_))
    ));
    let bad_shape = ModelShape {
        moe_layers: vec![1, 9],
        ..shape()
    };
    assert!(matches!(
        Analyzer::new(bad_shape, AnalyzerConfig::default()),
        Err(AnalysisError::Shape(_))
    ));
    let unknown: Result<AnalyzerConfig, _> = serde_json::from_str(r#"{"top_n": 3, "nope": 1}"#);
    assert!(unknown.is_err());
}

#[test]
fn write_report_writes_json_markdown_and_svg_with_text() {
    let mut a = Analyzer::new(shape(), AnalyzerConfig::default()).unwrap();
    a.add(&request("a")).unwrap();
    a.add(&request("b")).unwrap();
    let r = a.finish();
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(&r, dir.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "report.json",
        "report.md",
        "skew.svg",
        "frequency_prefill.svg",
        "frequency_decode.svg",
        "layer_transition.svg",
        "token_transition.svg",
        "prefill_decode_spearman.svg",
        "coactivation_top_share.svg",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let back: AnalysisReport =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    // Floats may differ in the last bit after a JSON round trip; the structure may not.
    assert_eq!(back.inputs, r.inputs);
    assert_eq!(back.notes, r.notes);
    assert_eq!(back.workloads.profiles.len(), r.workloads.profiles.len());
    assert!(back.token_transitions.is_some());
    let svg = std::fs::read_to_string(dir.path().join("skew.svg")).unwrap();
    assert!(svg.contains("<text") && svg.contains("max / mean"));
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("![skew.svg](skew.svg)"));
}
