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

/// Routing statistics of a trained model, for size measurements: per MoE layer a Zipf
/// popularity over a random permutation of the experts, a fixed random expert-to-expert map
/// between consecutive layers that each chosen expert follows with `layer_corr`, and decode
/// tokens that re-select each expert of the previous decode token at the same layer with
/// `token_corr` (the knobs of `moeflow trace synth` on branch `analysis`, same order of
/// slots: token-correlated, layer-correlated, then popularity). Gate weights are random,
/// sorted descending, so gate order is the order of generation.
pub struct Routing {
    shape: ModelShape,
    cdf: Vec<Vec<f64>>,
    map: Vec<Vec<u16>>,
    layer_corr: f64,
    token_corr: f64,
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<u16> {
    let mut p: Vec<u16> = (0..n as u16).collect();
    for i in (1..n).rev() {
        p.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    p
}

impl Routing {
    /// `zipf` 0 with both correlations 0 is uniform, independent routing: the worst case.
    pub fn new(shape: &ModelShape, zipf: f64, layer_corr: f64, token_corr: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let e = shape.num_experts;
        let n = shape.moe_layers.len();
        let cdf = (0..n)
            .map(|_| {
                let perm = shuffled(&mut rng, e);
                let mut w = vec![0.0; e];
                for (rank, &x) in perm.iter().enumerate() {
                    w[x as usize] = 1.0 / ((rank + 1) as f64).powf(zipf);
                }
                let mut acc = 0.0;
                w.iter()
                    .map(|x| {
                        acc += x;
                        acc
                    })
                    .collect()
            })
            .collect();
        let map = (0..n).map(|_| shuffled(&mut rng, e)).collect();
        Self {
            shape: shape.clone(),
            cdf,
            map,
            layer_corr,
            token_corr,
        }
    }

    fn push(&self, e: u16, out: &mut Vec<u16>) {
        if out.len() < self.shape.top_k && !out.contains(&e) {
            out.push(e);
        }
    }

    fn select(&self, rng: &mut Rng, m: usize, prev_layer: &[u16], prev_token: &[u16]) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.shape.top_k);
        for &e in prev_token {
            if rng.unit() < self.token_corr {
                self.push(e, &mut out);
            }
        }
        for &e in prev_layer {
            if rng.unit() < self.layer_corr {
                self.push(self.map[m][e as usize], &mut out);
            }
        }
        let cdf = &self.cdf[m];
        let total = cdf[cdf.len() - 1];
        while out.len() < self.shape.top_k {
            let u = rng.unit() * total;
            let e = cdf.partition_point(|&c| c <= u).min(cdf.len() - 1);
            self.push(e as u16, &mut out);
        }
        out
    }

    pub fn request(
        &self,
        rng: &mut Rng,
        id: &str,
        prompt: usize,
        decode: usize,
        weights: bool,
    ) -> RequestTrace {
        let k = self.shape.top_k;
        let n = self.shape.moe_layers.len();
        let entry = |m: usize| LayerRouting {
            layer: self.shape.moe_layers[m] as u32,
            top_k: k as u16,
            experts: Vec::new(),
            weights: weights.then(Vec::new),
        };
        let gate = |rng: &mut Rng, w: &mut Option<Vec<f32>>| {
            if let Some(w) = w {
                let mut logits: Vec<f64> = (0..k).map(|_| 3.0 * rng.unit()).collect();
                logits.sort_by(|a, b| b.total_cmp(a));
                let exps: Vec<f64> = logits.iter().map(|l| (l - logits[0]).exp()).collect();
                let sum: f64 = exps.iter().sum();
                w.extend(exps.iter().map(|x| (x / sum) as f32));
            }
        };
        let mut prefill: Vec<LayerRouting> = (0..n).map(entry).collect();
        for _ in 0..prompt {
            let mut prev = Vec::new();
            for (m, lr) in prefill.iter_mut().enumerate() {
                let sel = self.select(rng, m, &prev, &[]);
                lr.experts.extend_from_slice(&sel);
                gate(rng, &mut lr.weights);
                prev = sel;
            }
        }
        let mut iterations = vec![Iteration {
            phase: Phase::Prefill,
            layers: prefill,
        }];
        let mut prev_token: Vec<Vec<u16>> = vec![Vec::new(); n];
        for _ in 0..decode {
            let mut layers: Vec<LayerRouting> = (0..n).map(entry).collect();
            let mut prev = Vec::new();
            for (m, lr) in layers.iter_mut().enumerate() {
                let sel = self.select(rng, m, &prev, &prev_token[m]);
                lr.experts.extend_from_slice(&sel);
                gate(rng, &mut lr.weights);
                prev_token[m] = sel.clone();
                prev = sel;
            }
            iterations.push(Iteration {
                phase: Phase::Decode,
                layers,
            });
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
}
