//! Each knob of the synthetic generator moves the statistic the analysis computes for it, in
//! the expected direction. Seeded, so the outcome is fixed; the margins are wide so that they
//! test the mechanism, not one draw.

use moeflow_trace::analysis::AnalysisReport;
use moeflow_trace::synth::{SynthConfig, SynthGenerator, SynthWorkload};
use moeflow_trace::{Analyzer, AnalyzerConfig, TraceItem};

fn base() -> SynthConfig {
    SynthConfig {
        seed: 7,
        num_layers: 6,
        dense_layers: 1,
        num_experts: 32,
        top_k: 4,
        requests: 24,
        prompt_len: (32, 64),
        output_len: (32, 64),
        zipf_exponent: 0.8,
        decode_drift: 0.0,
        ..SynthConfig::default()
    }
}

fn analyze(config: SynthConfig) -> AnalysisReport {
    let g = SynthGenerator::new(config).unwrap();
    let mut a = Analyzer::new(g.shape().clone(), AnalyzerConfig::default()).unwrap();
    for item in g.items() {
        a.add(&item).unwrap();
    }
    a.finish()
}

fn skew(r: &AnalysisReport) -> f64 {
    r.frequencies
        .prefill
        .as_ref()
        .unwrap()
        .summary
        .mean_max_over_mean
        .unwrap()
}

#[test]
fn zipf_exponent_raises_skew() {
    let flat = analyze(SynthConfig {
        zipf_exponent: 0.0,
        ..base()
    });
    let mid = analyze(SynthConfig {
        zipf_exponent: 0.8,
        ..base()
    });
    let steep = analyze(SynthConfig {
        zipf_exponent: 1.5,
        ..base()
    });
    let (a, b, c) = (skew(&flat), skew(&mid), skew(&steep));
    assert!(a < 1.6, "uniform popularity: max/mean {a:.2}");
    assert!(b > a + 1.0 && c > b + 1.0, "{a:.2} < {b:.2} < {c:.2}");
}

#[test]
fn layer_correlation_raises_layer_coverage() {
    // Top-2, so that the followed expert is half of each row rather than a quarter.
    let cov = |p: f64| {
        let r = analyze(SynthConfig {
            layer_correlation: p,
            top_k: 2,
            ..base()
        });
        let t = r.layer_transitions.all.unwrap();
        (t.coverage.unwrap(), t.independent_coverage.unwrap())
    };
    let (none, none_ind) = cov(0.0);
    let (high, high_ind) = cov(0.8);
    // Without correlation the next layer ignores the current one: coverage is what skew
    // alone gives.
    assert!((none - none_ind).abs() < 0.03, "{none:.3} vs {none_ind:.3}");
    assert!(high > none + 0.1, "0.8: {high:.3}, 0: {none:.3}");
    assert!(
        high > high_ind + 0.1,
        "0.8: {high:.3} vs independent {high_ind:.3}"
    );
}

#[test]
fn token_correlation_raises_token_coverage() {
    let cov = |p: f64| {
        analyze(SynthConfig {
            token_correlation: p,
            top_k: 2,
            ..base()
        })
        .token_transitions
        .unwrap()
        .coverage
        .unwrap()
    };
    let (none, high) = (cov(0.0), cov(0.8));
    assert!(high > none + 0.1, "0.8: {high:.3}, 0: {none:.3}");
}

#[test]
fn hot_pairs_raise_coactivation() {
    let co = |pairs: usize| {
        analyze(SynthConfig {
            hot_pairs: pairs,
            hot_pair_boost: 0.9,
            ..base()
        })
        .coactivation
        .all
        .unwrap()
    };
    let (none, hot) = (co(0), co(4));
    // The boosted pairs are a few of the top 10%: they show in each layer's highest ratio.
    let ratio = |c: &moeflow_trace::analysis::coactivation::CoactivationReport| {
        c.mean_top_ratio_max.unwrap()
    };
    assert!(
        ratio(&hot) > 2.0 * ratio(&none),
        "{:.2} vs {:.2}",
        ratio(&hot),
        ratio(&none)
    );
    // Four hot pairs of 496 move the top-10% share only a little (0.44 -> 0.47 here).
    assert!(hot.mean_top_share.unwrap() > none.mean_top_share.unwrap() + 0.01);
}

#[test]
fn decode_drift_lowers_prefill_decode_correlation() {
    let spear = |d: f64| {
        analyze(SynthConfig {
            decode_drift: d,
            zipf_exponent: 1.2,
            ..base()
        })
        .prefill_vs_decode
        .mean_spearman
        .unwrap()
    };
    let (same, drifted) = (spear(0.0), spear(1.0));
    assert!(same > 0.7, "no drift: {same:.3}");
    assert!(drifted < same - 0.3, "drift: {drifted:.3} vs {same:.3}");
}

#[test]
fn workloads_differ_by_their_drift() {
    let jaccard = |d: f64| {
        let r = analyze(SynthConfig {
            workload_drift: d,
            zipf_exponent: 1.2,
            workloads: vec![
                SynthWorkload {
                    label: "a".into(),
                    weight: 1.0,
                },
                SynthWorkload {
                    label: "b".into(),
                    weight: 1.0,
                },
            ],
            ..base()
        });
        let w = &r.workloads;
        let find = |label: &str| {
            w.profiles
                .iter()
                .position(|p| {
                    p.workload.as_deref() == Some(label)
                        && p.phase == Some(moeflow_trace::Phase::Prefill)
                })
                .unwrap()
        };
        let (a, b) = (find("a"), find("b"));
        let pair = w
            .pairs
            .iter()
            .find(|p| (p.a, p.b) == (a.min(b), a.max(b)))
            .unwrap();
        (pair.mean_jaccard.unwrap(), pair.mean_pearson.unwrap())
    };
    let (j_same, p_same) = jaccard(0.0);
    let (j_diff, p_diff) = jaccard(1.0);
    assert!(j_same > j_diff + 0.2, "Jaccard {j_same:.2} vs {j_diff:.2}");
    assert!(p_same > p_diff + 0.3, "Pearson {p_same:.2} vs {p_diff:.2}");
}

#[test]
fn counts_items_give_the_same_frequencies_and_nothing_per_token() {
    let g = SynthGenerator::new(base()).unwrap();
    let mut from_counts = Analyzer::new(g.shape().clone(), AnalyzerConfig::default()).unwrap();
    for c in g.counts() {
        from_counts.add(&TraceItem::Counts(c)).unwrap();
    }
    let counts = from_counts.finish();
    let requests = analyze(base());
    assert_eq!(
        counts.frequencies.prefill.as_ref().unwrap().layers,
        requests.frequencies.prefill.as_ref().unwrap().layers
    );
    assert!(counts.layer_transitions.all.is_none());
    assert!(counts.coactivation.all.is_none());
}

#[test]
fn split_analysis_merges_to_the_whole() {
    let g = SynthGenerator::new(base()).unwrap();
    let items: Vec<TraceItem> = g.items().collect();
    let config = AnalyzerConfig::default();
    let mut whole = Analyzer::new(g.shape().clone(), config.clone()).unwrap();
    let mut halves = [whole.clone(), whole.clone()];
    for (i, item) in items.iter().enumerate() {
        whole.add(item).unwrap();
        halves[i % 2].add(item).unwrap();
    }
    let [mut a, b] = halves;
    a.merge(&b).unwrap();
    assert_eq!(a.finish(), whole.finish());
}
