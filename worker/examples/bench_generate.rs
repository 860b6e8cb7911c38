//! End-to-end generation speed on a checkpoint (BENCHMARKS.md, "end-to-end generation").
//!
//! ```text
//! cargo run --release -p moeflow-worker --example bench_generate -- \
//!     --model /tmp/bench-qwen3 --batch 1,16 --prompt-len 128 --new-tokens 64
//! ```
//!
//! For each batch size: greedy generation of exactly `--new-tokens` tokens per sequence (no
//! stop tokens) after random `--prompt-len`-token prompts, with the same metric as
//! `tools/bench_reference.py`: `tokens/s = batch * new_tokens / wall time` (prefill included).
//!
//! The same run measures two machine baselines so that the numbers can be read as fractions
//! of what the hardware does: the memory bandwidth of a parallel sum over a 1 GiB buffer, and
//! the f32 matmul throughput of candle on `[1024 x 1024] x [1024 x 1024]`. Batch 1 decode is
//! reported as a fraction of the bandwidth (the active weights stream from memory once per
//! step); every run is also reported as a fraction of matmul throughput.
//!
//! `--device cuda:N --dtype bf16` runs the same measurement on a GPU (a build with the
//! `cuda` feature); the baselines are then the device's: the bandwidth of a 1 GiB on-device
//! copy (bytes read plus bytes written) and the matmul throughput in the run's dtype.
//!
//! Prints one JSON object on stdout (human-readable lines go to stderr).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use moeflow_api::SamplingParams;
use moeflow_worker::config::ModelConfig;
use moeflow_worker::generate::{generate, GenerationRequest};
use moeflow_worker::model::{LoadOptions, Transformer};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

struct Args {
    model: PathBuf,
    batches: Vec<usize>,
    prompt_len: usize,
    new_tokens: usize,
    repeats: usize,
    warmup: usize,
    skip_baselines: bool,
    device: String,
    dtype: DType,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from("/tmp/bench-qwen3"),
        batches: vec![1, 16],
        prompt_len: 128,
        new_tokens: 64,
        repeats: 1,
        warmup: 1,
        skip_baselines: false,
        device: "cpu".into(),
        dtype: DType::F32,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> Result<usize, String> {
        v.ok_or(format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--model" => a.model = it.next().ok_or("--model needs a value")?.into(),
            "--batch" => {
                a.batches = it
                    .next()
                    .ok_or("--batch needs a value")?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--batch: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--prompt-len" => a.prompt_len = num(it.next(), "--prompt-len")?,
            "--new-tokens" => a.new_tokens = num(it.next(), "--new-tokens")?,
            "--repeats" => a.repeats = num(it.next(), "--repeats")?.max(1),
            "--warmup" => a.warmup = num(it.next(), "--warmup")?,
            "--skip-baselines" => a.skip_baselines = true,
            "--device" => a.device = it.next().ok_or("--device needs a value")?,
            "--dtype" => {
                a.dtype = match it.next().as_deref() {
                    Some("f32") => DType::F32,
                    Some("bf16") => DType::BF16,
                    Some("f16") => DType::F16,
                    other => {
                        return Err(format!("--dtype: expected f32, bf16 or f16, got {other:?}"))
                    }
                }
            }
            // `cargo bench` passes this to every target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Best-of-5 read bandwidth (GB/s) of a parallel f32 sum over a 1 GiB buffer: the rate at
/// which this machine can stream weights that do not fit in cache.
fn memory_bandwidth_gbs() -> f64 {
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0f32; 16];
                for ch in c.chunks_exact(16) {
                    for (a, x) in acc.iter_mut().zip(ch) {
                        *a += x;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best / 1e9
}

/// Best-of-10 GFLOP/s of candle's matmul `[n x n] x [n x n]` in `dtype` on `device` (n =
/// 1024 on a CPU, 4096 on a GPU, where 1024 would measure launch overhead).
fn matmul_gflops(device: &Device, dtype: DType) -> Result<f64, candle_core::Error> {
    let n = if device.is_cpu() { 1024 } else { 4096 };
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        device.synchronize()?;
        let t = Instant::now();
        std::hint::black_box(a.matmul(&b)?);
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Best-of-10 bandwidth (GB/s, bytes read plus bytes written) of a 1 GiB copy on a GPU.
fn device_copy_gbs(device: &Device) -> Result<f64, candle_core::Error> {
    let n = (1usize << 30) / 4;
    let t = Tensor::zeros(n, DType::F32, device)?;
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        device.synchronize()?;
        let start = Instant::now();
        std::hint::black_box(t.copy()?);
        device.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * 4) as f64 / best / 1e9)
}

fn parse_device(s: &str) -> Result<Device, Box<dyn std::error::Error>> {
    match s {
        "cpu" => Ok(Device::Cpu),
        d => {
            let ordinal = d
                .strip_prefix("cuda:")
                .ok_or_else(|| format!("--device: expected cpu or cuda:N, got {d}"))?
                .parse()
                .map_err(|e| format!("--device {d}: {e}"))?;
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

/// Parameter counts of a Qwen3-MoE checkpoint that decide its cost per token.
struct Costs {
    /// Weights read by one decode step of one sequence: everything but the embedding table
    /// and the unselected experts (bytes, f32).
    active_bytes: f64,
    /// Of those, the bytes of one routed expert, and the number of MoE layers, experts and
    /// experts per token (to estimate what a batch of decode steps touches).
    expert_bytes: f64,
    moe_layers: usize,
    experts: usize,
    top_k: usize,
    /// Multiply-adds per token through the weights (attention projections, gates, selected
    /// experts, LM head); attention over the context is added per position.
    weight_macs: f64,
    /// Multiply-adds per (query, key) pair over all layers: q.k and p.v.
    attn_macs_per_pair: f64,
    /// LM head multiply-adds (only the last token of each sequence gets logits).
    head_macs: f64,
}

fn costs(cfg: &ModelConfig, weight_bytes: usize) -> Result<Costs, String> {
    let ModelConfig::Qwen3Moe(c) = cfg else {
        return Err("bench_generate computes costs for qwen3_moe checkpoints only".into());
    };
    let (h, hd) = (c.hidden_size, c.head_dim);
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let attn = h * hd * (2 * nh + 2 * nkv);
    let mut layer_macs = 0usize;
    for l in 0..c.num_hidden_layers {
        layer_macs += attn;
        layer_macs += if c.is_moe_layer(l) {
            c.num_experts * h + c.num_experts_per_tok * 3 * h * c.moe_intermediate_size
        } else {
            3 * h * c.intermediate_size
        };
    }
    let head = c.vocab_size * h;
    Ok(Costs {
        active_bytes: ((layer_macs + head) * weight_bytes) as f64,
        expert_bytes: (3 * h * c.moe_intermediate_size * weight_bytes) as f64,
        moe_layers: (0..c.num_hidden_layers)
            .filter(|&l| c.is_moe_layer(l))
            .count(),
        experts: c.num_experts,
        top_k: c.num_experts_per_tok,
        weight_macs: layer_macs as f64,
        attn_macs_per_pair: (c.num_hidden_layers * nh * hd * 2) as f64,
        head_macs: head as f64,
    })
}

impl Costs {
    /// Weight bytes one decode step of `batch` sequences reads, if each token picks its
    /// experts uniformly at random: a layer then touches `E (1 - (1 - k/E)^batch)` distinct
    /// experts (28.2 of 32 at batch 16 for the bench preset). At batch 1 this is
    /// `active_bytes`.
    fn step_bytes(&self, batch: usize) -> f64 {
        let (e, k) = (self.experts as f64, self.top_k as f64);
        let distinct = e * (1.0 - (1.0 - k / e).powi(batch as i32));
        self.active_bytes + (distinct - k) * self.expert_bytes * self.moe_layers as f64
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_generate: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let device = parse_device(&args.device)?;
    let t = Instant::now();
    let model = Transformer::load(
        &args.model,
        LoadOptions {
            dtype: args.dtype,
            device: &device,
            experts: None,
        },
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let costs = costs(model.config(), args.dtype.size_in_bytes())?;
    let vocab = model.shape().vocab_size as u32;
    eprintln!("loaded {} in {load_s:.2}s", args.model.display());

    let request = |rng: &mut rand_chacha::ChaCha8Rng, len: usize, new: usize| GenerationRequest {
        prompt: (0..len).map(|_| rng.random_range(1..vocab)).collect(),
        max_tokens: new,
        sampling: SamplingParams::greedy(),
        stop_tokens: Vec::new(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for _ in 0..args.warmup {
        generate(&model, &[request(&mut rng, 16, 4)], None)?;
    }

    let (bw, mm) = if args.skip_baselines {
        (f64::NAN, f64::NAN)
    } else if device.is_cpu() {
        (memory_bandwidth_gbs(), matmul_gflops(&device, args.dtype)?)
    } else {
        (
            device_copy_gbs(&device)?,
            matmul_gflops(&device, args.dtype)?,
        )
    };
    eprintln!("baselines: memory {bw:.1} GB/s, matmul {mm:.1} GFLOP/s");

    let (p, n) = (args.prompt_len, args.new_tokens);
    let mut results = Vec::new();
    for &b in &args.batches {
        let reqs: Vec<GenerationRequest> = (0..b).map(|_| request(&mut rng, p, n)).collect();
        let mut runs = Vec::new();
        for _ in 0..args.repeats {
            let t = Instant::now();
            let (_, timing) = generate(&model, &reqs, None)?;
            runs.push((t.elapsed().as_secs_f64(), timing));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (wall, timing) = runs[runs.len() / 2];
        let tps = (b * n) as f64 / wall;
        // Work of the whole call: the prompt through the weights (logits for its last token
        // only), then n - 1 decode steps; attention pairs = causal prefix lengths.
        let bf = b as f64;
        let prompt_pairs = (p * (p + 1) / 2) as f64;
        let decode_pairs: f64 = (1..n).map(|i| (p + i) as f64).sum();
        let macs = bf
            * ((p + n - 1) as f64 * costs.weight_macs
                + n as f64 * costs.head_macs
                + (prompt_pairs + decode_pairs) * costs.attn_macs_per_pair);
        let gflops = 2.0 * macs / wall / 1e9;
        let decode_s = timing.decode.as_secs_f64();
        let steps = timing.decode_steps.max(1) as f64;
        // Bandwidth view of decode: each step streams the weights its tokens select (all the
        // active weights of one token at batch 1; see `Costs::step_bytes`). KV-cache reads
        // are not counted.
        let decode_weight_gbs = costs.step_bytes(b) * steps / decode_s / 1e9;
        eprintln!(
            "batch {b:3}: {} tokens in {wall:.2}s -> {tps:.1} tok/s (prefill {:.2}s, decode {:.2}s = {:.1} ms/step); \
             {gflops:.1} GFLOP/s = {:.1}% of matmul; decode streams {decode_weight_gbs:.1} GB/s of weights = {:.1}% of bandwidth",
            b * n,
            timing.prefill.as_secs_f64(),
            decode_s,
            decode_s / steps * 1e3,
            100.0 * gflops / mm,
            100.0 * decode_weight_gbs / bw,
        );
        results.push(serde_json::json!({
            "batch": b,
            "prompt_len": p,
            "new_tokens": n,
            "wall_s": wall,
            "all_wall_s": runs.iter().map(|r| r.0).collect::<Vec<_>>(),
            "prefill_s": timing.prefill.as_secs_f64(),
            "decode_s": decode_s,
            "decode_ms_per_step": decode_s / steps * 1e3,
            "tokens_per_s": tps,
            "achieved_gflops": gflops,
            "fraction_of_matmul": gflops / mm,
            "decode_weight_bytes_per_step": costs.step_bytes(b),
            "decode_weight_gbs": decode_weight_gbs,
            "decode_fraction_of_bandwidth": decode_weight_gbs / bw,
        }));
    }
    let report = serde_json::json!({
        "engine": "moeflow",
        "model": args.model.display().to_string(),
        "device": args.device,
        "dtype": format!("{:?}", args.dtype).to_lowercase(),
        "load_s": load_s,
        "threads": rayon::current_num_threads(),
        "active_weight_bytes_per_token": costs.active_bytes,
        "baselines": { "memory_bandwidth_gbs": bw, "matmul_gflops": mm },
        "metric": "tokens_per_s = batch * new_tokens / wall time of generate() including prefill",
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
