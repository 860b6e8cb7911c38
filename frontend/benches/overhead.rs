//! Router front-end overhead per token at many concurrent streams (issue 4, section 9).
//!
//! One process, one 2-thread tokio runtime, a fake backend that generates tokens in process.
//! Three tiers over the same fake, each with the same streams:
//!
//! - `channel`: the backend's receivers read directly (the floor: tokio channels and tasks);
//! - `pipeline`: the front end's `Generation` (incremental detokenization, stop-string
//!   matching, metrics) without HTTP;
//! - `http`: the whole HTTP front end on loopback (JSON chunks, SSE, hyper, TCP), read by a
//!   minimal hyper client in the same process (so the client's cost is included).
//!
//! Two modes:
//!
//! - saturated: the fake emits `--tokens` tokens per stream as fast as it can; the result is
//!   wall time per token over all streams (machine time per token on this many cores);
//! - paced: the fake emits one token per stream every `--paced-ms`, a load the front end can
//!   keep up with; the result is each token's latency from the fake's send to the consumer's
//!   receipt (p50/p99): what the front end adds to inter-token latency at that concurrency.
//!
//! `cargo bench -p moeflow-frontend --bench overhead -- [--streams 1000] [--tokens 64]
//! [--paced-tokens 40] [--paced-ms 50]`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use moeflow_frontend::generation::{Generation, Output, Prepared};
use moeflow_frontend::testing::{tiny_tokenizer, FakeBackend, FakeConfig};
use moeflow_frontend::{http_app, install_recorder, serve_http, FrontendState};
use moeflow_router::api::{Backend, GenerateRequest, Sampling, TokenEvent};
use moeflow_worker::tokenizer::Tokenizer;

struct Args {
    streams: usize,
    tokens: u32,
    paced_tokens: u32,
    paced_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        streams: 1000,
        tokens: 64,
        paced_tokens: 40,
        paced_ms: 50,
    };
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        let v = w[1].parse::<u64>().ok();
        match (w[0].as_str(), v) {
            ("--streams", Some(v)) => a.streams = v as usize,
            ("--tokens", Some(v)) => a.tokens = v as u32,
            ("--paced-tokens", Some(v)) => a.paced_tokens = v as u32,
            ("--paced-ms", Some(v)) => a.paced_ms = v,
            _ => {}
        }
    }
    a
}

/// What one tier measured.
struct Measured {
    wall: Duration,
    tokens: usize,
    /// Send-to-receipt latency of every token.
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Matches receipt times to the fake's send times, token by token.
fn latencies(
    emitted: &HashMap<String, Vec<Instant>>,
    received: &[(String, Vec<Instant>)],
) -> Vec<Duration> {
    let mut out = Vec::new();
    for (id, times) in received {
        if let Some(sent) = emitted.get(id) {
            for (s, r) in sent.iter().zip(times) {
                out.push(r.saturating_duration_since(*s));
            }
        }
    }
    out.sort();
    out
}

fn request(i: usize, prompt: &[u32], max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: format!("bench-{i}"),
        prompt: prompt.to_vec(),
        sampling: Sampling::default(),
        max_tokens,
        stop_token_ids: Vec::new(),
        workload: None,
    }
}

async fn channel_tier(
    backend: Arc<FakeBackend>,
    streams: usize,
    prompt: &[u32],
    n: u32,
) -> Measured {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let backend = Arc::clone(&backend);
        let req = request(i, prompt, n);
        tasks.push(tokio::spawn(async move {
            let id = req.request_id.clone();
            let mut times = Vec::with_capacity(n as usize);
            let Ok(mut rx) = backend.submit(req).await else {
                return (id, times);
            };
            while let Some(ev) = rx.recv().await {
                match ev {
                    TokenEvent::Token { .. } => times.push(Instant::now()),
                    _ => break,
                }
            }
            (id, times)
        }));
    }
    let received = join(tasks).await;
    finish(start, &backend, received)
}

async fn pipeline_tier(
    state: FrontendState,
    backend: Arc<FakeBackend>,
    streams: usize,
    prompt: &[u32],
    n: u32,
) -> Measured {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let state = state.clone();
        let req = request(i, prompt, n);
        tasks.push(tokio::spawn(async move {
            let id = req.request_id.clone();
            let mut times = Vec::with_capacity(n as usize);
            let prepared = Prepared {
                request: req,
                stop_strings: vec!["\n\n".into()],
                skip_special_tokens: true,
                arrived: Instant::now(),
            };
            let Ok(mut generation) = Generation::submit(&state, prepared).await else {
                return (id, times);
            };
            while let Some(out) = generation.next().await {
                let now = Instant::now();
                match out {
                    Output::Delta(d) => times.extend(d.tokens.iter().map(|_| now)),
                    Output::Finished { delta, .. } => {
                        times.extend(delta.tokens.iter().map(|_| now));
                        break;
                    }
                    Output::Error(_) => break,
                }
            }
            (id, times)
        }));
    }
    let received = join(tasks).await;
    finish(start, &backend, received)
}

async fn http_tier(
    addr: SocketAddr,
    backend: Arc<FakeBackend>,
    streams: usize,
    prompt: &[u32],
    n: u32,
) -> Measured {
    let body = Bytes::from(
        serde_json::json!({
            "prompt": prompt, "max_tokens": n, "stream": true, "stop": ["\n\n"],
        })
        .to_string(),
    );
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            match http_stream(addr, body).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("stream failed: {e}");
                    (String::new(), Vec::new())
                }
            }
        }));
    }
    let received = join(tasks).await;
    finish(start, &backend, received)
}

/// One streaming completion; returns the response id and the receipt time of each token
/// chunk (the fake's script decodes one token per chunk).
async fn http_stream(
    addr: SocketAddr,
    body: Bytes,
) -> Result<(String, Vec<Instant>), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/completions")
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()).into());
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut id = String::new();
    let mut times = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        buf.extend_from_slice(data);
        while let Some(end) = find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            if id.is_empty() {
                id = extract_id(&event).unwrap_or_default();
            }
            if find(&event, b"\"finish_reason\":null").is_some() {
                times.push(now);
            }
        }
    }
    Ok((id, times))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn extract_id(event: &[u8]) -> Option<String> {
    let key = b"\"id\":\"";
    let start = find(event, key)? + key.len();
    let len = find(&event[start..], b"\"")?;
    String::from_utf8(event[start..start + len].to_vec()).ok()
}

async fn join(
    tasks: Vec<tokio::task::JoinHandle<(String, Vec<Instant>)>>,
) -> Vec<(String, Vec<Instant>)> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

fn finish(
    start: Instant,
    backend: &FakeBackend,
    received: Vec<(String, Vec<Instant>)>,
) -> Measured {
    let wall = start.elapsed();
    let tokens = received.iter().map(|(_, t)| t.len()).sum();
    let emitted = backend.take_emit_times();
    Measured {
        wall,
        tokens,
        latencies: latencies(&emitted, &received),
    }
}

fn backend(tokenizer: &Tokenizer, script: Vec<u32>, delay: Duration) -> Arc<FakeBackend> {
    let mut c = FakeConfig::new(tokenizer.vocab_size() as u32);
    c.model.max_context = 4096;
    c.script = script;
    c.delay = delay;
    c.record_emit_times = true;
    FakeBackend::new(c)
}

struct Tiers {
    channel: Measured,
    pipeline: Measured,
    http: Measured,
}

async fn run_mode(
    tokenizer: &Arc<Tokenizer>,
    script: &[u32],
    streams: usize,
    n: u32,
    delay: Duration,
) -> Tiers {
    let prompt = script[..8.min(script.len())].to_vec();
    let fake = backend(tokenizer, script.to_vec(), delay);
    let channel = channel_tier(Arc::clone(&fake), streams, &prompt, n).await;

    let fake = backend(tokenizer, script.to_vec(), delay);
    let state = FrontendState::new(fake.clone(), Arc::clone(tokenizer));
    let pipeline = pipeline_tier(state, Arc::clone(&fake), streams, &prompt, n).await;

    let fake = backend(tokenizer, script.to_vec(), delay);
    let state = FrontendState::new(fake.clone(), Arc::clone(tokenizer));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("addr: {e}"),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_http(listener, http_app(state), async move {
        let _ = stop_rx.await;
    }));
    let http = http_tier(addr, Arc::clone(&fake), streams, &prompt, n).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Tiers {
        channel,
        pipeline,
        http,
    }
}

fn report_saturated(t: &Tiers, streams: usize, n: u32) {
    println!("\n### saturated: {streams} streams x {n} tokens, no delay\n");
    println!("| tier | tokens | wall (ms) | wall per token (us) | tokens/s | vs channel |");
    println!("|---|---|---|---|---|---|");
    let base = t.channel.wall.as_secs_f64() / t.channel.tokens.max(1) as f64;
    for (name, m) in [
        ("channel", &t.channel),
        ("pipeline", &t.pipeline),
        ("http", &t.http),
    ] {
        let per = m.wall.as_secs_f64() / m.tokens.max(1) as f64;
        println!(
            "| {name} | {} | {:.0} | {:.2} | {:.0} | {:.1}x |",
            m.tokens,
            m.wall.as_secs_f64() * 1e3,
            per * 1e6,
            1.0 / per,
            per / base
        );
    }
}

fn report_paced(t: &Tiers, streams: usize, n: u32, ms: u64) {
    println!("\n### paced: {streams} streams x {n} tokens, one token per stream every {ms} ms\n");
    println!("| tier | tokens | latency p50 (us) | p99 (us) | max (us) | p50 added over channel (us) | p99 added (us) |");
    println!("|---|---|---|---|---|---|---|");
    let c50 = percentile(&t.channel.latencies, 0.5);
    let c99 = percentile(&t.channel.latencies, 0.99);
    for (name, m) in [
        ("channel", &t.channel),
        ("pipeline", &t.pipeline),
        ("http", &t.http),
    ] {
        let p50 = percentile(&m.latencies, 0.5);
        let p99 = percentile(&m.latencies, 0.99);
        let max = m.latencies.last().copied().unwrap_or_default();
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            m.latencies.len(),
            us(p50),
            us(p99),
            us(max),
            us(p50.saturating_sub(c50)),
            us(p99.saturating_sub(c99)),
        );
    }
}

fn main() {
    let a = args();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("overhead-bench-tiny");
    let tokenizer = match tiny_tokenizer(&dir) {
        Ok(t) => t,
        Err(e) => panic!("tiny checkpoint: {e}"),
    };
    // One ASCII word per token or so: every token decodes to text at once, one chunk each.
    let text = "the quick brown fox jumps over the lazy dog and then it runs far away ";
    let script = match tokenizer.encode_raw(&text.repeat(4)) {
        Ok(ids) => ids,
        Err(e) => panic!("encode: {e}"),
    };
    install_recorder();
    rt.block_on(async {
        // Warm up connections, allocators and the tokenizer's caches.
        let _ = run_mode(&tokenizer, &script, 100, 8, Duration::ZERO).await;
        let sat = run_mode(&tokenizer, &script, a.streams, a.tokens, Duration::ZERO).await;
        report_saturated(&sat, a.streams, a.tokens);
        let paced = run_mode(
            &tokenizer,
            &script,
            a.streams,
            a.paced_tokens,
            Duration::from_millis(a.paced_ms),
        )
        .await;
        report_paced(&paced, a.streams, a.paced_tokens, a.paced_ms);
        for (name, t) in [("saturated", &sat), ("paced", &paced)] {
            let expected = a.streams
                * if name == "saturated" {
                    a.tokens
                } else {
                    a.paced_tokens
                } as usize;
            for (tier, m) in [
                ("channel", &t.channel),
                ("pipeline", &t.pipeline),
                ("http", &t.http),
            ] {
                if m.tokens != expected {
                    println!(
                        "warning: {name}/{tier} received {} of {expected} tokens",
                        m.tokens
                    );
                }
            }
        }
    });
}
