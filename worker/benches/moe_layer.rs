//! Throughput of one MoE layer (BENCHMARKS.md, "MoE layer throughput").
//!
//! ```text
//! cargo bench -p moeflow-worker --bench moe_layer
//! ```
//!
//! The layer is the issue's: hidden 1024, 64 SwiGLU experts of FFN width 512, Qwen3-style
//! softmax gate with top-8 and renormalised weights, built from random tensors through the
//! public API and run through `LocalDispatch`, at 1, 16, 256 and 1024 tokens.
//!
//! Divan's throughput column counts *items = floating-point operations*, so "Gitem/s" reads
//! as GFLOP/s:
//! - `moe_layer`: gate + routed experts, counted as `2 * tokens * top_k * 3 * hidden * ffn`
//!   (the expert FLOPs only; the gate's time is included but its FLOPs are not, so the rate
//!   is conservative);
//! - `experts_only`: the same experts on a precomputed routing;
//! - `matmul_f32_1024`: the baseline of the same run, candle's f32 matmul of
//!   `[1024 x 1024] x [1024 x 1024]` (`2 * 1024^3` FLOPs), on all threads.
//!
//! With `-- --paired` it skips divan and prints, per token count, the median over paired
//! samples (baseline and layer timed back to back) of the layer's rate over the baseline's:
//! the robust form of the ratio on a machine shared with other work.

use std::sync::LazyLock;

use candle_core::{DType, Device, Tensor};
use divan::counter::ItemsCount;
use divan::Bencher;
use moeflow_worker::moe::{Gate, LayerExperts, LocalDispatch, MoeDispatch, SoftmaxTopKGate};
use moeflow_worker::nn::SwiGlu;
use moeflow_worker::weights::WeightStore;

const HIDDEN: usize = 1024;
const EXPERTS: usize = 64;
const TOP_K: usize = 8;
const FFN: usize = 512;
const TOKENS: [usize; 4] = [1, 16, 256, 1024];

struct Layer {
    gate: SoftmaxTopKGate,
    experts: LayerExperts,
    /// Hidden states for the largest token count; smaller counts take leading rows.
    x: Tensor,
}

/// Normal random tensor with standard deviation `1 / sqrt(fan_in)`, so activations stay O(1).
fn randn(shape: (usize, usize), fan_in: usize) -> Tensor {
    Tensor::randn(0f32, 1.0 / (fan_in as f32).sqrt(), shape, &Device::Cpu).expect("random tensor")
}

static LAYER: LazyLock<Layer> = LazyLock::new(|| {
    // The gate is loaded like a checkpoint's (there is no other public constructor).
    let dir = tempfile::tempdir().expect("temp dir");
    let w = randn((EXPERTS, HIDDEN), HIDDEN);
    let gate_path = dir.path().join("model.safetensors");
    w.save_safetensors("gate.weight", &gate_path)
        .expect("write gate");
    let ws = WeightStore::open(dir.path(), DType::F32, &Device::Cpu).expect("open gate");
    let gate =
        SoftmaxTopKGate::load(&ws, "gate.weight", EXPERTS, HIDDEN, TOP_K, true).expect("load gate");
    let mut experts = LayerExperts::new(0, EXPERTS, HIDDEN);
    for e in 0..EXPERTS as u32 {
        let ffn =
            SwiGlu::from_input_major(randn((HIDDEN, 2 * FFN), HIDDEN), randn((FFN, HIDDEN), FFN))
                .expect("expert");
        experts.insert(e, ffn);
    }
    let x = randn((TOKENS[TOKENS.len() - 1], HIDDEN), 1);
    Layer { gate, experts, x }
});

fn expert_flops(tokens: usize) -> ItemsCount {
    ItemsCount::new(2 * tokens * TOP_K * 3 * HIDDEN * FFN)
}

fn main() {
    LazyLock::force(&LAYER);
    if std::env::args().any(|a| a == "--paired") {
        return paired();
    }
    divan::main();
}

/// `--paired`: the ratio measured robustly on a shared machine. Each sample times the
/// baseline matmul and the MoE layer back to back, so both see the same background load;
/// the report gives the median of the per-sample ratios (and the median rates).
fn paired() {
    use std::time::Instant;
    let a = randn((1024, 1024), 1);
    let b = randn((1024, 1024), 1);
    let mm_flops = 2.0 * 1024f64.powi(3);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("tokens  moe_layer GFLOP/s  matmul GFLOP/s  ratio (median of {PAIRED_SAMPLES} paired samples)");
    for tokens in TOKENS {
        let layer = &*LAYER;
        let x = layer.x.narrow(0, 0, tokens).expect("rows");
        let run_layer = || {
            let routing = layer.gate.route(&x).expect("route");
            LocalDispatch
                .routed(0, &x, &routing, &layer.experts)
                .expect("experts")
        };
        run_layer();
        let (mut mm, mut moe, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..PAIRED_SAMPLES {
            let t = Instant::now();
            divan::black_box(a.matmul(&b).expect("matmul"));
            let g_mm = mm_flops / t.elapsed().as_secs_f64() / 1e9;
            let t = Instant::now();
            divan::black_box(run_layer());
            let g_moe = expert_flops_f64(tokens) / t.elapsed().as_secs_f64() / 1e9;
            mm.push(g_mm);
            moe.push(g_moe);
            ratio.push(g_moe / g_mm);
        }
        println!(
            "{tokens:6}  {:17.1}  {:14.1}  {:5.2}",
            median(moe),
            median(mm),
            median(ratio)
        );
    }
}

const PAIRED_SAMPLES: usize = 9;

fn expert_flops_f64(tokens: usize) -> f64 {
    (2 * tokens * TOP_K * 3 * HIDDEN * FFN) as f64
}

#[divan::bench(sample_count = 30, max_time = 2)]
fn matmul_f32_1024(bencher: Bencher) {
    let a = randn((1024, 1024), 1);
    let b = randn((1024, 1024), 1);
    bencher
        .counter(ItemsCount::new(2 * 1024 * 1024 * 1024usize))
        .bench(|| a.matmul(&b).expect("matmul"));
}

#[divan::bench(args = TOKENS, sample_count = 30, max_time = 2)]
fn moe_layer(bencher: Bencher, tokens: usize) {
    let layer = &*LAYER;
    let x = layer.x.narrow(0, 0, tokens).expect("rows");
    bencher.counter(expert_flops(tokens)).bench(|| {
        let routing = layer.gate.route(&x).expect("route");
        LocalDispatch
            .routed(0, &x, &routing, &layer.experts)
            .expect("experts")
    });
}

#[divan::bench(args = TOKENS, sample_count = 30, max_time = 2)]
fn experts_only(bencher: Bencher, tokens: usize) {
    let layer = &*LAYER;
    let x = layer.x.narrow(0, 0, tokens).expect("rows");
    let routing = layer.gate.route(&x).expect("route");
    bencher.counter(expert_flops(tokens)).bench(|| {
        layer
            .experts
            .compute_routing(&x, &routing)
            .expect("experts")
    });
}
