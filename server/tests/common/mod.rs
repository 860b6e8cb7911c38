//! Helpers shared by the process-level tests: golden checkpoints, local coordinators and
//! `moeflow worker` processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use candle_core::{DType, Device};
use moeflow_comm::bootstrap::{Coordinator, CoordinatorConfig};
use moeflow_comm::GroupIdentity;
use moeflow_placement::{PlacementPlan, PlanTarget};
use moeflow_worker::config::{model_fingerprint, ModelConfig};
use moeflow_worker::model::{ForwardCtx, LoadOptions, LogitsMode, SeqInput, Transformer};
use moeflow_worker::moe::{LocalDispatch, RoutingObserver};

pub const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

pub fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../worker/tests/golden")
        .join(name)
}

/// Writes the tiny qwen3_moe checkpoint to `out` through `moeflow init-model`, as a user or
/// the Kubernetes manifests' init container does.
pub fn init_tiny_with_cli(out: &Path) {
    let ok = Command::new(BIN)
        .args([
            "init-model",
            "--arch",
            "qwen3_moe",
            "--preset",
            "tiny",
            "--force",
        ])
        .arg("--out")
        .arg(out)
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("init-model");
    assert!(ok.success(), "moeflow init-model failed");
}

pub fn target(dir: &Path) -> PlanTarget {
    let s = ModelConfig::from_dir(dir).expect("config").shape();
    PlanTarget {
        num_experts: s.num_experts,
        moe_layers: s.moe_layers,
    }
}

/// A worker process, killed when dropped.
pub struct Worker {
    pub child: Child,
    pub control: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_worker(
    dir: &Path,
    coordinator: &str,
    plan: &Path,
    rank: usize,
    group: &str,
) -> Worker {
    let mut child = Command::new(BIN)
        .args([
            "worker",
            "--coordinator",
            coordinator,
            "--rank",
            &rank.to_string(),
            "--group-id",
            group,
            "--peer-timeout-ms",
            "1500",
        ])
        .arg("--model")
        .arg(dir)
        .arg("--plan")
        .arg(plan)
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let control = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("MOEFLOW_WORKER_READY") => {
                break l
                    .split("control=")
                    .nth(1)
                    .expect("control addr")
                    .trim()
                    .to_string();
            }
            Some(Ok(_)) => continue,
            _ => panic!("worker {rank} exited before it was ready"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Worker { child, control }
}

/// A coordinator on `rt` plus `ranks` workers of `plan`; the temp dir holds the plan file.
pub fn start_group(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    plan: &PlacementPlan,
    group: &str,
) -> (Vec<Worker>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan_path = tmp.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_json_pretty()).expect("write plan");
    let identity = GroupIdentity {
        group_id: group.into(),
        model_fingerprint: model_fingerprint(dir).expect("fingerprint"),
        plan_version: plan.fingerprint(),
    };
    let coordinator =
        Coordinator::new(CoordinatorConfig::new(plan.num_ranks, identity)).expect("coordinator");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(coordinator.serve(listener, std::future::pending()));
    let handles: Vec<_> = (0..plan.num_ranks)
        .map(|r| {
            let (dir, url, plan_path, group) = (
                dir.to_path_buf(),
                url.clone(),
                plan_path.clone(),
                group.to_string(),
            );
            std::thread::spawn(move || spawn_worker(&dir, &url, &plan_path, r, &group))
        })
        .collect();
    (
        handles
            .into_iter()
            .map(|h| h.join().expect("spawn thread"))
            .collect(),
        tmp,
    )
}

/// The router's handle to a started group.
pub async fn connect(
    workers: &[Worker],
    step_timeout: std::time::Duration,
) -> moeflow_router::WorkerGroup {
    moeflow_router::WorkerGroup::connect(
        workers.iter().map(|w| w.control.clone()).collect(),
        step_timeout,
    )
    .await
    .expect("connect to the group")
}

/// Greedy generation in one process: for each of `steps` forward passes (the prompt, then
/// each generated token fed back), the last position's logits and what an observer of type `O`
/// saw of its routing.
pub fn reference_passes<O: RoutingObserver + Default>(
    dir: &Path,
    prompt: &[u32],
    steps: usize,
) -> Vec<(Vec<f32>, O)> {
    let model = Transformer::load(
        dir,
        LoadOptions {
            dtype: DType::F32,
            device: &Device::Cpu,
            experts: None,
        },
    )
    .expect("load");
    let mut kv = model.kv_cache(16, 64);
    let mut out = Vec::new();
    let mut input = SeqInput {
        seq: 0,
        tokens: prompt.to_vec(),
        start: 0,
        prompt: true,
    };
    for _ in 0..steps {
        let mut observer = O::default();
        let mut ctx = ForwardCtx {
            dispatch: &mut LocalDispatch,
            observer: Some(&mut observer),
        };
        let l = model
            .forward(
                std::slice::from_ref(&input),
                &mut kv,
                &mut ctx,
                LogitsMode::LastPerSeq,
            )
            .expect("forward");
        let row = l
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        let next = moeflow_worker::sampling::argmax(&row) as u32;
        out.push((row, observer));
        input = SeqInput {
            seq: 0,
            start: input.start + input.tokens.len(),
            tokens: vec![next],
            prompt: false,
        };
    }
    out
}

/// An observer that keeps nothing.
#[derive(Default)]
pub struct IgnoreRouting;

impl RoutingObserver for IgnoreRouting {
    fn observe(
        &mut self,
        _layer: usize,
        _spans: &[(
            moeflow_worker::kv_cache::SeqId,
            std::ops::Range<usize>,
            bool,
        )],
        _routing: &moeflow_worker::moe::Routing,
    ) {
    }
}

/// Greedy generation in one process: the logits of each of `steps` steps.
pub fn reference_logits(dir: &Path, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    reference_passes::<IgnoreRouting>(dir, prompt, steps)
        .into_iter()
        .map(|(logits, _)| logits)
        .collect()
}

/// Greedy token ids of `steps` steps in one process.
pub fn reference_tokens(dir: &Path, prompt: &[u32], steps: usize) -> Vec<u32> {
    reference_logits(dir, prompt, steps)
        .iter()
        .map(|row| moeflow_worker::sampling::argmax(row) as u32)
        .collect()
}

/// A loopback port nothing listens on right now, chosen below the kernel's ephemeral range
/// (32768 and up on Linux): a port from `bind(0)` can be handed to a worker's own socket
/// before the server under test binds it. Each call tries the next candidate, starting at an
/// offset from the process id, so concurrent tests and test binaries do not pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// A child process (a server, a worker) killed and reaped when the test drops it, also when
/// the test fails.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl -s` with a time limit; stdout as text.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the scheduler tests tell the scheduler about the tiny qwen3_moe golden model.
pub fn info() -> moeflow_api::ModelInfo {
    moeflow_api::ModelInfo {
        id: "test".into(),
        architecture: "qwen3_moe".into(),
        max_context: 256,
        vocab_size: 512,
        num_experts: 8,
        experts_per_token: 2,
    }
}

pub fn greedy(id: &str, prompt: Vec<u32>, max_tokens: u32) -> moeflow_api::GenerateRequest {
    moeflow_api::GenerateRequest {
        request_id: id.into(),
        prompt,
        sampling: moeflow_api::SamplingParams {
            temperature: 0.0,
            ..moeflow_api::SamplingParams::default()
        },
        max_tokens,
        stop_token_ids: Vec::new(),
        workload: None,
    }
}

/// Collects a stream to its end (bounded by a hang guard).
pub async fn collect(
    mut rx: tokio::sync::mpsc::Receiver<moeflow_api::TokenEvent>,
) -> (Vec<u32>, Option<moeflow_api::TokenEvent>) {
    use moeflow_api::TokenEvent;
    let mut tokens = Vec::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(120), rx.recv())
            .await
            .expect("stream must not hang")
        {
            Some(TokenEvent::Token { id, .. }) => tokens.push(id),
            Some(end) => return (tokens, Some(end)),
            None => return (tokens, None),
        }
    }
}
