//! The rebalancer in a real `moeflow serve`: two decode worker processes whose gates replay a
//! skewed count distribution (`--route-replay`, all hot experts on rank 0 under the default
//! contiguous plan), `--rebalance-every 1` with the default planner (EPLB). While requests
//! run, the decode group's plan must change to an EPLB plan that splits the hot experts over
//! both ranks, and every request must complete, before and after the switch.

mod common;

use common::{curl, free_port, Killed as Serve};

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
    let (port, grpc) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string()])
        .args(["--grpc-port", &grpc.to_string()])
        .args(["--prefill-workers", "0", "--decode-workers", "2"])
        .args(["--rebalance-every", "1", "--rebalance-threshold", "0.05"])
        .arg("--route-replay")
        .arg(&source)
        .env("MOEFLOW_HOME", home.path())
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start moeflow serve");
    let _serve = Serve(child);
    let healthy = (0..600).any(|_| {
        let ok = curl(&[&format!("http://127.0.0.1:{port}/health")]).contains("healthy");
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(healthy, "moeflow serve did not become healthy");
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
