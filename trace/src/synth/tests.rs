use super::*;

fn small() -> SynthConfig {
    SynthConfig {
        requests: 6,
        prompt_len: (3, 9),
        output_len: (2, 6),
        hot_pairs: 3,
        layer_correlation: 0.3,
        token_correlation: 0.3,
        workloads: vec![
            SynthWorkload {
                label: "a".into(),
                weight: 1.0,
            },
            SynthWorkload {
                label: "b".into(),
                weight: 2.0,
            },
        ],
        ..SynthConfig::default()
    }
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let a: Vec<_> = SynthGenerator::new(small()).unwrap().requests().collect();
    let b: Vec<_> = SynthGenerator::new(small()).unwrap().requests().collect();
    assert_eq!(a, b);
    let c: Vec<_> = SynthGenerator::new(SynthConfig { seed: 1, ..small() })
        .unwrap()
        .requests()
        .collect();
    assert_ne!(a, c);
    // Any request alone equals its place in the stream.
    let g = SynthGenerator::new(small()).unwrap();
    assert_eq!(g.request(4), a[4]);
}

#[test]
fn every_item_fits_the_model_and_gate_weights_sum_to_one() {
    let g = SynthGenerator::new(small()).unwrap();
    let shape = g.shape().clone();
    for item in g.items() {
        item.validate(&shape).unwrap();
        let TraceItem::Request(r) = item else {
            unreachable!()
        };
        assert!(matches!(r.workload.as_deref(), Some("a" | "b")));
        assert_eq!(r.iterations[0].num_tokens(), r.prompt_len);
        for it in &r.iterations {
            assert_eq!(it.layers.len(), shape.moe_layers.len());
            for l in &it.layers {
                let w = l.weights.as_ref().unwrap();
                for t in 0..l.num_tokens() {
                    let sel = l.token(t);
                    let mut s = sel.to_vec();
                    s.sort_unstable();
                    s.dedup();
                    assert_eq!(s.len(), sel.len(), "distinct experts per token");
                    let ws = &w[t * 2..t * 2 + 2];
                    assert!((ws.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                    assert!(ws[0] >= ws[1]);
                }
            }
        }
    }
}

#[test]
fn counts_sum_the_requests() {
    let g = SynthGenerator::new(small()).unwrap();
    let counts = g.counts();
    let shape = g.shape().clone();
    let mut from_counts = crate::LoadSummary::new(shape.clone(), false);
    for c in &counts {
        from_counts.add(&TraceItem::Counts(c.clone())).unwrap();
    }
    let mut from_requests = crate::LoadSummary::new(shape, false);
    for i in g.items() {
        from_requests.add(&i).unwrap();
    }
    for p in [Phase::Prefill, Phase::Decode] {
        let a = from_counts.select(Some(p));
        let b = from_requests.select(Some(p));
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_eq!(x.counts, y.counts);
        }
    }
    assert!(counts.iter().all(|c| c.counts[0].is_none()));
}

#[test]
fn set_and_validation_name_the_field() {
    let mut c = SynthConfig::default();
    c.apply_sets(["zipf_exponent=1.5", "prompt_len=[4, 8]", "model=m"])
        .unwrap();
    assert_eq!(c.zipf_exponent, 1.5);
    assert_eq!(c.prompt_len, (4, 8));
    assert_eq!(c.model.as_deref(), Some("m"));
    assert!(matches!(c.set("nope", "1"), Err(SynthError::Set { .. })));
    assert!(c.set("top_k", "\"x\"").is_err());
    assert!(c.apply_sets(["novalue"]).is_err());
    let from_json: SynthConfig = serde_json::from_str(r#"{"num_experts": 32}"#).unwrap();
    assert_eq!(from_json.top_k, 2);
    for (bad, field) in [
        (
            SynthConfig {
                top_k: 17,
                ..SynthConfig::default()
            },
            "top_k",
        ),
        (
            SynthConfig {
                layer_correlation: 1.5,
                ..SynthConfig::default()
            },
            "layer_correlation",
        ),
        (
            SynthConfig {
                hot_pairs: 9,
                ..SynthConfig::default()
            },
            "hot_pairs",
        ),
        (
            SynthConfig {
                prompt_len: (5, 2),
                ..SynthConfig::default()
            },
            "prompt_len",
        ),
    ] {
        match SynthGenerator::new(bad) {
            Err(SynthError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn extreme_skew_still_terminates() {
    let g = SynthGenerator::new(SynthConfig {
        zipf_exponent: 60.0,
        top_k: 4,
        num_experts: 4,
        requests: 2,
        ..SynthConfig::default()
    })
    .unwrap();
    let shape = g.shape().clone();
    for i in g.items() {
        i.validate(&shape).unwrap();
    }
}
