//! Synthetic expert-selection traces (`moeflow trace synth`), for tests and benchmarks: every
//! property the analysis measures has a knob, so a test can turn one up and check that the
//! analysis sees it.
//!
//! Model of a token's selection at MoE layer `m`, slot by slot in gate order:
//! 1. token-to-token: each expert the previous decode token of the request chose at `m` is
//!    re-selected with probability `token_correlation`;
//! 2. layer-to-layer: each expert `e` the token chose at layer `m-1` brings `map_m(e)` with
//!    probability `layer_correlation`; `map_m` is fixed per workload and layer pair and maps
//!    popularity rank to popularity rank, so it keeps each layer's skew;
//! 3. the remaining slots are drawn from the popularity of (workload, phase, layer): Zipf with
//!    exponent `zipf_exponent` (± `zipf_spread` per layer) over a per-layer random permutation
//!    of the experts; each workload reshuffles a `workload_drift` share of the ranks, decode a
//!    further `decode_drift` share;
//! 4. co-activation: whenever an expert of one of the layer's `hot_pairs` is chosen, its
//!    partner joins with probability `hot_pair_boost`.
//!
//! Gate weights are a softmax of random logits, sorted so that they fall in gate order and sum
//! to 1. Request `i` is generated from its own ChaCha stream, so any request can be produced
//! alone, in any order, and the output depends on the seed and the config only.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{
    CountsTrace, Iteration, LayerRouting, ModelShape, Phase, RequestTrace, TraceItem,
    MISSING_EXPERT,
};

/// Why a synthetic trace could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SynthError {
    #[error("synth config `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("synth --set `{key}`: {reason}")]
    Set { key: String, reason: String },
}

/// One workload label of the mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthWorkload {
    pub label: String,
    /// Relative share of requests.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Every knob; all fields have defaults, so a JSON file or `--set key=value` need only name
/// what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    pub seed: u64,
    pub model: Option<String>,
    /// All decoder layers; the first `dense_layers` are dense (no routing).
    pub num_layers: usize,
    pub dense_layers: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub requests: usize,
    /// Inclusive range of prompt tokens per request.
    pub prompt_len: (usize, usize),
    /// Inclusive range of decode steps per request.
    pub output_len: (usize, usize),
    /// Zipf exponent of expert popularity (0 = uniform).
    pub zipf_exponent: f64,
    /// Each layer's exponent is drawn uniformly within ± this of `zipf_exponent`.
    pub zipf_spread: f64,
    /// Disjoint expert pairs per layer that tend to be selected together.
    pub hot_pairs: usize,
    /// Probability that a chosen hot-pair expert brings its partner.
    pub hot_pair_boost: f64,
    /// Probability per expert that the next layer follows the fixed mapping.
    pub layer_correlation: f64,
    /// Probability per expert that the next decode token re-selects it.
    pub token_correlation: f64,
    /// Share of popularity ranks reshuffled for decode against prefill.
    pub decode_drift: f64,
    /// Share of popularity ranks each workload reshuffles against the shared base.
    pub workload_drift: f64,
    pub workloads: Vec<SynthWorkload>,
    /// Emit gate weights.
    pub gate_weights: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            model: Some("synthetic".into()),
            num_layers: 8,
            dense_layers: 1,
            num_experts: 16,
            top_k: 2,
            requests: 16,
            prompt_len: (16, 64),
            output_len: (8, 32),
            zipf_exponent: 1.0,
            zipf_spread: 0.0,
            hot_pairs: 0,
            hot_pair_boost: 0.5,
            layer_correlation: 0.0,
            token_correlation: 0.0,
            decode_drift: 0.3,
            workload_drift: 0.5,
            workloads: vec![SynthWorkload {
                label: "synthetic".into(),
                weight: 1.0,
            }],
            gate_weights: true,
        }
    }
}

impl SynthConfig {
    /// A DeepSeek-V3-shaped config (61 layers, 3 dense, 256 experts, top-8).
    pub fn deepseek_v3() -> Self {
        Self {
            model: Some("synthetic-deepseek-v3".into()),
            num_layers: 61,
            dense_layers: 3,
            num_experts: 256,
            top_k: 8,
            ..Self::default()
        }
    }

    /// Applies one `key=value` override: the value is read as JSON (`0.8`, `[8,32]`, `true`)
    /// and, failing that, as a string.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SynthError> {
        let err = |reason: String| SynthError::Set {
            key: key.to_string(),
            reason,
        };
        let mut json = serde_json::to_value(&*self).map_err(|e| err(e.to_string()))?;
        let obj = json
            .as_object_mut()
            .ok_or_else(|| err("config is not an object".into()))?;
        if !obj.contains_key(key) {
            let known: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(err(format!("unknown key; known: {}", known.join(", "))));
        }
        let v = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        obj.insert(key.to_string(), v);
        *self = serde_json::from_value(json).map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// Applies `key=value` strings in order.
    pub fn apply_sets<'a>(
        &mut self,
        sets: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), SynthError> {
        for s in sets {
            let (k, v) = s.split_once('=').ok_or_else(|| SynthError::Set {
                key: s.to_string(),
                reason: "expected key=value".into(),
            })?;
            self.set(k.trim(), v.trim())?;
        }
        Ok(())
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            model: self.model.clone(),
            num_layers: self.num_layers,
            num_experts: self.num_experts,
            top_k: self.top_k,
            moe_layers: (self.dense_layers..self.num_layers).collect(),
        }
    }

    fn check(&self) -> Result<(), SynthError> {
        let bad = |field: &'static str, reason: String| Err(SynthError::Config { field, reason });
        if self.num_experts < 2 || self.num_experts >= MISSING_EXPERT as usize {
            return bad(
                "num_experts",
                format!("{}: must be in 2..65535", self.num_experts),
            );
        }
        if self.top_k == 0 || self.top_k > self.num_experts {
            return bad(
                "top_k",
                format!("{}: must be in 1..={}", self.top_k, self.num_experts),
            );
        }
        if self.dense_layers >= self.num_layers {
            return bad(
                "dense_layers",
                format!(
                    "{} leaves no MoE layer of {}",
                    self.dense_layers, self.num_layers
                ),
            );
        }
        if self.prompt_len.0 == 0 || self.prompt_len.0 > self.prompt_len.1 {
            return bad(
                "prompt_len",
                format!("{:?}: need 1 <= min <= max", self.prompt_len),
            );
        }
        if self.output_len.0 > self.output_len.1 {
            return bad(
                "output_len",
                format!("{:?}: need min <= max", self.output_len),
            );
        }
        for (field, v) in [
            ("hot_pair_boost", self.hot_pair_boost),
            ("layer_correlation", self.layer_correlation),
            ("token_correlation", self.token_correlation),
            ("decode_drift", self.decode_drift),
            ("workload_drift", self.workload_drift),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(field, format!("{v}: must be a probability in [0, 1]"));
            }
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return bad(
                "zipf_exponent",
                format!("{}: must be >= 0", self.zipf_exponent),
            );
        }
        if !(self.zipf_spread.is_finite() && self.zipf_spread >= 0.0) {
            return bad("zipf_spread", format!("{}: must be >= 0", self.zipf_spread));
        }
        if 2 * self.hot_pairs > self.num_experts {
            return bad(
                "hot_pairs",
                format!(
                    "{} disjoint pairs need {} experts, the model has {}",
                    self.hot_pairs,
                    2 * self.hot_pairs,
                    self.num_experts
                ),
            );
        }
        if self.workloads.is_empty() {
            return bad("workloads", "at least one workload".into());
        }
        if self
            .workloads
            .iter()
            .any(|w| !(w.weight.is_finite() && w.weight > 0.0))
        {
            return bad("workloads", "every weight must be positive".into());
        }
        Ok(())
    }
}

/// Reshuffles a random `share` of the positions of `perm` among themselves.
fn partial_shuffle(perm: &[u16], share: f64, rng: &mut ChaCha8Rng) -> Vec<u16> {
    let mut out = perm.to_vec();
    let positions: Vec<usize> = (0..perm.len())
        .filter(|_| rng.random::<f64>() < share)
        .collect();
    let mut vals: Vec<u16> = positions.iter().map(|&p| out[p]).collect();
    vals.shuffle(rng);
    for (&p, v) in positions.iter().zip(vals) {
        out[p] = v;
    }
    out
}

/// Cumulative popularity over expert ids for a rank permutation and a Zipf exponent.
fn cdf(perm: &[u16], exponent: f64) -> Vec<f64> {
    let mut w = vec![0.0; perm.len()];
    for (rank, &e) in perm.iter().enumerate() {
        w[e as usize] = 1.0 / ((rank + 1) as f64).powf(exponent);
    }
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x;
            acc
        })
        .collect()
}

/// A configured generator; cheap to query for any request.
#[derive(Debug, Clone)]
pub struct SynthGenerator {
    config: SynthConfig,
    shape: ModelShape,
    /// `[workload][phase][moe layer]` cumulative popularity.
    popularity: Vec<[Vec<Vec<f64>>; 2]>,
    /// `[workload][moe layer pair][expert]`: the expert at layer `m+1` that follows expert `e`
    /// at `m`.
    layer_map: Vec<Vec<Vec<u16>>>,
    /// `[moe layer][expert]`: hot-pair partner or `MISSING_EXPERT`.
    partner: Vec<Vec<u16>>,
    /// Cumulative workload weights.
    workload_cdf: Vec<f64>,
}

impl SynthGenerator {
    pub fn new(config: SynthConfig) -> Result<Self, SynthError> {
        config.check()?;
        let shape = config.shape();
        let e = config.num_experts;
        let n = shape.moe_layers.len();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(0);
        let identity: Vec<u16> = (0..e as u16).collect();
        let mut base = Vec::with_capacity(n);
        let mut exponents = Vec::with_capacity(n);
        for _ in 0..n {
            let mut p = identity.clone();
            p.shuffle(&mut rng);
            base.push(p);
            let s = config.zipf_exponent + config.zipf_spread * (2.0 * rng.random::<f64>() - 1.0);
            exponents.push(s.max(0.0));
        }
        let mut popularity = Vec::with_capacity(config.workloads.len());
        let mut layer_map = Vec::with_capacity(config.workloads.len());
        for _ in &config.workloads {
            let mut pre = Vec::with_capacity(n);
            let mut dec = Vec::with_capacity(n);
            let mut perms = Vec::with_capacity(n);
            for m in 0..n {
                let w = partial_shuffle(&base[m], config.workload_drift, &mut rng);
                let d = partial_shuffle(&w, config.decode_drift, &mut rng);
                pre.push(cdf(&w, exponents[m]));
                dec.push(cdf(&d, exponents[m]));
                perms.push(w);
            }
            popularity.push([pre, dec]);
            // Rank-preserving: the expert of popularity rank r at layer m leads to the expert
            // of rank r at layer m+1 (in this workload's prefill order), so that correlated
            // tokens keep each layer's skew.
            layer_map.push(
                (0..n.saturating_sub(1))
                    .map(|m| {
                        let mut map = vec![0u16; e];
                        for (rank, &from) in perms[m].iter().enumerate() {
                            map[from as usize] = perms[m + 1][rank];
                        }
                        map
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let partner = (0..n)
            .map(|_| {
                let mut p = identity.clone();
                p.shuffle(&mut rng);
                let mut out = vec![MISSING_EXPERT; e];
                for pair in p[..2 * config.hot_pairs].chunks(2) {
                    out[pair[0] as usize] = pair[1];
                    out[pair[1] as usize] = pair[0];
                }
                out
            })
            .collect();
        let mut acc = 0.0;
        let workload_cdf = config
            .workloads
            .iter()
            .map(|w| {
                acc += w.weight;
                acc
            })
            .collect();
        Ok(Self {
            config,
            shape,
            popularity,
            layer_map,
            partner,
            workload_cdf,
        })
    }

    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    fn pick(cdf: &[f64], rng: &mut ChaCha8Rng) -> usize {
        let total = cdf.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
    }

    fn push(&self, m: usize, e: u16, out: &mut Vec<u16>, rng: &mut ChaCha8Rng) {
        if out.len() >= self.config.top_k || out.contains(&e) {
            return;
        }
        out.push(e);
        let p = self.partner[m][e as usize];
        if p != MISSING_EXPERT
            && out.len() < self.config.top_k
            && !out.contains(&p)
            && rng.random::<f64>() < self.config.hot_pair_boost
        {
            out.push(p);
        }
    }

    /// One token's selection at MoE layer index `m`.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        rng: &mut ChaCha8Rng,
        popularity: &[f64],
        w: usize,
        m: usize,
        prev_layer: Option<&[u16]>,
        prev_token: Option<&[u16]>,
        out: &mut Vec<u16>,
    ) {
        let c = &self.config;
        out.clear();
        if let Some(pt) = prev_token {
            for &e in pt {
                if rng.random::<f64>() < c.token_correlation {
                    self.push(m, e, out, rng);
                }
            }
        }
        if let (Some(pl), true) = (prev_layer, m > 0) {
            for &e in pl {
                if rng.random::<f64>() < c.layer_correlation {
                    self.push(m, self.layer_map[w][m - 1][e as usize], out, rng);
                }
            }
        }
        let mut attempts = 0;
        while out.len() < c.top_k {
            let e = if attempts < 64 * c.top_k {
                attempts += 1;
                Self::pick(popularity, rng) as u16
            } else {
                // A very skewed popularity can keep drawing chosen experts: take the first
                // free one so that generation always ends.
                (0..c.num_experts as u16)
                    .find(|e| !out.contains(e))
                    .unwrap_or(0)
            };
            self.push(m, e, out, rng);
        }
    }

    fn gate_weights(&self, rng: &mut ChaCha8Rng, out: &mut Vec<f32>) {
        let k = self.config.top_k;
        let mut logits: Vec<f64> = (0..k).map(|_| 3.0 * rng.random::<f64>()).collect();
        logits.sort_by(|a, b| b.total_cmp(a));
        let exps: Vec<f64> = logits.iter().map(|l| (l - logits[0]).exp()).collect();
        let sum: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|x| (x / sum) as f32));
    }

    fn rng_for(&self, index: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(index as u64 + 1);
        rng
    }

    /// Request `index` (any index; `0..requests` are the configured ones).
    pub fn request(&self, index: usize) -> RequestTrace {
        let c = &self.config;
        let mut rng = self.rng_for(index);
        let u = rng.random::<f64>() * self.workload_cdf.last().copied().unwrap_or(1.0);
        let w = self
            .workload_cdf
            .partition_point(|&x| x <= u)
            .min(c.workloads.len() - 1);
        let prompt_len = rng.random_range(c.prompt_len.0..=c.prompt_len.1);
        let output_len = rng.random_range(c.output_len.0..=c.output_len.1);
        let n = self.shape.moe_layers.len();
        let new_layers = |tokens: usize| -> Vec<LayerRouting> {
            self.shape
                .moe_layers
                .iter()
                .map(|&l| LayerRouting {
                    layer: l as u32,
                    top_k: c.top_k as u16,
                    experts: Vec::with_capacity(tokens * c.top_k),
                    weights: c.gate_weights.then(|| Vec::with_capacity(tokens * c.top_k)),
                })
                .collect()
        };
        let mut sel = Vec::with_capacity(c.top_k);
        let mut prev_layer: Vec<u16> = Vec::with_capacity(c.top_k);

        let mut prefill = new_layers(prompt_len);
        let pop = &self.popularity[w][0];
        for _ in 0..prompt_len {
            for m in 0..n {
                let pl = (m > 0).then_some(prev_layer.as_slice());
                self.select(&mut rng, &pop[m], w, m, pl, None, &mut sel);
                let lr = &mut prefill[m];
                lr.experts.extend_from_slice(&sel);
                if let Some(ws) = &mut lr.weights {
                    self.gate_weights(&mut rng, ws);
                }
                std::mem::swap(&mut prev_layer, &mut sel);
            }
        }
        let mut iterations = Vec::with_capacity(output_len + 1);
        iterations.push(Iteration {
            phase: Phase::Prefill,
            layers: prefill,
        });
        let pop = &self.popularity[w][1];
        let mut prev_token: Vec<Vec<u16>> = Vec::new();
        for _ in 0..output_len {
            let mut layers = new_layers(1);
            for m in 0..n {
                let pl = (m > 0).then_some(prev_layer.as_slice());
                let pt = prev_token.get(m).map(Vec::as_slice);
                self.select(&mut rng, &pop[m], w, m, pl, pt, &mut sel);
                layers[m].experts.extend_from_slice(&sel);
                if let Some(ws) = &mut layers[m].weights {
                    self.gate_weights(&mut rng, ws);
                }
                std::mem::swap(&mut prev_layer, &mut sel);
            }
            prev_token = layers.iter().map(|l| l.experts.clone()).collect();
            iterations.push(Iteration {
                phase: Phase::Decode,
                layers,
            });
        }
        RequestTrace {
            id: format!("synth-{index}"),
            workload: Some(c.workloads[w].label.clone()),
            prompt_len,
            started_ms: None,
            finished_ms: None,
            iterations,
        }
    }

    /// The configured requests, generated lazily.
    pub fn requests(&self) -> impl Iterator<Item = RequestTrace> + '_ {
        (0..self.config.requests).map(|i| self.request(i))
    }

    /// The configured requests as trace items.
    pub fn items(&self) -> impl Iterator<Item = TraceItem> + '_ {
        self.requests().map(TraceItem::Request)
    }

    /// The configured requests summed into aggregate counts, one item per (workload, phase)
    /// that has data, as an SGLang dump of each would hold.
    pub fn counts(&self) -> Vec<CountsTrace> {
        let c = &self.config;
        let (l, e) = (c.num_layers, c.num_experts);
        let mut acc = vec![[vec![0u64; l * e], vec![0u64; l * e]]; c.workloads.len()];
        let mut used = vec![[false; 2]; c.workloads.len()];
        for r in self.requests() {
            let w = c
                .workloads
                .iter()
                .position(|x| Some(&x.label) == r.workload.as_ref())
                .unwrap_or(0);
            for it in &r.iterations {
                let p = usize::from(it.phase == Phase::Decode);
                used[w][p] = true;
                for lr in &it.layers {
                    let base = lr.layer as usize * e;
                    for &x in &lr.experts {
                        if x != MISSING_EXPERT {
                            acc[w][p][base + x as usize] += 1;
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (w, phases) in acc.into_iter().enumerate() {
            for (p, counts) in phases.into_iter().enumerate() {
                if !used[w][p] {
                    continue;
                }
                let phase = if p == 0 {
                    Phase::Prefill
                } else {
                    Phase::Decode
                };
                let label = &c.workloads[w].label;
                out.push(CountsTrace {
                    id: format!("{phase}_{label}"),
                    workload: Some(label.clone()),
                    phase: Some(phase),
                    counts: (0..l)
                        .map(|layer| {
                            (layer >= c.dense_layers)
                                .then(|| counts[layer * e..(layer + 1) * e].to_vec())
                        })
                        .collect(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
