//! The placement plans the Kubernetes overlays ship (deploy/kubernetes/overlays/*/placement)
//! are plans moeflow accepts for the model each overlay serves.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_worker::config::ModelConfig;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

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
    let init = Command::new(BIN)
        .args([
            "init-model",
            "--arch",
            "qwen3_moe",
            "--preset",
            "tiny",
            "--out",
        ])
        .arg(&model)
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("init-model");
    assert!(init.success());
    let shape = ModelConfig::from_dir(&model).expect("config").shape();
    let target = PlanTarget {
        num_experts: shape.num_experts,
        moe_layers: shape.moe_layers,
    };
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
