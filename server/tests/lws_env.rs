//! `moeflow worker` as the Kubernetes manifests start it (deploy/kubernetes): the same flags,
//! and the LeaderWorkerSet environment (`LWS_GROUP_SIZE`, `LWS_WORKER_INDEX`,
//! `LWS_LEADER_ADDRESS`) that the LWS controller injects into every pod. The worker must take
//! its rank from the pod index, its group size from the group it joins (refusing an LWS sized
//! differently), and report its leader.

mod common;

use common::{free_port, init_tiny_with_cli, Killed};

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");
const LEADER: &str = "moeflow-decode-0.moeflow-decode.default";

/// `moeflow worker` with the flags of deploy/kubernetes/base/workers.yaml (addresses on
/// loopback instead of the pod IP) and the LWS environment of pod `index`.
fn lws_worker(model: &Path, registry: &str, size: &str, index: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--router", registry, "--role", "decode"])
        .arg(format!("--model={}", model.display()))
        .args([
            "--advertise-host=127.0.0.1",
            "--comm-listen=127.0.0.1:0",
            "--control-listen=127.0.0.1:0",
            "--comm=tcp",
            "--device=cpu",
            "--dtype=f32",
            "--kv-blocks=1024",
            "--peer-timeout-ms=10000",
        ])
        .env("LWS_GROUP_SIZE", size)
        .env("LWS_WORKER_INDEX", index)
        .env("LWS_LEADER_ADDRESS", LEADER)
        .env("MOEFLOW_LOG", "warn");
    cmd
}

/// Runs a worker that must refuse to start; returns its stderr.
fn refused(mut cmd: Command) -> String {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the worker started: {err}");
    err
}

/// Fields of the `MOEFLOW_WORKER_READY` line, once the worker prints it.
fn ready_fields(child: &mut Child) -> Vec<(String, String)> {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("MOEFLOW_WORKER_READY ") => break l,
            Some(Ok(_)) => continue,
            _ => panic!("the worker exited before it was ready"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The log line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no `{key}` in the ready line: {fields:?}"))
}

#[test]
fn worker_takes_rank_size_and_leader_from_the_lws_environment() {
    let home = tempfile::tempdir().expect("tempdir");
    let model = home.path().join("tiny-qwen3_moe");
    // As the manifests' init container writes it.
    init_tiny_with_cli(&model);
    let (port, grpc, registry) = (free_port(), free_port(), free_port());
    let mut router = Command::new(BIN)
        .args(["router", "--prefill-workers", "0", "--decode-workers", "2"])
        .arg(format!("--model={}", model.display()))
        .args([
            &format!("--port={port}"),
            &format!("--grpc-port={grpc}"),
            &format!("--registry-port={registry}"),
            "--bind-host=127.0.0.1",
            "--advertise-host=127.0.0.1",
        ])
        .env("MOEFLOW_HOME", home.path())
        .env("MOEFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("router");
    let router_log = router.stderr.take().expect("router stderr");
    let _router = Killed(router);
    let (joined_tx, joined_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(router_log).lines().map_while(Result::ok) {
            let line = strip_ansi(&line);
            if line.contains("worker joined") {
                let _ = joined_tx.send(line);
            }
        }
    });
    let url = format!("http://127.0.0.1:{registry}");

    // An LWS sized differently from the router's group fails at once, naming both sizes.
    let err = refused(lws_worker(&model, &url, "3", "0"));
    assert!(
        err.contains("LWS_GROUP_SIZE") && err.contains("is 3") && err.contains("has 2 ranks"),
        "{err}"
    );
    // A pod index outside the group likewise.
    let err = refused(lws_worker(&model, &url, "2", "2"));
    assert!(err.contains("LWS_WORKER_INDEX"), "{err}");

    // Pod 1 joins first: without LWS_WORKER_INDEX it would get the first free rank, 0.
    let mut second = lws_worker(&model, &url, "2", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("worker 1");
    let first_join = joined_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the router never saw pod 1 join");
    assert!(first_join.contains("rank=1"), "{first_join}");
    let mut leader = lws_worker(&model, &url, "2", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("worker 0");
    let second_fields = ready_fields(&mut second);
    let leader_fields = ready_fields(&mut leader);
    let _workers = (Killed(second), Killed(leader));
    for (fields, index) in [(&second_fields, "1"), (&leader_fields, "0")] {
        assert_eq!(field(fields, "rank"), index, "{fields:?}");
        assert_eq!(field(fields, "world_size"), "2", "{fields:?}");
        assert_eq!(field(fields, "leader"), LEADER, "{fields:?}");
    }

    // Both registered at their pod index: the router forms the decode group and serves.
    let mut healthy = false;
    for _ in 0..600 {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/health"))
            .output()
            .expect("curl");
        if String::from_utf8_lossy(&out.stdout).contains("\"healthy\":true") {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(healthy, "the router never became healthy");
}
