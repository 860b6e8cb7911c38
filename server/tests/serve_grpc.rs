//! The gRPC generation API of a real `moeflow serve` (prefill and decode worker processes):
//! concurrent streams complete with usage, greedy outputs agree with the HTTP API's, and a
//! killed decode worker ends an in-flight stream with an error status, not a hang.

mod common;

use common::free_port;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use moeflow_proto::v1 as pb;
use moeflow_proto::v1::generation_client::GenerationClient;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");

/// The server process; the temp dir holds its model and lives as long as it.
struct Serve(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = self.0.id();
        let _ = self.0.kill();
        let _ = self.0.wait();
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for k in kids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", k]).status();
        }
    }
}

fn request(ids: Vec<u32>, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        request_id: String::new(),
        prompt: Some(pb::generate_request::Prompt::TokenIds(pb::TokenIds { ids })),
        sampling: Some(pb::SamplingParams {
            temperature: Some(0.0),
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        }),
        workload: String::new(),
    }
}

/// Tokens of a stream and how it ended (`Ok(reason)` or `Err(status)`).
async fn run(
    client: &mut GenerationClient<tonic::transport::Channel>,
    req: pb::GenerateRequest,
) -> (Vec<u32>, Result<String, tonic::Status>) {
    let mut stream = match client.generate(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return (Vec::new(), Err(s)),
    };
    let mut tokens = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("stream must not hang")
        {
            Ok(Some(m)) => match m.event {
                Some(pb::generate_response::Event::Token(t)) => tokens.push(t.id),
                Some(pb::generate_response::Event::Finished(f)) => {
                    let usage = f.usage.unwrap_or_default();
                    assert_eq!(usage.completion_tokens as usize, tokens.len());
                    return (tokens, Ok(f.reason));
                }
                None => {}
            },
            Ok(None) => {
                return (
                    tokens,
                    Err(tonic::Status::unknown("stream ended without Finished")),
                )
            }
            Err(s) => return (tokens, Err(s)),
        }
    }
}

#[test]
fn grpc_streams_over_real_workers_and_fail_cleanly_when_one_dies() {
    let home = tempfile::tempdir().expect("tempdir");
    let (port, grpc) = (free_port(), free_port());
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
        .args(["--prefill-workers", "1", "--decode-workers", "2"])
        .env("MOEFLOW_HOME", home.path())
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let serve = Serve(child, home);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = None;
        for _ in 0..600 {
            if let Ok(mut c) = GenerationClient::connect(format!("http://127.0.0.1:{grpc}")).await {
                if c.health(pb::HealthRequest {})
                    .await
                    .map(|h| h.into_inner().healthy)
                    .unwrap_or(false)
                {
                    client = Some(c);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = client.expect("serve never became healthy over gRPC");
        // Concurrent streams, each greedy: the same prompt twice gives the same tokens.
        let prompts: Vec<Vec<u32>> = vec![
            vec![10, 20, 30],
            vec![40, 50],
            vec![10, 20, 30],
            vec![7, 8, 9, 10, 11],
        ];
        let mut tasks = Vec::new();
        for p in prompts.clone() {
            let mut c = client.clone();
            tasks.push(tokio::spawn(
                async move { run(&mut c, request(p, 6)).await },
            ));
        }
        let mut outs = Vec::new();
        for t in tasks {
            let (tokens, end) = t.await.expect("task");
            assert_eq!(end.expect("stream finished"), "length");
            assert_eq!(tokens.len(), 6);
            outs.push(tokens);
        }
        assert_eq!(
            outs[0], outs[2],
            "greedy decoding must not depend on batching"
        );
        // A long stream, then a decode worker dies: the stream ends with an error status.
        let mut c = client.clone();
        let long = tokio::spawn(async move { run(&mut c, request(vec![1, 2, 3], 1500)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = serve.0.id();
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let decode = kids
            .split_whitespace()
            .find(|k| {
                std::fs::read(format!("/proc/{k}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).contains("decode-"))
                    .unwrap_or(false)
            })
            .expect("a decode worker")
            .to_string();
        let _ = Command::new("kill").args(["-9", &decode]).status();
        let (_, end) = long.await.expect("task");
        assert!(
            end.is_err(),
            "a dead decode worker must end the stream with an error: {end:?}"
        );
    });
    drop(serve);
}
