//! `moeflow bench` against a real `moeflow serve` (tiny default model, prefill and decode
//! worker processes): every request completes, without errors, with the server's own token
//! counts, on both OpenAI endpoints; then SIGTERM stops the server.

mod common;

use common::free_port;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

/// `moeflow serve` and its workers, killed if the test ends early.
struct Serve {
    child: Child,
    port: u16,
    home: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = self.child.id();
            let workers = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            let _ = self.child.kill();
            let _ = self.child.wait();
            for w in workers.split_whitespace() {
                let _ = Command::new("kill").args(["-9", w]).status();
            }
        }
    }
}

/// Whether `GET /health` answers 200 (plain std, so the test needs no HTTP client).
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn start_serve() -> Serve {
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = std::fs::File::create(home.path().join("serve.log")).expect("log file");
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string()])
        .args(["--grpc-port", &free_port().to_string()])
        .env("MOEFLOW_HOME", home.path())
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start moeflow serve");
    let mut serve = Serve { child, port, home };
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if healthy(port) {
            return serve;
        }
        if let Ok(Some(status)) = serve.child.try_wait() {
            panic!("moeflow serve exited ({status}): {}", log_of(&serve));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "moeflow serve was not healthy within 300 s: {}",
        log_of(&serve)
    );
}

fn log_of(serve: &Serve) -> String {
    std::fs::read_to_string(serve.home.path().join("serve.log")).unwrap_or_default()
}

/// Waits for a child with a deadline, killing it past that.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `moeflow bench` and returns its one JSON record.
fn bench(
    serve: &Serve,
    endpoint: &str,
    prompts: u32,
    concurrency: u32,
    out: &Path,
) -> serde_json::Value {
    let mut child = Command::new(BIN)
        .args([
            "bench",
            "--base-url",
            &format!("http://127.0.0.1:{}", serve.port),
        ])
        .args([
            "--endpoint",
            endpoint,
            "--num-prompts",
            &prompts.to_string(),
        ])
        .args(["--max-concurrency", &concurrency.to_string()])
        .args([
            "--random-input-len",
            "16",
            "--random-output-len",
            "8",
            "--ignore-eos",
        ])
        .args(["--timeout", "120", "--result-file"])
        .arg(out)
        .stdout(Stdio::null())
        .spawn()
        .expect("start moeflow bench");
    let status = wait_for(&mut child, Duration::from_secs(300)).expect("bench finished in time");
    assert!(
        status.success(),
        "moeflow bench failed ({status}); server log: {}",
        log_of(serve)
    );
    let text = std::fs::read_to_string(out).expect("result file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    serde_json::from_str(lines[0]).expect("result JSON")
}

#[test]
fn bench_against_moeflow_serve() {
    let mut serve = start_serve();
    let out = serve.home.path().join("result.jsonl");

    let r = bench(&serve, "/v1/completions", 8, 4, &out);
    assert_eq!(r["completed"], 8, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(r["max_concurrency"], 4);
    // ignore_eos: every output has the asked length, by the server's own count.
    assert_eq!(r["total_output_tokens"], 8 * 8, "{r}");
    assert_eq!(r["token_counts"]["output"], "server");
    assert_eq!(r["token_counts"]["input"], "server");
    assert!(
        r["total_input_tokens"].as_u64().is_some_and(|n| n >= 8),
        "{r}"
    );
    for key in [
        "mean_ttft_ms",
        "mean_itl_ms",
        "mean_tpot_ms",
        "output_throughput",
    ] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert!(r["p99_e2el_ms"].as_f64() >= r["median_ttft_ms"].as_f64());

    let chat = bench(&serve, "/v1/chat/completions", 4, 2, &out);
    assert_eq!(
        (chat["completed"].as_u64(), chat["failed"].as_u64()),
        (Some(4), Some(0)),
        "{chat}"
    );
    assert_eq!(chat["total_output_tokens"], 4 * 8);

    let pid = serve.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_for(&mut serve.child, Duration::from_secs(60));
    assert!(status.is_some(), "moeflow serve did not exit after SIGTERM");
}
