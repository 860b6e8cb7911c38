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
//! The counts come already folded onto the model (see `moeflow_trace::fold`: any trace source,
//! merged into one count distribution and mapped onto this model's MoE layers and experts).

use std::collections::BTreeMap;

use moeflow_trace::CountsTrace;

use super::Routing;

/// Why a count distribution cannot drive the gates.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("the counts have no layer with any count")]
    Empty,
    #[error("layer {layer} has {nonzero} experts with counts, top-k is {top_k} (a token selects {top_k} distinct experts)")]
    TooFewHot {
        layer: usize,
        nonzero: usize,
        top_k: usize,
    },
}

/// Per-layer expert distributions of a model, and the sampling rule.
#[derive(Debug, Clone)]
pub struct RouteReplay {
    /// Model layer → count per model expert.
    weights: BTreeMap<usize, Vec<f64>>,
    seed: u64,
}

impl RouteReplay {
    /// Samples from `counts`, which must be of this model (layer ids and expert ids as the
    /// model's; `moeflow_trace::fold_counts` makes them from another model's). Every layer
    /// with counts needs at least `top_k` experts with a count.
    pub fn new(counts: &CountsTrace, top_k: usize, seed: u64) -> Result<Self, ReplayError> {
        let mut weights = BTreeMap::new();
        for (layer, c) in counts.counts.iter().enumerate() {
            let Some(c) = c else { continue };
            let nonzero = c.iter().filter(|&&v| v > 0).count();
            if nonzero == 0 {
                continue;
            }
            if nonzero < top_k {
                return Err(ReplayError::TooFewHot {
                    layer,
                    nonzero,
                    top_k,
                });
            }
            weights.insert(layer, c.iter().map(|&v| v as f64).collect());
        }
        if weights.is_empty() {
            return Err(ReplayError::Empty);
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

    /// A dense layer 0, then layers 1 and 2 over 4 experts.
    fn counts() -> CountsTrace {
        CountsTrace {
            id: "c".into(),
            workload: None,
            phase: None,
            counts: vec![None, Some(vec![200, 2, 2, 2]), Some(vec![2, 2, 2, 100])],
        }
    }

    #[test]
    fn draws_follow_the_distribution_and_are_reproducible() {
        let r = RouteReplay::new(&counts(), 2, 7).unwrap();
        let n = 4000;
        let keys: Vec<u64> = (0..n).map(|t| token_key(t as u32, t)).collect();
        let a = r.rewrite(1, &routing(n, 2), &keys);
        let b = r.rewrite(1, &routing(n, 2), &keys);
        assert_eq!(a, b);
        // The same token alone gives the same draw as inside a batch.
        let one = r.rewrite(1, &routing(1, 2), &keys[17..18]);
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
        assert_eq!(r.rewrite(0, &routing(3, 2), &keys[..3]), routing(3, 2));
        assert_eq!(r.layer_counts(2).unwrap(), &[2.0, 2.0, 2.0, 100.0]);
    }

    #[test]
    fn bad_counts_are_named() {
        let mut c = counts();
        c.counts[1] = Some(vec![5, 0, 0, 0]);
        let err = RouteReplay::new(&c, 2, 0).unwrap_err();
        assert_eq!(
            err,
            ReplayError::TooFewHot {
                layer: 1,
                nonzero: 1,
                top_k: 2
            }
        );
        assert!(err.to_string().contains("layer 1"));
        c.counts = vec![None, Some(vec![0; 4])];
        assert_eq!(RouteReplay::new(&c, 2, 0).unwrap_err(), ReplayError::Empty);
    }
}
