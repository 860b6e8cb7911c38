//! Router front-end overhead per token at many concurrent streams (issue 4, section 9).
//!
//! One process, one 2-thread tokio runtime, a fake backend that generates tokens in process.
//! Three tiers over the same fake, each with the same streams:
//!
//! - `channel`: the backend's receivers read directly (the floor: tokio channels and tasks);
//! - `pipeline`: the front end's `Generation` (incremental detokenization, stop-string
//!   matching, metrics) without HTTP;
//! - `sse-echo`: a bare axum SSE route that turns each token into a fixed, pre-serialized
//!   chunk (no detokenization, no JSON building): HTTP, SSE, TCP and the client alone;
//! - `http`: the whole HTTP front end on loopback (`/v1/completions`, JSON chunks, SSE, hyper,
//!   TCP), read by a minimal hyper client in the same process (so the client's cost is
//!   included in both HTTP tiers).
//!
//! Two modes:
//!
//! - saturated: the fake emits `--tokens` tokens per stream as fast as it can; the results
//!   are wall time per token over all streams and the process's CPU time per token (the
//!   latter holds up when other processes share the machine);
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
use moeflow_api::{Backend, GenerateRequest, SamplingParams, TokenEvent};
use moeflow_frontend::generation::{Generation, Output, Prepared};
use moeflow_frontend::testing::{tiny_tokenizer, FakeBackend, FakeConfig};
use moeflow_frontend::{http_app, install_recorder, serve_http, FrontendState};
use moeflow_tokenizer::Tokenizer;

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
    /// User + system CPU time of the whole process during the tier.
    cpu: Duration,
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
        sampling: SamplingParams::default(),
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
    let start = (Instant::now(), cpu_time());
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
    let start = (Instant::now(), cpu_time());
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
    path: &'static str,
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
    // Connect every client first, a few at a time (a storm of 1,000 SYNs overflows the
    // listener's queue and costs one-second retransmits), so the timed part is streaming.
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_PARALLELISM));
    let mut connecting = Vec::with_capacity(streams);
    for _ in 0..streams {
        let gate = Arc::clone(&gate);
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok();
            connect(addr).await
        }));
    }
    let mut senders = Vec::with_capacity(streams);
    for c in connecting {
        match c.await {
            Ok(Ok(sender)) => senders.push(sender),
            Ok(Err(e)) => eprintln!("connect failed: {e}"),
            Err(e) => eprintln!("connect task failed: {e}"),
        }
    }
    let start = (Instant::now(), cpu_time());
    let mut tasks = Vec::with_capacity(streams);
    for sender in senders {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            match http_stream(sender, path, body).await {
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

/// Clients connecting at once.
const CONNECT_PARALLELISM: usize = 64;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One streaming completion; returns the response id and the receipt time of each token
/// chunk (the fake's script decodes one token per chunk).
async fn http_stream(
    mut sender: Sender,
    path: &str,
    body: Bytes,
) -> Result<(String, Vec<Instant>), BoxError> {
    let req = hyper::Request::post(path)
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

/// The `sse-echo` tier's server: each token becomes the same small pre-serialized chunk.
fn echo_app(backend: Arc<FakeBackend>, prompt: Vec<u32>, n: u32) -> axum::Router {
    use axum::response::sse::{Event, Sse};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let handler = move || {
        let backend = Arc::clone(&backend);
        let i = next.fetch_add(1, Ordering::Relaxed);
        let req = request(i, &prompt, n);
        async move {
            let id = req.request_id.clone();
            let chunk = format!(
                r#"{{"id":"{id}","object":"text_completion","choices":[{{"index":0,"text":" x","finish_reason":null}}]}}"#
            );
            let rx = backend.submit(req).await.ok();
            let events = async_stream::stream! {
                if let Some(mut rx) = rx {
                    while let Some(TokenEvent::Token { .. }) = rx.recv().await {
                        yield Ok::<_, std::convert::Infallible>(Event::default().data(chunk.as_str()));
                    }
                }
                yield Ok(Event::default().data("[DONE]"));
            };
            Sse::new(events)
        }
    };
    axum::Router::new().route("/echo", axum::routing::post(handler))
}

async fn serve(
    app: axum::Router,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("addr: {e}"),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_http(listener, app, async move {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, server)
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

/// User + system CPU time of this process so far, from `/proc/self/stat` (clock ticks of
/// 10 ms; tiers run long enough for that). Zero where there is no procfs.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name may contain spaces; the fields after it are space-separated.
    let Some(rest) = stat.rsplit(')').next() else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn finish(
    start: (Instant, Duration),
    backend: &FakeBackend,
    received: Vec<(String, Vec<Instant>)>,
) -> Measured {
    let cpu = cpu_time().saturating_sub(start.1);
    let wall = start.0.elapsed();
    let tokens = received.iter().map(|(_, t)| t.len()).sum();
    let emitted = backend.take_emit_times();
    Measured {
        wall,
        cpu,
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
    echo: Measured,
    http: Measured,
}

impl Tiers {
    fn all(&self) -> [(&'static str, &Measured); 4] {
        [
            ("channel", &self.channel),
            ("pipeline", &self.pipeline),
            ("sse-echo", &self.echo),
            ("http", &self.http),
        ]
    }
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
    let (addr, stop, server) = serve(echo_app(Arc::clone(&fake), prompt.clone(), n)).await;
    let echo = http_tier(addr, "/echo", Arc::clone(&fake), streams, &prompt, n).await;
    let _ = stop.send(());
    let _ = server.await;

    let fake = backend(tokenizer, script.to_vec(), delay);
    let state = FrontendState::new(fake.clone(), Arc::clone(tokenizer));
    let (addr, stop, server) = serve(http_app(state)).await;
    let http = http_tier(
        addr,
        "/v1/completions",
        Arc::clone(&fake),
        streams,
        &prompt,
        n,
    )
    .await;
    let _ = stop.send(());
    let _ = server.await;
    Tiers {
        channel,
        pipeline,
        echo,
        http,
    }
}

fn report_saturated(t: &Tiers, streams: usize, n: u32) {
    println!("\n### saturated: {streams} streams x {n} tokens, no delay\n");
    println!("| tier | tokens | wall (ms) | wall per token (us) | CPU per token (us) | tokens/s |");
    println!("|---|---|---|---|---|---|");
    for (name, m) in t.all() {
        let tokens = m.tokens.max(1) as f64;
        let per = m.wall.as_secs_f64() / tokens;
        println!(
            "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.0} |",
            m.tokens,
            m.wall.as_secs_f64() * 1e3,
            per * 1e6,
            m.cpu.as_secs_f64() / tokens * 1e6,
            1.0 / per,
        );
    }
}

fn report_paced(t: &Tiers, streams: usize, n: u32, ms: u64) {
    println!("\n### paced: {streams} streams x {n} tokens, one token per stream every {ms} ms\n");
    println!("| tier | tokens | latency p50 (us) | p99 (us) | max (us) | CPU per token (us) |");
    println!("|---|---|---|---|---|---|");
    for (name, m) in t.all() {
        let p50 = percentile(&m.latencies, 0.5);
        let p99 = percentile(&m.latencies, 0.99);
        let max = m.latencies.last().copied().unwrap_or_default();
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            m.latencies.len(),
            us(p50),
            us(p99),
            us(max),
            m.cpu.as_secs_f64() / m.tokens.max(1) as f64 * 1e6,
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
            for (tier, m) in t.all() {
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
