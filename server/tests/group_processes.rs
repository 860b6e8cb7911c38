//! Expert-parallel groups of real worker processes over TCP on loopback: the distributed
//! logits equal the single-process ones for several plans (replicas included) on 1-4 ranks,
//! a killed worker makes the step fail with a terminal error instead of a hang, and a worker
//! with another plan is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use moeflow_comm::bootstrap::{Coordinator, CoordinatorConfig};
use moeflow_comm::GroupIdentity;
use moeflow_placement::{PlacementPlan, PlanTarget, PLAN_FORMAT};
use moeflow_proto::v1 as pb;
use moeflow_worker::config::model_fingerprint;

mod common;

use common::{connect, golden, reference_logits, start_group, target, BIN};

/// Every expert on two ranks (`e % n` and `(e + 1) % n`), a plan with replicas everywhere.
fn replicated(t: &PlanTarget, n: usize) -> PlacementPlan {
    let mut lists = vec![Vec::new(); n];
    for e in 0..t.num_experts as u32 {
        lists[e as usize % n].push(e);
        if n > 1 {
            lists[(e as usize + 1) % n].push(e);
        }
    }
    for l in &mut lists {
        l.sort_unstable();
    }
    PlacementPlan {
        format: PLAN_FORMAT.into(),
        num_ranks: n,
        num_experts: t.num_experts,
        layers: t
            .moe_layers
            .iter()
            .map(|l| (l.to_string(), lists.clone()))
            .collect(),
        slots_per_rank: None,
        model: None,
        algorithm: Some("test-replicated".into()),
        source: None,
    }
}

const PROMPTS: [&str; 3] = ["1,2,3,4,5,6,7", "40,41,42", "100,200,300,400,500"];
const MAX_TOKENS: usize = 4;

fn run_group(dir: &Path, ranks: usize, plan: Option<&PlacementPlan>) -> Vec<serde_json::Value> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(BIN);
    cmd.arg("group")
        .arg("--model")
        .arg(dir)
        .arg("--ranks")
        .arg(ranks.to_string())
        .arg("--max-tokens")
        .arg(MAX_TOKENS.to_string())
        .arg("--return-logits")
        .arg("--ignore-eos");
    for p in PROMPTS {
        cmd.arg("--prompt-ids").arg(p);
    }
    if let Some(plan) = plan {
        let path = tmp.path().join("plan.json");
        std::fs::write(&path, plan.to_json_pretty()).expect("write plan");
        cmd.arg("--plan").arg(path);
    }
    let out = cmd
        .env("MOEFLOW_LOG", "warn")
        .output()
        .expect("run moeflow group");
    assert!(
        out.status.success(),
        "moeflow group failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn compare(dir: &Path, ranks: usize, plan: Option<&PlacementPlan>) {
    let lines = run_group(dir, ranks, plan);
    assert_eq!(lines.len(), PROMPTS.len());
    for (line, prompt) in lines.iter().zip(PROMPTS) {
        let ids: Vec<u32> = prompt.split(',').map(|s| s.parse().unwrap()).collect();
        let want = reference_logits(dir, &ids, MAX_TOKENS);
        let got: Vec<Vec<f32>> = serde_json::from_value(line["logits"].clone()).expect("logits");
        assert_eq!(got.len(), want.len());
        for (step, (a, b)) in want.iter().zip(&got).enumerate() {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                d < 1e-5,
                "{} on {ranks} ranks, prompt {prompt} step {step}: logits differ by {d}",
                dir.display()
            );
        }
    }
}

#[test]
fn distributed_logits_equal_single_process() {
    for name in ["qwen3_moe", "deepseek_v3", "llama4"] {
        let dir = golden(name);
        let t = target(&dir);
        compare(&dir, 1, None);
        compare(&dir, 2, None);
        compare(&dir, 3, Some(&replicated(&t, 3)));
        compare(&dir, 4, Some(&replicated(&t, 4)));
    }
}

fn chunk(seq: u64, tokens: Vec<u32>, start: u32, prompt: bool) -> pb::SeqChunk {
    pb::SeqChunk {
        seq_id: seq,
        tokens,
        start,
        prompt,
        sampling: prompt.then_some(pb::WorkerSampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            top_logprobs: 0,
        }),
        sample: true,
        trace: false,
    }
}

#[test]
fn killed_worker_fails_the_step_instead_of_hanging() {
    let dir = golden("qwen3_moe");
    let plan = PlacementPlan::contiguous(&target(&dir), 3).expect("plan");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut workers, _tmp) = start_group(&rt, &dir, &plan, "kill-test");
    rt.block_on(async {
        let group = connect(&workers, Duration::from_secs(60)).await;
        let first = group
            .step(
                0,
                vec![
                    vec![chunk(1, vec![1, 2, 3], 0, true)],
                    vec![chunk(2, vec![4, 5], 0, true)],
                    vec![],
                ],
                false,
            )
            .await
            .expect("healthy step");
        assert_eq!(first.len(), 3);
        // Kill rank 2; the next step must end with an error (the hang guard below is far
        // longer than the peer timeout of 1.5 s and only catches a hang).
        let _ = workers[2].child.kill();
        let _ = workers[2].child.wait();
        let second = tokio::time::timeout(
            Duration::from_secs(60),
            group.step(
                1,
                vec![
                    vec![chunk(1, vec![9], 3, false)],
                    vec![chunk(2, vec![9], 2, false)],
                    vec![],
                ],
                false,
            ),
        )
        .await
        .expect("the step must not hang");
        let err = second.expect_err("a step with a dead rank must fail");
        eprintln!("step failed as expected: {err}");
        // The surviving ranks also fail their own part: their peer is gone.
        let survivor = tokio::time::timeout(
            Duration::from_secs(60),
            group.step(2, vec![vec![], vec![], vec![]], false),
        )
        .await
        .expect("no hang");
        assert!(survivor.is_err());
    });
    workers.clear();
}

#[test]
fn frozen_worker_mid_step_fails_the_step() {
    let dir = golden("deepseek_v3");
    let plan = PlacementPlan::contiguous(&target(&dir), 3).expect("plan");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (workers, _tmp) = start_group(&rt, &dir, &plan, "freeze-test");
    rt.block_on(async {
        let group = connect(&workers, Duration::from_secs(600)).await;
        // Freeze rank 1 (it keeps its sockets open but stops answering and heartbeating); the
        // other ranks reach the MoE all-to-all, lose it after the peer timeout and fail the
        // step, long before the 600 s step timeout.
        let pid = workers[1].child.id().to_string();
        let stopped = Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill -STOP");
        assert!(stopped.success());
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            group.step(
                0,
                vec![
                    vec![chunk(1, (1..40).collect(), 0, true)],
                    vec![chunk(2, vec![4, 5], 0, true)],
                    vec![chunk(3, vec![7], 0, true)],
                ],
                false,
            ),
        )
        .await
        .expect("the step must not hang");
        let err = r.expect_err("a step with a frozen rank must fail");
        assert!(
            !matches!(err, moeflow_router::GroupError::Timeout { .. }),
            "failed by peer loss, not the step timeout: {err}"
        );
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
    });
    drop(workers);
}

#[test]
fn worker_with_another_plan_is_refused() {
    let dir = golden("qwen3_moe");
    let t = target(&dir);
    let plan = PlacementPlan::contiguous(&t, 2).expect("plan");
    let other = replicated(&t, 2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let other_path = tmp.path().join("other.json");
    std::fs::write(&other_path, other.to_json_pretty()).expect("write");
    let identity = GroupIdentity {
        group_id: "mismatch".into(),
        model_fingerprint: model_fingerprint(&dir).expect("fingerprint"),
        plan_version: plan.fingerprint(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let coordinator = Coordinator::new(CoordinatorConfig::new(2, identity)).expect("coordinator");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(coordinator.serve(listener, std::future::pending()));
    let out = Command::new(BIN)
        .args(["worker", "--coordinator", &url, "--group-id", "mismatch"])
        .arg("--model")
        .arg(&dir)
        .arg("--plan")
        .arg(&other_path)
        .env("MOEFLOW_LOG", "warn")
        .output()
        .expect("run worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan"),
        "the refusal should name the plan: {err}"
    );
}
