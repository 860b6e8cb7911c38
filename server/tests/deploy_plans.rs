//! The placement plans the Kubernetes overlays ship (deploy/kubernetes/overlays/*/placement)
//! are plans moeflow accepts for the model each overlay serves.

mod common;

use std::path::{Path, PathBuf};

use common::{init_tiny_with_cli, target};
use moeflow_placement::{PlacementPlan, PlanTarget};

fn plan(overlay: &str, role: &str) -> PlacementPlan {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/overlays")
        .join(overlay)
        .join("placement")
        .join(format!("{role}.json"));
    PlacementPlan::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn cpu_overlay_plans_fit_the_tiny_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny-qwen3_moe");
    init_tiny_with_cli(&model);
    let target = target(&model);
    for role in ["prefill", "decode"] {
        let p = plan("cpu", role);
        p.check_target(&target)
            .unwrap_or_else(|e| panic!("cpu {role} plan: {e}"));
        assert_eq!(p.num_ranks, 2, "cpu {role}: PREFILL/DECODE_WORKERS is 2");
    }
}

#[test]
fn gpu_overlay_plans_are_contiguous_over_qwen3_30b_a3b() {
    // Qwen3-30B-A3B: 48 layers, all MoE, 128 routed experts.
    let target = PlanTarget {
        num_experts: 128,
        moe_layers: (0..48).collect(),
    };
    let want = PlacementPlan::contiguous(&target, 4).expect("contiguous");
    for role in ["prefill", "decode"] {
        let p = plan("gpu", role);
        p.check_target(&target)
            .unwrap_or_else(|e| panic!("gpu {role} plan: {e}"));
        assert_eq!(p.fingerprint(), want.fingerprint(), "gpu {role} plan");
    }
}
