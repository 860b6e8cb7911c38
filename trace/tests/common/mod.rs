//! A tiny deterministic trace generator for the I/O tests (the real `trace synth` lives
//! elsewhere): skewed expert popularity per layer, distinct top-k per token.
#![allow(dead_code)]

use moeflow_trace::{Iteration, LayerRouting, ModelShape, Phase, RequestTrace};

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn shape(num_layers: usize, dense: usize, num_experts: usize, top_k: usize) -> ModelShape {
    ModelShape {
        model: Some(format!("synthetic/{num_experts}e-top{top_k}")),
        num_layers,
        num_experts,
        top_k,
        moe_layers: (dense..num_layers).collect(),
    }
}

fn token(rng: &mut Rng, shape: &ModelShape, layer: usize, out: &mut Vec<u16>, w: &mut Vec<f32>) {
    let e = shape.num_experts;
    let start = out.len();
    while out.len() - start < shape.top_k {
        // Squaring a uniform skews popularity towards low ranks; the rotation by layer gives
        // every layer its own hot experts.
        let u = rng.unit();
        let x = (((u * u) * e as f64) as usize + layer * 7) % e;
        if !out[start..].contains(&(x as u16)) {
            out.push(x as u16);
            w.push(1.0 / (1 + out.len() - start) as f32);
        }
    }
}

pub fn request(
    rng: &mut Rng,
    shape: &ModelShape,
    id: &str,
    prompt: usize,
    decode: usize,
    weights: bool,
) -> RequestTrace {
    let mut iterations = Vec::new();
    for (phase, n) in std::iter::once((Phase::Prefill, prompt))
        .chain(std::iter::repeat_n((Phase::Decode, 1), decode))
    {
        let layers = shape
            .moe_layers
            .iter()
            .map(|&l| {
                let (mut ex, mut w) = (Vec::new(), Vec::new());
                for _ in 0..n {
                    token(rng, shape, l, &mut ex, &mut w);
                }
                LayerRouting {
                    layer: l as u32,
                    top_k: shape.top_k as u16,
                    experts: ex,
                    weights: weights.then_some(w),
                }
            })
            .collect();
        iterations.push(Iteration { phase, layers });
    }
    RequestTrace {
        id: id.to_string(),
        workload: Some("synthetic/default".into()),
        prompt_len: prompt,
        started_ms: None,
        finished_ms: None,
        iterations,
    }
}

/// The shared real-data folder: `<repo>/../shared/data`, or `MOEFLOW_SHARED_DATA` when the
/// checkout sits elsewhere (a worktree). `None` (with a note) when absent.
pub fn shared_data(sub: &str) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("MOEFLOW_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data").into());
    let p = base.join(sub);
    if p.exists() {
        Some(p)
    } else {
        println!(
            "skipped: {} not present (set MOEFLOW_SHARED_DATA)",
            p.display()
        );
        None
    }
}
