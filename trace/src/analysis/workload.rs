//! Per workload label (task, language, benchmark): the hot set of each layer, and how similar
//! workloads are to each other (paper observation 4: hot sets shift with task and language).
//! Works from counts alone.

use serde::{Deserialize, Serialize};

use super::frequency::{layer_frequency, summarize, HotSpec, SkewSummary};
use super::stats::{jaccard, mean_some, pearson, pearson_counts, spearman_counts, top_n};
use crate::load::PhaseLoad;
use crate::Phase;

/// The frequencies of one workload label in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadProfile {
    /// `None`: items without a label.
    pub workload: Option<String>,
    /// `None`: aggregate counts that did not say their phase.
    pub phase: Option<Phase>,
    pub per_token: bool,
    pub aggregate: bool,
    /// (token, expert) selections over all layers.
    pub selections: u64,
    pub skew: SkewSummary,
    /// Top-N experts per MoE layer (empty for a layer without data).
    pub hot_sets: Vec<Vec<u16>>,
}

/// Similarity of two profiles, averaged over the MoE layers both have data for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfilePair {
    /// Indices into [`WorkloadReport::profiles`].
    pub a: usize,
    pub b: usize,
    /// Jaccard overlap of the top-N hot sets.
    pub mean_jaccard: Option<f64>,
    pub mean_pearson: Option<f64>,
    pub mean_spearman: Option<f64>,
    /// Pearson of the whole (layer, expert) share vectors, each layer normalised to sum 1.
    pub pooled_pearson: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub top_n: usize,
    pub profiles: Vec<WorkloadProfile>,
    /// Every pair of profiles.
    pub pairs: Vec<ProfilePair>,
}

pub fn profile(
    workload: Option<String>,
    phase: Option<Phase>,
    load: &PhaseLoad,
    hot: HotSpec,
) -> WorkloadProfile {
    let freqs: Vec<_> = load
        .layers
        .iter()
        .map(|l| layer_frequency(l.layer, &l.counts, hot))
        .collect();
    WorkloadProfile {
        workload,
        phase,
        per_token: load.per_token,
        aggregate: load.aggregate,
        selections: load.layers.iter().map(|l| l.total()).sum(),
        skew: summarize(&freqs),
        hot_sets: freqs.into_iter().map(|f| f.top).collect(),
    }
}

fn shares(load: &PhaseLoad) -> Vec<f64> {
    let mut out = Vec::new();
    for l in &load.layers {
        let total = l.total().max(1) as f64;
        out.extend(l.counts.iter().map(|&c| c as f64 / total));
    }
    out
}

pub fn pair(a: (usize, &PhaseLoad), b: (usize, &PhaseLoad), top_n_size: usize) -> ProfilePair {
    let (mut jac, mut pear, mut spear) = (Vec::new(), Vec::new(), Vec::new());
    for (x, y) in a.1.layers.iter().zip(&b.1.layers) {
        if x.total() == 0 || y.total() == 0 {
            continue;
        }
        jac.push(jaccard(
            &top_n(&x.counts, top_n_size),
            &top_n(&y.counts, top_n_size),
        ));
        pear.push(pearson_counts(&x.counts, &y.counts));
        spear.push(spearman_counts(&x.counts, &y.counts));
    }
    ProfilePair {
        a: a.0,
        b: b.0,
        mean_jaccard: mean_some(jac),
        mean_pearson: mean_some(pear),
        mean_spearman: mean_some(spear),
        pooled_pearson: pearson(&shares(a.1), &shares(b.1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rows: &[&[u64]]) -> PhaseLoad {
        PhaseLoad::from_rows(rows)
    }

    #[test]
    fn overlap_of_hot_sets() {
        let a = load(&[&[9, 8, 1, 1], &[0; 4]]);
        let b = load(&[&[9, 1, 8, 1], &[1, 1, 1, 1]]);
        let p = pair((0, &a), (1, &b), 2);
        // {0,1} vs {0,2}: 1 / 3; the second layer is skipped (no data in `a`).
        assert!((p.mean_jaccard.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!(p.mean_pearson.unwrap() < 0.5);
        let same = pair((0, &a), (0, &a), 2);
        assert_eq!(same.mean_jaccard, Some(1.0));
        assert!((same.pooled_pearson.unwrap() - 1.0).abs() < 1e-12);
        let spec = HotSpec {
            factor: 2.0,
            top_n: 2,
        };
        let prof = profile(Some("w".into()), Some(Phase::Prefill), &a, spec);
        assert_eq!(prof.hot_sets, vec![vec![0, 1], vec![]]);
        assert_eq!(prof.selections, 19);
    }
}
