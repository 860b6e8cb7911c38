//! Re-placement of a real `moeflow serve` with two decode worker processes.
//!
//! The rebalancer: gates replay a skewed count distribution (`--route-replay`, all hot
//! experts on rank 0 under the default contiguous plan), `--rebalance-every 1` with the
//! default planner (EPLB). While requests run, the decode group's plan must change to an EPLB
//! plan that splits the hot experts over both ranks, and every request must complete, before
//! and after the switch.
//!
//! `moeflow place apply --relabel`: a plan that only swaps the ranks' expert lists loads
//! nothing once relabelled, and everything when a one-rank node forbids the swap.

mod common;

use common::{curl, free_port, Killed as Serve};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use moeflow_placement::PlacementPlan;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

/// A greedy completion of exactly `max_tokens` tokens; panics unless it completed.
fn complete(port: u16, max_tokens: u32) {
    let body = format!(
        r#"{{"prompt":"Once upon a time","max_tokens":{max_tokens},"ignore_eos":true,"temperature":0}}"#
    );
    let out = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &format!("http://127.0.0.1:{port}/v1/completions"),
    ]);
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("completion response {out:?}: {e}"));
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], max_tokens, "{v}");
}

/// The decode group's plan, as `moeflow place show` reads it from the Admin API.
fn decode_plan(grpc: u16) -> PlacementPlan {
    let out = Command::new(BIN)
        .args(["place", "show", "--group", "decode", "--addr"])
        .arg(format!("127.0.0.1:{grpc}"))
        .output()
        .expect("moeflow place show");
    assert!(out.status.success(), "place show: {out:?}");
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

/// `moeflow serve` (tiny preset, two decode ranks) with `extra` flags, healthy; returns the
/// process guard, the HTTP port and the gRPC port.
fn serve(home: &Path, extra: &[&str]) -> (Serve, u16, u16) {
    let (port, grpc) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string()])
        .args(["--grpc-port", &grpc.to_string()])
        .args(["--prefill-workers", "0", "--decode-workers", "2"])
        .args(extra)
        .env("MOEFLOW_HOME", home)
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start moeflow serve");
    let guard = Serve(child);
    let healthy = (0..600).any(|_| {
        let ok = curl(&[&format!("http://127.0.0.1:{port}/health")]).contains("healthy");
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(healthy, "moeflow serve did not become healthy");
    (guard, port, grpc)
}

/// `moeflow place apply` with `extra` flags; its JSON report.
fn apply(grpc: u16, plan: &Path, extra: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["place", "apply", "--group", "decode", "--plan"])
        .arg(plan)
        .arg("--addr")
        .arg(format!("127.0.0.1:{grpc}"))
        .args(extra)
        .env("MOEFLOW_LOG", "warn")
        .output()
        .expect("moeflow place apply");
    assert!(out.status.success(), "place apply: {out:?}");
    serde_json::from_slice(&out.stdout).expect("apply report JSON")
}

#[test]
fn apply_relabels_a_plan_to_load_the_fewest_experts() {
    let home = tempfile::tempdir().expect("tempdir");
    let (_serve, port, grpc) = serve(home.path(), &[]);
    let before = decode_plan(grpc);
    // The same expert lists on swapped ranks: as balanced, but every expert moves as given.
    let mut swapped = before.clone();
    for ranks in swapped.layers.values_mut() {
        ranks.reverse();
    }
    let layers = before.layers.len();
    let per_layer = before.num_experts;
    let file = home.path().join("swapped.json");
    std::fs::write(&file, swapped.to_json_pretty()).expect("write plan");

    let r = apply(grpc, &file, &["--relabel"]);
    assert_eq!(
        r["relabel"]["experts_to_load_as_given"],
        layers * per_layer,
        "{r}"
    );
    assert_eq!(r["relabel"]["experts_to_load"], 0, "{r}");
    assert_eq!(r["experts_loaded"], 0, "{r}");
    assert_eq!(decode_plan(grpc).layers, before.layers);

    // One rank per node: lists may not leave their node, so the swap stands and loads all.
    let r = apply(grpc, &file, &["--relabel", "--ranks-per-node", "1"]);
    assert_eq!(r["relabel"]["experts_to_load"], layers * per_layer, "{r}");
    assert_eq!(r["experts_loaded"], layers * per_layer, "{r}");
    assert_eq!(decode_plan(grpc).layers, swapped.layers);
    complete(port, 8);
}

#[test]
fn rebalancer_switches_a_skewed_decode_group_to_an_eplb_plan() {
    let home = tempfile::tempdir().expect("tempdir");
    // The tiny preset: 4 MoE layers, 8 experts, top-2. Experts 0-3 carry all the load; the
    // contiguous plan puts them all on rank 0.
    let source = home.path().join("skewed.json");
    std::fs::write(
        &source,
        r#"{"logical_count": [[1000, 1000, 1000, 1000, 1, 1, 1, 1]]}"#,
    )
    .expect("write counts");
    let route_replay = source.to_string_lossy().into_owned();
    let (_serve, port, grpc) = serve(
        home.path(),
        &[
            "--rebalance-every",
            "1",
            "--rebalance-threshold",
            "0.05",
            "--route-replay",
            &route_replay,
        ],
    );
    let before = decode_plan(grpc);
    assert_ne!(before.algorithm.as_deref(), Some("eplb"));
    assert!((0..4).all(|e| before.hosts(0, 0, e)), "{before:?}");

    // Requests until the group's plan changes (bounded by a request count, not a clock).
    let mut switched = None;
    for _ in 0..60 {
        complete(port, 24);
        let now = decode_plan(grpc);
        if now.fingerprint() != before.fingerprint() {
            switched = Some(now);
            break;
        }
    }
    let after = switched.expect("the rebalancer never changed the decode plan");
    assert_eq!(after.algorithm.as_deref(), Some("eplb"));
    after.validate().expect("valid plan");
    for (layer, ranks) in &after.layers {
        for (r, experts) in ranks.iter().enumerate() {
            assert_eq!(experts.len(), 4, "layer {layer} rank {r}: {experts:?}");
            let hot = experts.iter().filter(|&&e| e < 4).count();
            assert_eq!(hot, 2, "layer {layer} rank {r} hosts {experts:?}");
        }
    }
    // Serving goes on under the new plan.
    for _ in 0..3 {
        complete(port, 24);
    }
}
