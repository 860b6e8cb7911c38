//! Reads `tests/data/v1.moeflow`, written from `requests()` by the version-1 writer (commit
//! 82e47a1), so that every later version proves it still reads version-1 traces.

use moeflow_trace::{
    BinaryReader, Iteration, LayerRouting, ModelShape, Phase, RequestTrace, MISSING_EXPERT,
};

fn shape() -> ModelShape {
    ModelShape {
        model: Some("fixture/v1".into()),
        num_layers: 3,
        num_experts: 300,
        top_k: 2,
        moe_layers: vec![1, 2],
    }
}

fn requests() -> Vec<RequestTrace> {
    let entry = |layer: u32, experts: Vec<u16>, weights: Option<Vec<f32>>| LayerRouting {
        layer,
        top_k: 2,
        experts,
        weights,
    };
    vec![
        RequestTrace {
            id: "a/q1.json".into(),
            workload: Some("bench/subject".into()),
            prompt_len: 3,
            started_ms: Some(1_700_000_000_000),
            finished_ms: Some(1_700_000_000_500),
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![
                        entry(
                            1,
                            vec![0, 299, 7, 8, 250, 3],
                            Some(vec![0.75, 0.25, 0.5, 0.5, 0.875, 0.125]),
                        ),
                        entry(
                            2,
                            vec![1, 2, MISSING_EXPERT, MISSING_EXPERT, 298, 4],
                            Some(vec![0.625, 0.375, 0.0, 0.0, 0.9375, 0.0625]),
                        ),
                    ],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![
                        entry(1, vec![5, 6], Some(vec![0.5, 0.5])),
                        entry(2, vec![257, 256], Some(vec![0.625, 0.375])),
                    ],
                },
            ],
        },
        RequestTrace {
            id: "q2".into(),
            workload: None,
            prompt_len: 1,
            started_ms: None,
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![entry(1, vec![10, 11], None), entry(2, vec![12, 13], None)],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![entry(2, vec![14, 15], None)],
                },
            ],
        },
    ]
}

#[test]
fn version_1_files_still_read() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v1.moeflow");
    let mut r = BinaryReader::open(std::path::Path::new(p)).unwrap();
    assert_eq!(r.shape(), &shape());
    let got: Vec<_> = r.by_ref().collect::<Result<_, _>>().unwrap();
    assert!(r.complete());
    assert_eq!(got, requests());
    assert_eq!(r.version(), 1);
}

#[test]
fn an_unknown_version_is_refused_naming_it() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v1.moeflow");
    let mut bytes = std::fs::read(p).unwrap();
    bytes[8] = 9;
    let err = BinaryReader::new(&bytes[..]).err().unwrap().to_string();
    assert!(err.contains("version 9"), "{err}");
}
