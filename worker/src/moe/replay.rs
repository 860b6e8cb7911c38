//! Route replay (benchmarking only): gates select experts as a recorded count distribution
//! does, so that a small model shows the load skew of a real one.
//!
//! A random-weight model routes almost uniformly, which hides what placement is for. With a
//! [`RouteReplay`] installed, every MoE layer still runs its real gate (so the routing
//! weights and all compute are real), but the expert ids of each token are redrawn: `top_k`
//! distinct experts sampled without replacement from the layer's count distribution. The
//! token's real weights are kept, in order (the largest goes to the first expert drawn), so
//! their sum is whatever the gate's normalisation made it.
//!
//! Draws are reproducible: each token's random stream is seeded by (seed, layer, token id,
//! position), which do not depend on how requests were batched or which rank ran them.
//!
//! Folding a source onto a smaller model: the source's MoE layers are its rows with any
//! count (DeepSeek-V3's three dense layers are all zero). Model MoE layer `i` of `M` takes
//! source MoE row `i * S / M`. Model expert `e` of `E` takes the summed counts of the source
//! experts `e * Es / E .. (e + 1) * Es / E` (a contiguous block). A source with fewer experts
//! than the model is refused.

use std::collections::BTreeMap;
use std::path::Path;

use super::Routing;

/// Why a count source cannot drive the gates.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {msg}")]
    Read { path: String, msg: String },
    #[error("{path}: `logical_count` has no layer with any count")]
    Empty { path: String },
    #[error("{path}: layer row {row} has {got} experts, row 0 has {want}")]
    Ragged {
        path: String,
        row: usize,
        got: usize,
        want: usize,
    },
    #[error("{path}: the source has {source_experts} experts per layer, fewer than the model's {model} (experts can be folded, not invented)")]
    TooFewExperts {
        path: String,
        source_experts: usize,
        model: usize,
    },
    #[error("{path}: model layer {layer} gets {nonzero} experts with counts, top-k is {top_k}")]
    TooFewHot {
        path: String,
        layer: usize,
        nonzero: usize,
        top_k: usize,
    },
    #[error("{path}: count {value} in layer row {row} is negative or not a number")]
    BadCount {
        path: String,
        row: usize,
        value: f64,
    },
}

/// Per-layer expert distributions folded onto a model, and the sampling rule.
#[derive(Debug, Clone)]
pub struct RouteReplay {
    /// Model layer → count per model expert.
    weights: BTreeMap<usize, Vec<f64>>,
    seed: u64,
}

/// The SGLang expert-count dump: `{"logical_count": [[count per expert] per layer]}`.
#[derive(serde::Deserialize)]
struct CountsFile {
    logical_count: Vec<Vec<f64>>,
}

impl RouteReplay {
    /// Reads an SGLang count JSON and folds it onto the model's MoE layers and experts.
    ///
    /// Parses the file itself for now; once the trace readers land this becomes a call to
    /// `moeflow_trace::source`.
    pub fn from_file(
        path: &Path,
        moe_layers: &[usize],
        num_experts: usize,
        top_k: usize,
        seed: u64,
    ) -> Result<Self, ReplayError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ReplayError::Read {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let f: CountsFile = serde_json::from_str(&text).map_err(|e| ReplayError::Read {
            path: p.clone(),
            msg: format!("not an expert-count JSON ({{\"logical_count\": [[...]]}}): {e}"),
        })?;
        Self::from_counts(&p, &f.logical_count, moe_layers, num_experts, top_k, seed)
    }

    /// Folds `counts` (`[layer][expert]`, as the source recorded them) onto the model.
    /// `name` names the source in errors.
    pub fn from_counts(
        name: &str,
        counts: &[Vec<f64>],
        moe_layers: &[usize],
        num_experts: usize,
        top_k: usize,
        seed: u64,
    ) -> Result<Self, ReplayError> {
        let path = name.to_string();
        let want = counts.first().map_or(0, Vec::len);
        for (row, c) in counts.iter().enumerate() {
            if c.len() != want {
                return Err(ReplayError::Ragged {
                    path,
                    row,
                    got: c.len(),
                    want,
                });
            }
            if let Some(&value) = c.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(ReplayError::BadCount { path, row, value });
            }
        }
        let rows: Vec<&Vec<f64>> = counts
            .iter()
            .filter(|c| c.iter().any(|&v| v > 0.0))
            .collect();
        if rows.is_empty() {
            return Err(ReplayError::Empty { path });
        }
        if want < num_experts {
            return Err(ReplayError::TooFewExperts {
                path,
                source_experts: want,
                model: num_experts,
            });
        }
        let mut weights = BTreeMap::new();
        for (i, &layer) in moe_layers.iter().enumerate() {
            let src = rows[i * rows.len() / moe_layers.len().max(1)];
            let folded: Vec<f64> = (0..num_experts)
                .map(|e| {
                    src[e * want / num_experts..(e + 1) * want / num_experts]
                        .iter()
                        .sum()
                })
                .collect();
            let nonzero = folded.iter().filter(|&&v| v > 0.0).count();
            if nonzero < top_k {
                return Err(ReplayError::TooFewHot {
                    path,
                    layer,
                    nonzero,
                    top_k,
                });
            }
            weights.insert(layer, folded);
        }
        Ok(Self { weights, seed })
    }

    /// The folded counts of a model layer (what the gates sample from).
    pub fn layer_counts(&self, layer: usize) -> Option<&[f64]> {
        self.weights.get(&layer).map(Vec::as_slice)
    }

    /// Redraws the expert ids of every token of `routing`; `keys[t]` identifies token `t`
    /// (its token id and position) so that its draw does not depend on the batch. Layers the
    /// source does not cover keep their routing.
    pub fn rewrite(&self, layer: usize, routing: &Routing, keys: &[u64]) -> Routing {
        let Some(w) = self.weights.get(&layer) else {
            return routing.clone();
        };
        let k = routing.top_k;
        let mut ids = Vec::with_capacity(routing.ids.len());
        let mut avail = w.clone();
        for t in 0..routing.num_tokens() {
            let key = keys.get(t).copied().unwrap_or(t as u64);
            let mut rng = SplitMix64::new(mix(&[self.seed, layer as u64, key]));
            avail.copy_from_slice(w);
            for _ in 0..k {
                let total: f64 = avail.iter().sum();
                let mut x = rng.unit() * total;
                let mut pick = avail.iter().rposition(|&v| v > 0.0).unwrap_or(0);
                for (e, &v) in avail.iter().enumerate() {
                    if v > 0.0 && x < v {
                        pick = e;
                        break;
                    }
                    x -= v;
                }
                avail[pick] = 0.0;
                ids.push(pick as u32);
            }
        }
        Routing {
            top_k: k,
            ids,
            weights: routing.weights.clone(),
            apply: routing.apply,
        }
    }
}

/// The key of a token for [`RouteReplay::rewrite`]: its id and position.
pub fn token_key(token: u32, position: usize) -> u64 {
    mix(&[u64::from(token), position as u64])
}

fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &p| {
        SplitMix64::new(h ^ p.wrapping_mul(0xbf58_476d_1ce4_e5b9)).next_u64()
    })
}

/// A small, fast, well-mixed generator (Steele et al.); one per token.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::WeightApplication;

    fn routing(tokens: usize, k: usize) -> Routing {
        Routing {
            top_k: k,
            ids: (0..tokens * k).map(|i| (i % 4) as u32).collect(),
            weights: (0..tokens * k).map(|i| 1.0 / (1 + i % k) as f32).collect(),
            apply: WeightApplication::Output,
        }
    }

    /// Source rows: a dense (all-zero) row, then two MoE rows of 8 experts.
    fn source() -> Vec<Vec<f64>> {
        vec![
            vec![0.0; 8],
            vec![100.0, 100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 50.0, 50.0],
        ]
    }

    #[test]
    fn folds_layers_and_expert_blocks() {
        let r = RouteReplay::from_counts("s", &source(), &[1, 2, 3, 4], 4, 2, 0).unwrap();
        // Four model layers over two source rows: 1,2 → row 1; 3,4 → row 2.
        assert_eq!(r.layer_counts(1).unwrap(), &[200.0, 2.0, 2.0, 2.0]);
        assert_eq!(r.layer_counts(2).unwrap(), &[200.0, 2.0, 2.0, 2.0]);
        assert_eq!(r.layer_counts(4).unwrap(), &[2.0, 2.0, 2.0, 100.0]);
    }

    #[test]
    fn draws_follow_the_distribution_and_are_reproducible() {
        let r = RouteReplay::from_counts("s", &source(), &[0], 4, 2, 7).unwrap();
        let n = 4000;
        let keys: Vec<u64> = (0..n).map(|t| token_key(t as u32, t)).collect();
        let a = r.rewrite(0, &routing(n, 2), &keys);
        let b = r.rewrite(0, &routing(n, 2), &keys);
        assert_eq!(a, b);
        // The same token alone gives the same draw as inside a batch.
        let one = r.rewrite(0, &routing(1, 2), &keys[17..18]);
        assert_eq!(one.ids, a.ids[34..36]);
        let mut counts = [0usize; 4];
        for t in 0..n {
            let (ids, w) = a.token(t);
            assert_ne!(ids[0], ids[1], "distinct experts per token");
            assert_eq!(w, routing(n, 2).token(t).1, "real weights kept");
            for &e in ids {
                counts[e as usize] += 1;
            }
        }
        // Expert 0 holds 200/206 of the mass: every token draws it first or second.
        assert!(counts[0] > n * 9 / 10, "{counts:?}");
        assert!(
            counts[1] > 0 && counts[2] > 0 && counts[3] > 0,
            "{counts:?}"
        );
        // Layers the source does not cover are left alone.
        assert_eq!(r.rewrite(5, &routing(3, 2), &keys[..3]), routing(3, 2));
    }

    #[test]
    fn bad_sources_are_named() {
        let err = RouteReplay::from_counts("s.json", &source(), &[0], 16, 2, 0).unwrap_err();
        assert!(matches!(
            err,
            ReplayError::TooFewExperts {
                source_experts: 8,
                model: 16,
                ..
            }
        ));
        assert!(err.to_string().contains("s.json"));
        let ragged = vec![vec![1.0; 8], vec![1.0; 7]];
        assert!(matches!(
            RouteReplay::from_counts("s", &ragged, &[0], 4, 2, 0),
            Err(ReplayError::Ragged { row: 1, .. })
        ));
        assert!(matches!(
            RouteReplay::from_counts("s", &[vec![0.0; 8]], &[0], 4, 2, 0),
            Err(ReplayError::Empty { .. })
        ));
        let hot = vec![vec![5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]];
        assert!(matches!(
            RouteReplay::from_counts("s", &hot, &[0], 4, 2, 0),
            Err(ReplayError::TooFewHot { nonzero: 1, .. })
        ));
        let neg = vec![vec![-1.0; 8]];
        assert!(matches!(
            RouteReplay::from_counts("s", &neg, &[0], 4, 2, 0),
            Err(ReplayError::BadCount { .. })
        ));
    }
}
