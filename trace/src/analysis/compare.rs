//! Prefill against decode (paper observation 3): per MoE layer, the rank (Spearman) and linear
//! (Pearson) correlation of expert frequencies, and how many of the top decode experts are
//! among the top prefill experts. Works from counts alone.

use serde::{Deserialize, Serialize};

use super::stats::{mean_some, pearson_counts, spearman_counts, top_n};
use crate::load::PhaseLoad;

/// Of the top-`n` decode experts, the share that is also among the top-`n` prefill experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopCoverage {
    pub n: usize,
    /// `None` when the layer has no data in a phase, or `n` is not below the expert count
    /// (the share would be 1 by construction).
    pub share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerComparison {
    pub layer: usize,
    pub spearman: Option<f64>,
    pub pearson: Option<f64>,
    pub coverage: Vec<TopCoverage>,
}

/// Prefill against decode for one workload label, or for all data pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseComparison {
    /// `None`: every item pooled, labels ignored.
    pub workload: Option<String>,
    pub mean_spearman: Option<f64>,
    pub min_spearman: Option<f64>,
    /// Share of compared layers whose Spearman is at least 0.7 (the paper: "mostly").
    pub share_spearman_ge_0_7: Option<f64>,
    pub mean_pearson: Option<f64>,
    pub mean_coverage: Vec<TopCoverage>,
    pub layers: Vec<LayerComparison>,
}

fn top_coverage(prefill: &[u64], decode: &[u64], n: usize) -> Option<f64> {
    let live = |c: &[u64]| c.iter().any(|&x| x > 0);
    if n == 0 || n >= prefill.len() || !live(prefill) || !live(decode) {
        return None;
    }
    let p = top_n(prefill, n);
    let d = top_n(decode, n);
    Some(d.iter().filter(|e| p.contains(e)).count() as f64 / n as f64)
}

/// `None` when either phase has no data.
pub fn compare(
    workload: Option<String>,
    prefill: &PhaseLoad,
    decode: &PhaseLoad,
    top_ns: &[usize],
) -> Option<PhaseComparison> {
    if prefill.is_empty() || decode.is_empty() {
        return None;
    }
    let layers: Vec<LayerComparison> = prefill
        .layers
        .iter()
        .zip(&decode.layers)
        .map(|(p, d)| LayerComparison {
            layer: p.layer,
            spearman: spearman_counts(&p.counts, &d.counts),
            pearson: pearson_counts(&p.counts, &d.counts),
            coverage: top_ns
                .iter()
                .map(|&n| TopCoverage {
                    n,
                    share: top_coverage(&p.counts, &d.counts, n),
                })
                .collect(),
        })
        .collect();
    let spearmans: Vec<f64> = layers.iter().filter_map(|l| l.spearman).collect();
    let mean_coverage = top_ns
        .iter()
        .enumerate()
        .map(|(k, &n)| TopCoverage {
            n,
            share: mean_some(layers.iter().map(|l| l.coverage[k].share)),
        })
        .collect();
    Some(PhaseComparison {
        workload,
        mean_spearman: mean_some(spearmans.iter().map(|&s| Some(s))),
        min_spearman: spearmans.iter().copied().min_by(f64::total_cmp),
        share_spearman_ge_0_7: (!spearmans.is_empty()).then(|| {
            spearmans.iter().filter(|&&s| s >= 0.7).count() as f64 / spearmans.len() as f64
        }),
        mean_pearson: mean_some(layers.iter().map(|l| l.pearson)),
        mean_coverage,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(rows: &[&[u64]]) -> PhaseLoad {
        PhaseLoad::from_rows(rows)
    }

    #[test]
    fn identical_and_reversed_layers() {
        let p = phase(&[&[1, 2, 3, 4, 5, 6], &[1, 2, 3, 4, 5, 6], &[0; 6]]);
        let d = phase(&[&[2, 4, 6, 8, 10, 12], &[6, 5, 4, 3, 2, 1], &[1; 6]]);
        let c = compare(Some("w".into()), &p, &d, &[2, 6]).unwrap();
        assert!((c.layers[0].spearman.unwrap() - 1.0).abs() < 1e-12);
        assert!((c.layers[1].spearman.unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(c.layers[2].spearman, None);
        assert_eq!(c.layers[0].coverage[0].share, Some(1.0));
        assert_eq!(c.layers[1].coverage[0].share, Some(0.0));
        assert_eq!(c.layers[0].coverage[1].share, None);
        assert_eq!(c.mean_coverage[0].share, Some(0.5));
        assert_eq!(c.share_spearman_ge_0_7, Some(0.5));
        assert!(compare(None, &p, &phase(&[&[0; 6]]), &[2]).is_none());
    }
}
