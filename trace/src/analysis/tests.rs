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

mod naive {
    //! The per-token statistics computed the obvious way, one token at a time, to check the
    //! batched, buffered analyzer against.
    use super::*;
    use proptest::prelude::*;

    const E: usize = 5;
    const K: usize = 2;

    fn shape() -> ModelShape {
        ModelShape {
            model: None,
            num_layers: 5,
            num_experts: E,
            top_k: K,
            moe_layers: vec![1, 2, 4],
        }
    }

    fn expert() -> impl Strategy<Value = u16> {
        prop_oneof![9 => 0..E as u16, 1 => Just(MISSING_EXPERT)]
    }

    fn iteration(phase: Phase, max_tokens: usize) -> impl Strategy<Value = Iteration> {
        let tokens = if phase == Phase::Decode {
            1..=1usize
        } else {
            0..=max_tokens
        };
        (
            tokens,
            proptest::sample::subsequence(vec![1u32, 2, 4], 0..=3),
        )
            .prop_flat_map(move |(n, layers)| {
                let per_layer = layers
                    .into_iter()
                    .map(move |l| {
                        proptest::collection::vec(expert(), n * K).prop_map(move |experts| {
                            LayerRouting {
                                layer: l,
                                top_k: K as u16,
                                experts,
                                weights: None,
                            }
                        })
                    })
                    .collect::<Vec<_>>();
                per_layer.prop_map(move |layers| Iteration { phase, layers })
            })
    }

    fn request() -> impl Strategy<Value = TraceItem> {
        (
            proptest::option::of(iteration(Phase::Prefill, 6)),
            proptest::collection::vec(
                prop_oneof![
                    4 => iteration(Phase::Decode, 1),
                    1 => iteration(Phase::Prefill, 3)
                ],
                0..6,
            ),
            proptest::option::of("[ab]"),
        )
            .prop_map(|(prefill, rest, workload)| {
                TraceItem::Request(RequestTrace {
                    id: "p".into(),
                    workload,
                    prompt_len: 0,
                    started_ms: None,
                    finished_ms: None,
                    iterations: prefill.into_iter().chain(rest).collect(),
                })
            })
    }

    #[derive(Default)]
    struct Naive {
        /// [phase][from slot][i][j]
        layer: Vec<u64>,
        layer_obs: Vec<u64>,
        token: Vec<u64>,
        token_obs: Vec<u64>,
        /// [phase][slot][i][j], i < j
        pairs: Vec<u64>,
        pair_tokens: Vec<u64>,
    }

    fn naive(items: &[TraceItem]) -> Naive {
        let moe = [1u32, 2, 4];
        let slot = |l: u32| moe.iter().position(|&m| m == l).unwrap();
        let mut n = Naive {
            layer: vec![0; 2 * 2 * E * E],
            layer_obs: vec![0; 2 * 2],
            token: vec![0; 3 * E * E],
            token_obs: vec![0; 3],
            pairs: vec![0; 2 * 3 * E * E],
            pair_tokens: vec![0; 2 * 3],
        };
        let valid = |s: &[u16]| s.iter().any(|&x| x != MISSING_EXPERT);
        for item in items {
            let TraceItem::Request(r) = item else {
                continue;
            };
            for (d, it) in r.iterations.iter().enumerate() {
                let p = usize::from(it.phase == Phase::Decode);
                for lr in &it.layers {
                    let s = slot(lr.layer);
                    for t in 0..lr.num_tokens() {
                        let sel = lr.token(t);
                        n.pair_tokens[p * 3 + s] += u64::from(valid(sel));
                        for a in 0..K {
                            for b in a + 1..K {
                                let (x, y) = (sel[a], sel[b]);
                                if x != MISSING_EXPERT && y != MISSING_EXPERT && x != y {
                                    let (x, y) = (x.min(y) as usize, x.max(y) as usize);
                                    n.pairs[((p * 3 + s) * E + x) * E + y] += 1;
                                }
                            }
                        }
                    }
                }
                for s in 0..2 {
                    let (Some(a), Some(b)) =
                        (it.layer(moe[s] as usize), it.layer(moe[s + 1] as usize))
                    else {
                        continue;
                    };
                    for t in 0..a.num_tokens().min(b.num_tokens()) {
                        let (f, g) = (a.token(t), b.token(t));
                        n.layer_obs[p * 2 + s] += u64::from(valid(f) && valid(g));
                        for &i in f.iter().filter(|&&i| i != MISSING_EXPERT) {
                            for &j in g.iter().filter(|&&j| j != MISSING_EXPERT) {
                                n.layer[((p * 2 + s) * E + i as usize) * E + j as usize] += 1;
                            }
                        }
                    }
                }
                let prev = d.checked_sub(1).map(|q| &r.iterations[q]);
                if let (Phase::Decode, Some(prev)) = (it.phase, prev) {
                    if prev.phase != Phase::Decode {
                        continue;
                    }
                    for lr in &it.layers {
                        let Some(pl) = prev.layer(lr.layer as usize) else {
                            continue;
                        };
                        let s = slot(lr.layer);
                        let (f, g) = (pl.token(0), lr.token(0));
                        n.token_obs[s] += u64::from(valid(f) && valid(g));
                        for &i in f.iter().filter(|&&i| i != MISSING_EXPERT) {
                            for &j in g.iter().filter(|&&j| j != MISSING_EXPERT) {
                                n.token[(s * E + i as usize) * E + j as usize] += 1;
                            }
                        }
                    }
                }
            }
        }
        n
    }

    proptest! {
        #[test]
        fn batched_counts_equal_token_by_token_counts(
            items in proptest::collection::vec(request(), 0..8),
            batch in 1usize..12,
        ) {
            let config = AnalyzerConfig { batch_tokens: batch, ..AnalyzerConfig::default() };
            let mut a = Analyzer::new(shape(), config).unwrap();
            for i in &items {
                a.add(i).unwrap();
            }
            a.flush();
            let n = naive(&items);
            let lt = a.layer_transitions.as_ref().unwrap();
            let tt = a.token_transitions.as_ref().unwrap();
            let pc = a.pairs.as_ref().unwrap();
            for p in 0..2 {
                for s in 0..2 {
                    let m = lt[p].slot(s);
                    prop_assert_eq!(&m[..], &n.layer[(p * 2 + s) * E * E..(p * 2 + s + 1) * E * E]);
                    prop_assert_eq!(lt[p].observations[s], n.layer_obs[p * 2 + s]);
                }
                for s in 0..3 {
                    prop_assert_eq!(pc[p].tokens[s], n.pair_tokens[p * 3 + s]);
                    for x in 0..E {
                        for y in x + 1..E {
                            prop_assert_eq!(
                                pc[p].pair(s, x, y),
                                n.pairs[((p * 3 + s) * E + x) * E + y]
                            );
                        }
                    }
                }
            }
            for s in 0..3 {
                prop_assert_eq!(&tt.slot(s)[..], &n.token[s * E * E..(s + 1) * E * E]);
                prop_assert_eq!(tt.observations[s], n.token_obs[s]);
            }
        }
    }
}
