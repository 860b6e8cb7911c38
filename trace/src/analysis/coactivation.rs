//! Co-activation of expert pairs within one token's top-k selection (paper observation 5).
//! Needs per-token data: the marginals used for the random rate are counted here, from the same
//! tokens as the pairs, never from aggregate counts.
//!
//! Random rate of a pair (i, j) at a layer with T tokens and per-expert counts c: the expected
//! count if each token picked its experts independently with the observed marginals,
//! `c_i * c_j / T`. A pair's ratio is its count over that.

use serde::{Deserialize, Serialize};

use super::counters::{Counters, RowBatch};
use super::stats::{mean_some, top_count};
use super::transition::TransitionCounts;
use crate::MISSING_EXPERT;

/// Pair, marginal and token counters per MoE layer, flat.
///
/// Pairs are counted in a full E x E matrix per layer (cell (i, j) and (j, i) both count a
/// token that chose i and j), updated like a transition matrix from a token's selection to
/// itself: twice the increments of an upper triangle, but no data-dependent branch in the
/// inner loop, which made the triangle three times slower.
#[derive(Debug, Clone, PartialEq)]
pub struct PairCounts {
    pub num_experts: usize,
    /// Per layer, E expert counts.
    experts: Counters,
    /// Tokens with at least one captured expert, per layer.
    pub tokens: Vec<u64>,
    cells: TransitionCounts,
}

impl PairCounts {
    /// `top_k` bounds how much one token can add to a cell.
    pub fn new(layers: usize, num_experts: usize, top_k: usize) -> Self {
        Self {
            num_experts,
            experts: Counters::new(layers, num_experts, top_k),
            tokens: vec![0; layers],
            cells: TransitionCounts::new(layers, num_experts, top_k),
        }
    }

    /// Tokens `0..n` at MoE layer index `slot`, `sel(t)` giving token `t`'s selection.
    pub fn add_batch<'a>(
        &mut self,
        slot: usize,
        n: usize,
        sel: impl Fn(usize) -> &'a [u16],
        scratch: &mut RowBatch,
    ) {
        let chunk = self
            .experts
            .max_batch()
            .clamp(1, super::transition::MAX_CHUNK);
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let experts = self.experts.observe(slot, end - start);
            for t in start..end {
                let mut any = false;
                for &x in sel(t) {
                    if x != MISSING_EXPERT {
                        experts[x as usize] += 1;
                        any = true;
                    }
                }
                self.tokens[slot] += u64::from(any);
            }
            start = end;
        }
        self.cells.add_batch(slot, n, |t| (sel(t), sel(t)), scratch);
    }

    pub fn merge(&mut self, other: &PairCounts) {
        self.experts.merge(&other.experts);
        self.cells.merge(&other.cells);
        self.tokens
            .iter_mut()
            .zip(&other.tokens)
            .for_each(|(a, b)| *a += b);
    }

    /// Count of the pair (a, b), a != b, at layer index `slot`.
    pub fn pair(&self, slot: usize, a: usize, b: usize) -> u64 {
        self.cells.slot(slot)[a * self.num_experts + b]
    }

    /// Upper-triangle pair counts of one layer, in `crate::load::pair_index` order.
    fn triangle(&self, slot: usize) -> Vec<u64> {
        let e = self.num_experts;
        let m = self.cells.slot(slot);
        let mut out = Vec::with_capacity(num_pairs(e));
        for a in 0..e {
            out.extend_from_slice(&m[a * e + a + 1..(a + 1) * e]);
        }
        out
    }
}

pub fn num_pairs(e: usize) -> usize {
    e * e.saturating_sub(1) / 2
}

/// One frequent pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotPair {
    pub layer: usize,
    pub a: u16,
    pub b: u16,
    pub count: u64,
    /// Count over the random rate.
    pub ratio: f64,
}

/// Co-activation at one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCoactivation {
    pub layer: usize,
    pub tokens: u64,
    /// All pair co-activations at this layer.
    pub total: u64,
    /// Share of `total` carried by the top `top_pair_fraction` of pairs.
    pub top_share: Option<f64>,
    /// Highest and mean ratio to the random rate over those top pairs.
    pub top_ratio_max: Option<f64>,
    pub top_ratio_mean: Option<f64>,
}

/// Co-activation of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoactivationReport {
    /// Share of all pairs counted as "top" (0.1 in the paper).
    pub top_pair_fraction: f64,
    /// Pairs in that top set per layer.
    pub top_pairs_per_layer: usize,
    /// The share a uniform pair distribution would give: `top_pair_fraction`, roughly.
    pub uniform_share: f64,
    pub mean_top_share: Option<f64>,
    pub mean_top_ratio_max: Option<f64>,
    pub mean_top_ratio_mean: Option<f64>,
    pub layers: Vec<LayerCoactivation>,
    /// The most frequent pairs over all layers (by ratio to the random rate, among each
    /// layer's top pairs).
    pub hottest: Vec<HotPair>,
}

/// `layers[s]` is the layer id of slot `s`.
pub fn report(
    counts: &PairCounts,
    layers: &[usize],
    top_pair_fraction: f64,
    list: usize,
) -> Option<CoactivationReport> {
    let e = counts.num_experts;
    let np = num_pairs(e);
    if np == 0 {
        return None;
    }
    let top = top_count(top_pair_fraction, np);
    // Pair (a, b) for each flat index, in index order.
    let mut index_pairs = Vec::with_capacity(np);
    for a in 0..e {
        for b in a + 1..e {
            index_pairs.push((a as u16, b as u16));
        }
    }
    let mut out = Vec::with_capacity(layers.len());
    let mut hottest = Vec::new();
    for (s, &layer) in layers.iter().enumerate().take(counts.tokens.len()) {
        let pairs = &counts.triangle(s);
        let experts = &counts.experts.block(s);
        let tokens = counts.tokens[s];
        let total: u64 = pairs.iter().sum();
        if total == 0 || tokens == 0 {
            out.push(LayerCoactivation {
                layer,
                tokens,
                total,
                top_share: None,
                top_ratio_max: None,
                top_ratio_mean: None,
            });
            continue;
        }
        let mut order: Vec<usize> = (0..np).collect();
        order.sort_by(|&x, &y| pairs[y].cmp(&pairs[x]).then(x.cmp(&y)));
        order.truncate(top);
        let covered: u64 = order.iter().map(|&k| pairs[k]).sum();
        let ratios: Vec<(usize, f64)> = order
            .iter()
            .filter(|&&k| pairs[k] > 0)
            .map(|&k| {
                let (a, b) = index_pairs[k];
                let expected =
                    experts[a as usize] as f64 * experts[b as usize] as f64 / tokens as f64;
                (k, pairs[k] as f64 / expected)
            })
            .collect();
        for &(k, ratio) in &ratios {
            let (a, b) = index_pairs[k];
            hottest.push(HotPair {
                layer,
                a,
                b,
                count: pairs[k],
                ratio,
            });
        }
        out.push(LayerCoactivation {
            layer,
            tokens,
            total,
            top_share: Some(covered as f64 / total as f64),
            top_ratio_max: ratios.iter().map(|r| r.1).max_by(f64::total_cmp),
            top_ratio_mean: mean_some(ratios.iter().map(|r| Some(r.1))),
        });
    }
    if out.iter().all(|l| l.top_share.is_none()) {
        return None;
    }
    hottest.sort_by(|x, y| y.ratio.total_cmp(&x.ratio).then(y.count.cmp(&x.count)));
    hottest.truncate(list);
    Some(CoactivationReport {
        top_pair_fraction,
        top_pairs_per_layer: top,
        uniform_share: top as f64 / np as f64,
        mean_top_share: mean_some(out.iter().map(|l| l.top_share)),
        mean_top_ratio_max: mean_some(out.iter().map(|l| l.top_ratio_max)),
        mean_top_ratio_mean: mean_some(out.iter().map(|l| l.top_ratio_mean)),
        layers: out,
        hottest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_to_random_rate() {
        // 4 experts, top-2; pair (0,1) always together in half the tokens, (2,3) in the rest.
        let mut p = PairCounts::new(1, 4, 2);
        let sels: [&[u16]; 3] = [&[0, 1], &[3, 2], &[MISSING_EXPERT, MISSING_EXPERT]];
        let mut scratch = RowBatch::default();
        p.add_batch(0, 20, |t| sels[t % 2], &mut scratch);
        p.add_batch(0, 1, |_| sels[2], &mut scratch);
        assert_eq!(p.tokens, vec![20]);
        let r = report(&p, &[5], 0.1, 10).unwrap();
        // 6 pairs, top 1 pair: (0,1) with 10 of 20 co-activations.
        assert_eq!(r.top_pairs_per_layer, 1);
        let l = &r.layers[0];
        assert_eq!(l.total, 20);
        assert_eq!(l.top_share, Some(0.5));
        // Expected count c0*c1/T = 10*10/20 = 5; observed 10: ratio 2.
        assert_eq!(l.top_ratio_max, Some(2.0));
        assert_eq!(r.hottest[0].a, 0);
        assert_eq!(r.hottest[0].b, 1);
        assert!(report(&PairCounts::new(1, 4, 2), &[5], 0.1, 10).is_none());
    }
}
