//! `moeflow router` with workers started separately (as on other hosts or in pods): the
//! workers find their groups through the router's registry, and the router then serves.

mod common;

use common::{curl, free_port, Killed};

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

#[test]
fn separately_started_workers_join_through_the_registry() {
    let home = tempfile::tempdir().expect("tempdir");
    let (port, grpc, registry) = (free_port(), free_port(), free_port());
    let _router = Killed(
        Command::new(BIN)
            .args(["router", "--prefill-workers", "1", "--decode-workers", "2"])
            .args([
                "--port",
                &port.to_string(),
                "--grpc-port",
                &grpc.to_string(),
                "--registry-port",
                &registry.to_string(),
            ])
            .env("MOEFLOW_HOME", home.path())
            .env("MOEFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("router"),
    );
    let model = home.path().join("models/tiny-qwen3_moe");
    // The router writes the default checkpoint; wait for it before the workers load it.
    for _ in 0..600 {
        if model.join("tokenizer_config.json").exists() && model.join("model.safetensors").exists()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{registry}");
    let workers: Vec<Killed> = ["decode", "prefill", "decode"]
        .iter()
        .map(|role| {
            Killed(
                Command::new(BIN)
                    .args(["worker", "--router", &url, "--role", role])
                    .arg("--model")
                    .arg(&model)
                    .env("MOEFLOW_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("worker"),
            )
        })
        .collect();
    let mut healthy = false;
    for _ in 0..600 {
        if curl(&[&format!("http://127.0.0.1:{port}/health")]).contains("\"healthy\":true") {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(healthy, "the router never became healthy");
    let r = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"prompt":"Hello","max_tokens":5,"temperature":0}"#,
        &format!("http://127.0.0.1:{port}/v1/completions"),
    ]);
    assert!(r.contains("\"completion_tokens\":5"), "{r}");
    drop(workers);
}
