//! Expert-trace recording in a real `moeflow serve` (a prefill worker process and two decode
//! worker processes, chunked prefill): the paper JSON tree and the binary file are written for
//! every request, with the workload label from a gRPC field or the HTTP header, the recorded
//! experts equal those a single-process run selects for the same greedy request, and
//! `--trace-sample 0` records nothing.

mod common;

use common::{curl, free_port, reference_passes};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use moeflow_proto::v1 as pb;
use moeflow_proto::v1::generation_client::GenerationClient;
use moeflow_trace::io::binary::BinaryReader;
use moeflow_trace::{Phase, RequestTrace};
use moeflow_worker::config::ModelConfig;
use moeflow_worker::kv_cache::SeqId;
use moeflow_worker::moe::{Routing, RoutingObserver};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_moeflow");
const MODEL: &str = "tiny-qwen3_moe";

struct Serve {
    child: Child,
    port: u16,
    grpc: u16,
    home: tempfile::TempDir,
}

impl Serve {
    fn model_dir(&self) -> PathBuf {
        self.home.path().join("models").join(MODEL)
    }

    fn trace_dir(&self) -> PathBuf {
        self.home.path().join("traces")
    }

    /// SIGTERM, then wait for the drain (which completes the trace files) and the exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "serve exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("serve did not exit after SIGTERM");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Serve {
    let home = tempfile::tempdir().expect("tempdir");
    let (port, grpc) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string()])
        .args(["--grpc-port", &grpc.to_string()])
        .args(["--prefill-workers", "1", "--decode-workers", "2"])
        .arg("--trace-dir")
        .arg(home.path().join("traces"))
        .args(extra)
        .env("MOEFLOW_HOME", home.path())
        .env("MOEFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start moeflow serve");
    let serve = Serve {
        child,
        port,
        grpc,
        home,
    };
    for _ in 0..600 {
        if curl(&[&format!("http://127.0.0.1:{port}/health")]).contains("healthy") {
            return serve;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moeflow serve did not become healthy");
}

/// A non-streaming completion labelled through the `x-moeflow-workload` header.
fn http_completion(port: u16, workload: &str, max_tokens: u32) -> Value {
    let body = format!(
        r#"{{"prompt":"Once upon a time","max_tokens":{max_tokens},"ignore_eos":true,"temperature":0}}"#
    );
    let out = curl(&[
        "-H",
        "content-type: application/json",
        "-H",
        &format!("x-moeflow-workload: {workload}"),
        "-d",
        &body,
        &format!("http://127.0.0.1:{port}/v1/completions"),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("completion response {out:?}: {e}"))
}

/// Greedy generation over gRPC with a chosen request id; returns the generated token ids.
async fn grpc_generate(
    grpc: u16,
    id: &str,
    prompt: Vec<u32>,
    max: u32,
    workload: &str,
) -> Vec<u32> {
    let mut client = GenerationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("gRPC connect");
    let req = pb::GenerateRequest {
        request_id: id.into(),
        prompt: Some(pb::generate_request::Prompt::TokenIds(pb::TokenIds {
            ids: prompt,
        })),
        sampling: Some(pb::SamplingParams {
            temperature: Some(0.0),
            max_tokens: max,
            ignore_eos: true,
            ..Default::default()
        }),
        workload: workload.into(),
    };
    let mut stream = client.generate(req).await.expect("generate").into_inner();
    let mut tokens = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("stream must not hang")
            .expect("stream error");
        match m.and_then(|m| m.event) {
            Some(pb::generate_response::Event::Token(t)) => tokens.push(t.id),
            Some(pb::generate_response::Event::Finished(f)) => {
                assert_eq!(f.reason, "length");
                return tokens;
            }
            None => panic!("stream ended without Finished"),
        }
    }
}

/// Every routing decision of a single-sequence forward pass, in layer order.
#[derive(Default)]
struct Recorded(Vec<(usize, Vec<u32>, Vec<f32>)>);

impl RoutingObserver for Recorded {
    fn observe(
        &mut self,
        layer: usize,
        spans: &[(SeqId, std::ops::Range<usize>, bool)],
        r: &Routing,
    ) {
        assert_eq!(spans.len(), 1);
        self.0.push((layer, r.ids.clone(), r.weights.clone()));
    }
}

/// Greedy generation of `tokens` tokens in one process: the tokens and, per forward pass
/// (prefill, then each decode step that fed a generated token), the routing per MoE layer.
/// The last token is never fed back: one pass per token.
fn reference(dir: &Path, prompt: &[u32], tokens: usize) -> (Vec<u32>, Vec<Recorded>) {
    reference_passes::<Recorded>(dir, prompt, tokens)
        .into_iter()
        .map(|(logits, rec)| (moeflow_worker::sampling::argmax(&logits) as u32, rec))
        .unzip()
}

fn paper_file(trace_dir: &Path, workload: &str, id: &str) -> PathBuf {
    trace_dir
        .join("paper/moeflow")
        .join(MODEL)
        .join(workload)
        .join(format!("{id}.json"))
}

/// Checks a paper-layout file's structure; returns its iterations as `[iteration][moe layer
/// index][token] -> experts`.
fn check_paper(
    path: &Path,
    iterations: usize,
    prompt_len: usize,
    cfg: &ShapeInfo,
) -> Vec<Vec<Vec<Vec<u64>>>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Vec<serde_json::Map<String, Value>> =
        serde_json::from_str(&text).expect("paper layout: a list of objects");
    assert_eq!(doc.len(), iterations, "{}", path.display());
    let mut out = Vec::new();
    for (i, it) in doc.iter().enumerate() {
        assert_eq!(it.len(), cfg.num_layers, "every layer is keyed");
        let mut layers = Vec::new();
        for l in 0..cfg.num_layers {
            let v = &it[&l.to_string()];
            if !cfg.moe_layers.contains(&l) {
                assert!(v.is_null(), "dense layer {l} is null");
                continue;
            }
            let toks: Vec<Vec<u64>> = serde_json::from_value(v.clone()).expect("token lists");
            let want = if i == 0 { prompt_len } else { 1 };
            assert_eq!(toks.len(), want, "iteration {i} layer {l}");
            for t in &toks {
                assert_eq!(t.len(), cfg.top_k);
                assert!(t.iter().all(|&e| (e as usize) < cfg.num_experts));
            }
            layers.push(toks);
        }
        out.push(layers);
    }
    out
}

struct ShapeInfo {
    num_layers: usize,
    num_experts: usize,
    top_k: usize,
    moe_layers: Vec<usize>,
}

fn shape(dir: &Path) -> ShapeInfo {
    let s = ModelConfig::from_dir(dir).expect("config").shape();
    ShapeInfo {
        num_layers: s.num_layers,
        num_experts: s.num_experts,
        top_k: s.experts_per_token,
        moe_layers: s.moe_layers,
    }
}

fn read_binary(path: &Path) -> Vec<RequestTrace> {
    let mut reader = BinaryReader::open(path).expect("open the binary trace");
    let all: Vec<RequestTrace> = reader
        .by_ref()
        .collect::<Result<_, _>>()
        .expect("read the binary trace");
    assert!(reader.complete(), "the drain completes the binary file");
    assert_eq!(reader.shape().model.as_deref(), Some(MODEL));
    all
}

#[test]
fn serve_records_paper_json_and_binary_traces_equal_to_single_process_routing() {
    // A prefill budget of 4 tokens splits the 7-token prompt over two steps.
    let mut serve = start(&["--prefill-token-budget", "4"]);
    let prompt_a: Vec<u32> = vec![10, 20, 30, 40, 50, 60, 70];
    let prompt_b: Vec<u32> = vec![5, 6, 7, 8, 9];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tokens_a, tokens_b) = rt.block_on(async {
        let a = grpc_generate(serve.grpc, "greedy-a", prompt_a.clone(), 6, "math/algebra");
        let b = grpc_generate(serve.grpc, "greedy-b", prompt_b.clone(), 4, "");
        tokio::join!(a, b)
    });
    let http = http_completion(serve.port, "chat", 5);
    let http_id = http["id"].as_str().expect("id").to_string();
    let http_prompt = http["usage"]["prompt_tokens"].as_u64().expect("usage") as usize;
    assert_eq!(http["usage"]["completion_tokens"], 5);
    serve.stop();

    let dir = serve.model_dir();
    let traces = serve.trace_dir();
    let cfg = shape(&dir);

    // Paper layout: one file per request, 1 prefill + (tokens - 1) decode iterations.
    let a = check_paper(
        &paper_file(&traces, "math/algebra", "greedy-a"),
        6,
        prompt_a.len(),
        &cfg,
    );
    check_paper(
        &paper_file(&traces, "default/default", "greedy-b"),
        4,
        prompt_b.len(),
        &cfg,
    );
    check_paper(
        &paper_file(&traces, "chat/default", &http_id),
        5,
        http_prompt,
        &cfg,
    );

    // The same experts as one process computes for the same greedy request.
    let (ref_tokens, ref_passes) = reference(&dir, &prompt_a, 6);
    assert_eq!(tokens_a, ref_tokens, "greedy tokens match one process");
    assert_eq!(ref_passes.len(), a.len());
    for (i, (pass, it)) in ref_passes.iter().zip(&a).enumerate() {
        assert_eq!(pass.0.len(), cfg.moe_layers.len());
        for (li, (layer, ids, _)) in pass.0.iter().enumerate() {
            assert_eq!(*layer, cfg.moe_layers[li]);
            let got: Vec<u64> = it[li].iter().flatten().copied().collect();
            let want: Vec<u64> = ids.iter().map(|&e| u64::from(e)).collect();
            assert_eq!(got, want, "iteration {i} layer {layer}");
        }
    }

    // Binary: the same requests, metadata and gate weights.
    let all = read_binary(&traces.join("trace.mfbin"));
    assert_eq!(all.len(), 3);
    let bin_a = all.iter().find(|r| r.id == "greedy-a").expect("greedy-a");
    assert_eq!(bin_a.workload.as_deref(), Some("math/algebra"));
    assert_eq!(bin_a.prompt_len, prompt_a.len());
    let (s, f) = (
        bin_a.started_ms.expect("start"),
        bin_a.finished_ms.expect("end"),
    );
    assert!(s <= f);
    assert_eq!(bin_a.iterations.len(), 6);
    for (i, (pass, it)) in ref_passes.iter().zip(&bin_a.iterations).enumerate() {
        assert_eq!(
            it.phase,
            if i == 0 {
                Phase::Prefill
            } else {
                Phase::Decode
            }
        );
        for (layer, ids, weights) in &pass.0 {
            let l = it.layer(*layer).expect("every MoE layer recorded");
            let got: Vec<u32> = l.experts.iter().map(|&e| u32::from(e)).collect();
            assert_eq!(&got, ids, "binary: iteration {i} layer {layer}");
            let w = l.weights.as_ref().expect("gate weights recorded");
            for (g, r) in w.iter().zip(weights) {
                assert!(
                    (g - r).abs() < 2e-3,
                    "iteration {i} layer {layer}: weight {g} vs {r}"
                );
            }
        }
    }
    let bin_b = all.iter().find(|r| r.id == "greedy-b").expect("greedy-b");
    assert_eq!(bin_b.workload, None);
    assert_eq!(bin_b.iterations.len(), tokens_b.len());
    let bin_http = all.iter().find(|r| r.id == http_id).expect("http request");
    assert_eq!(bin_http.workload.as_deref(), Some("chat"));
    assert_eq!(bin_http.prompt_len, http_prompt);
}

#[test]
fn trace_sample_zero_records_nothing() {
    let mut serve = start(&["--trace-sample", "0"]);
    let http = http_completion(serve.port, "chat", 3);
    assert_eq!(http["usage"]["completion_tokens"], 3);
    serve.stop();
    let traces = serve.trace_dir();
    let entries = std::fs::read_dir(&traces).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "{} must stay empty", traces.display());
}
