//! `moeflow serve` as a user runs it, with real worker processes: a decode worker killed
//! mid-stream ends the stream with an SSE error event and `[DONE]` and `/health` reports the
//! degraded group; a client that disconnects frees its KV blocks (visible in `/metrics`);
//! SIGTERM drains and exits. HTTP goes through `curl`, like an outside client.

mod common;

use common::free_port;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

struct Serve {
    child: Child,
    port: u16,
    _home: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers are children of serve; make sure none outlives the test.
        for pid in children(self.child.id()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn start(extra: &[&str]) -> Serve {
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let grpc = free_port();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--grpc-port",
            &grpc.to_string(),
            "--peer-timeout-ms",
            "1500",
        ])
        .args(extra)
        .env("MOEFLOW_HOME", home.path())
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start moeflow serve");
    let serve = Serve {
        child,
        port,
        _home: home,
    };
    for _ in 0..600 {
        if curl(&[&format!("http://127.0.0.1:{port}/health")])
            .1
            .contains("healthy")
        {
            return serve;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moeflow serve did not become healthy");
}

fn stream_request(port: u16, max_tokens: u32) -> Child {
    let body = format!(
        r#"{{"prompt":"Once upon a time","max_tokens":{max_tokens},"stream":true,"ignore_eos":true}}"#
    );
    Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "120",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ])
        .arg(format!("http://127.0.0.1:{port}/v1/completions"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl stream")
}

#[test]
fn killed_decode_worker_ends_the_stream_with_an_error_and_done() {
    let serve = start(&["--prefill-workers", "1", "--decode-workers", "2"]);
    let mut stream = stream_request(serve.port, 1500);
    let mut out = BufReader::new(stream.stdout.take().expect("stdout"));
    let mut seen = String::new();
    // Wait for the first tokens so the sequence is decoding.
    while seen.matches("data: ").count() < 3 {
        let mut line = String::new();
        if out.read_line(&mut line).expect("read") == 0 {
            panic!("stream ended early: {seen}");
        }
        seen.push_str(&line);
    }
    let decode: Vec<u32> = children(serve.child.id())
        .into_iter()
        .filter(|p| cmdline(*p).contains("decode-"))
        .collect();
    assert_eq!(decode.len(), 2, "expected two decode workers");
    let _ = Command::new("kill")
        .args(["-9", &decode[0].to_string()])
        .status();
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("read rest");
    let _ = stream.wait();
    assert!(
        rest.contains("\"error\""),
        "no error event in the stream: {rest}"
    );
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "stream must end with [DONE]: {rest}"
    );
    let (_, health) = curl(&[
        "-w",
        " %{http_code}",
        &format!("http://127.0.0.1:{}/health", serve.port),
    ]);
    assert!(
        health.ends_with("503"),
        "health must report the degraded group: {health}"
    );
    assert!(
        health.contains("\"decode\"") && health.contains("false"),
        "{health}"
    );
}

#[test]
fn disconnect_frees_kv_and_sigterm_drains() {
    let mut serve = start(&["--prefill-workers", "0", "--decode-workers", "2"]);
    let mut stream = stream_request(serve.port, 1500);
    let mut out = BufReader::new(stream.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("data: ") {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "stream ended early"
        );
    }
    let metrics_url = format!("http://127.0.0.1:{}/metrics", serve.port);
    let running = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("moeflow:num_requests_running"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(running(&curl(&[&metrics_url]).1), Some(1.0));
    // The client goes away mid-stream.
    let _ = stream.kill();
    let _ = stream.wait();
    let mut freed = false;
    for _ in 0..200 {
        let m = curl(&[&metrics_url]).1;
        let kv = m
            .lines()
            .find(|l| l.starts_with("moeflow:kv_cache_usage_perc{group=\"decode\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok());
        // The gauges are refreshed by the scheduler loop; a short request drives it.
        let _ = curl(&[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"prompt":"x","max_tokens":1}"#,
            &format!("http://127.0.0.1:{}/v1/completions", serve.port),
        ]);
        if kv == Some(0.0) && running(&m) == Some(0.0) {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(freed, "a disconnected client's KV blocks must be freed");
    // SIGTERM: drain and exit on its own.
    let _ = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status();
    let mut exited = false;
    for _ in 0..600 {
        if let Ok(Some(status)) = serve.child.try_wait() {
            assert!(status.success(), "serve exited with {status}");
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(exited, "serve did not exit after SIGTERM");
}
