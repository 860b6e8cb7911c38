//! Per-layer expert frequencies and their skew (paper observation 4). Works from counts alone,
//! so aggregate sources support it.

use serde::{Deserialize, Serialize};

use super::stats::{gini, max_over_mean, mean_some, top_n};
use crate::load::PhaseLoad;

/// Frequencies and skew of one MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerFrequency {
    pub layer: usize,
    /// (token, expert) selections per expert.
    pub counts: Vec<u64>,
    pub total: u64,
    /// Hottest expert's load over the mean load; `None` when the layer saw no selection.
    pub max_over_mean: Option<f64>,
    pub gini: Option<f64>,
    /// Experts above `hot_factor` times the mean load, hottest first.
    pub hot: Vec<u16>,
    /// The `top_n` hottest experts, hottest first.
    pub top: Vec<u16>,
}

/// Skew over all layers of one phase (or one workload in one phase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkewSummary {
    /// Layers that saw any selection.
    pub layers: usize,
    pub mean_max_over_mean: Option<f64>,
    /// The layer whose hottest expert is hottest relative to its mean, and that ratio.
    pub worst_layer: Option<usize>,
    pub worst_max_over_mean: Option<f64>,
    pub mean_gini: Option<f64>,
    /// Mean number of experts above the hot threshold per layer.
    pub mean_hot_experts: Option<f64>,
}

/// Frequencies of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseFrequencies {
    /// `None`: aggregate counts that did not say their phase.
    pub phase: Option<crate::Phase>,
    /// Whether per-token data contributed (then `tokens` are known).
    pub per_token: bool,
    /// Whether aggregate counts contributed.
    pub aggregate: bool,
    pub layers: Vec<LayerFrequency>,
    pub summary: SkewSummary,
}

/// Hot-expert thresholds shared by every frequency statistic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HotSpec {
    /// An expert is hot above this multiple of its layer's mean load.
    pub factor: f64,
    /// Size of the per-layer top list (and of the hot sets compared between workloads).
    pub top_n: usize,
}

pub fn layer_frequency(layer: usize, counts: &[u64], hot: HotSpec) -> LayerFrequency {
    let total: u64 = counts.iter().sum();
    let top = if total == 0 {
        Vec::new()
    } else {
        top_n(counts, hot.top_n)
    };
    let hot_list = if total == 0 {
        Vec::new()
    } else {
        let threshold = hot.factor * total as f64 / counts.len() as f64;
        let mut h: Vec<u16> = top_n(counts, counts.len());
        h.retain(|&e| counts[e as usize] as f64 > threshold);
        h
    };
    LayerFrequency {
        layer,
        counts: counts.to_vec(),
        total,
        max_over_mean: max_over_mean(counts),
        gini: gini(counts),
        hot: hot_list,
        top,
    }
}

pub fn summarize(layers: &[LayerFrequency]) -> SkewSummary {
    let live: Vec<&LayerFrequency> = layers.iter().filter(|l| l.total > 0).collect();
    let worst = live
        .iter()
        .filter_map(|l| l.max_over_mean.map(|m| (l.layer, m)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    SkewSummary {
        layers: live.len(),
        mean_max_over_mean: mean_some(live.iter().map(|l| l.max_over_mean)),
        worst_layer: worst.map(|w| w.0),
        worst_max_over_mean: worst.map(|w| w.1),
        mean_gini: mean_some(live.iter().map(|l| l.gini)),
        mean_hot_experts: mean_some(live.iter().map(|l| Some(l.hot.len() as f64))),
    }
}

pub fn phase_frequencies(
    phase: Option<crate::Phase>,
    load: &PhaseLoad,
    hot: HotSpec,
) -> PhaseFrequencies {
    let layers: Vec<LayerFrequency> = load
        .layers
        .iter()
        .map(|l| layer_frequency(l.layer, &l.counts, hot))
        .collect();
    PhaseFrequencies {
        phase,
        per_token: load.per_token,
        aggregate: load.aggregate,
        summary: summarize(&layers),
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_and_top_lists() {
        let spec = HotSpec {
            factor: 2.0,
            top_n: 2,
        };
        // mean 5: expert 2 (20) and 0 (11) are above 10.
        let f = layer_frequency(7, &[11, 1, 20, 0, 1, 1, 1, 5], spec);
        assert_eq!(f.hot, vec![2, 0]);
        assert_eq!(f.top, vec![2, 0]);
        assert_eq!(f.max_over_mean, Some(4.0));
        let empty = layer_frequency(8, &[0; 8], spec);
        assert!(empty.hot.is_empty() && empty.top.is_empty());
        assert_eq!(empty.max_over_mean, None);
        let s = summarize(&[f, empty]);
        assert_eq!(s.layers, 1);
        assert_eq!(s.worst_layer, Some(7));
        assert_eq!(s.mean_max_over_mean, Some(4.0));
    }
}
