//! The report every output (JSON, Markdown, plots) is made from.

use serde::{Deserialize, Serialize};

use super::coactivation::CoactivationReport;
use super::compare::PhaseComparison;
use super::frequency::PhaseFrequencies;
use super::transition::TransitionReport;
use super::workload::WorkloadReport;
use super::AnalyzerConfig;
use crate::ModelShape;

/// A statistic for all data, prefill only and decode only; `None` where that part has no
/// data able to support it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ByPhase<T> {
    pub all: Option<T>,
    pub prefill: Option<T>,
    pub decode: Option<T>,
}

impl<T> Default for ByPhase<T> {
    fn default() -> Self {
        Self {
            all: None,
            prefill: None,
            decode: None,
        }
    }
}

/// What was folded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSummary {
    /// Per-token items.
    pub requests: u64,
    /// Aggregate-count items.
    pub counts_items: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    /// The workload labels seen, sorted.
    pub workloads: Vec<String>,
}

impl InputSummary {
    pub(crate) fn merge(&mut self, other: &InputSummary) {
        self.requests += other.requests;
        self.counts_items += other.counts_items;
        self.prefill_tokens += other.prefill_tokens;
        self.decode_tokens += other.decode_tokens;
    }
}

/// Prefill against decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillDecode {
    /// Mean over the workloads that have both phases of their per-layer mean Spearman and
    /// Pearson: the comparison the paper makes (same workload, two phases).
    pub mean_spearman: Option<f64>,
    pub mean_pearson: Option<f64>,
    /// All prefill data against all decode data, labels ignored.
    pub overall: Option<PhaseComparison>,
    /// One per workload label with both phases.
    pub workloads: Vec<PhaseComparison>,
}

/// Everything `moeflow trace analyze` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisReport {
    pub shape: ModelShape,
    pub config: AnalyzerConfig,
    pub inputs: InputSummary,
    /// Per-layer frequencies and skew. `all` includes unphased aggregate counts.
    pub frequencies: ByPhase<PhaseFrequencies>,
    /// Aggregate counts that did not say their phase, on their own.
    pub unphased: Option<PhaseFrequencies>,
    /// P(j at the next MoE layer | i at this one) (per-token data only).
    pub layer_transitions: ByPhase<TransitionReport>,
    /// P(j at the next decode token | i at this one), same layer (per-token decode data only).
    pub token_transitions: Option<TransitionReport>,
    pub prefill_vs_decode: PrefillDecode,
    /// Pair co-activation (per-token data only).
    pub coactivation: ByPhase<CoactivationReport>,
    pub workloads: WorkloadReport,
    /// Why statistics are missing.
    pub notes: Vec<String>,
}

pub(crate) fn notes(r: &AnalysisReport) -> Vec<String> {
    let mut n = Vec::new();
    if r.inputs.requests == 0 && r.inputs.counts_items == 0 {
        n.push("no trace item was analysed".into());
        return n;
    }
    if r.inputs.requests == 0 {
        n.push(
            "the sources hold aggregate counts only: layer-level, token-level and co-activation \
             statistics need per-token data and are not available"
                .into(),
        );
    } else {
        if !r.config.transitions {
            n.push("transition statistics were turned off".into());
        } else if r.token_transitions.is_none() {
            n.push(
                "no request has two adjacent decode steps: token-level statistics are not \
                 available"
                    .into(),
            );
        }
        if !r.config.coactivation {
            n.push("co-activation statistics were turned off".into());
        }
        if r.shape.top_k < 2 {
            n.push("top-1 routing has no co-activated pairs".into());
        }
        if r.inputs.counts_items > 0 {
            n.push(
                "aggregate counts contribute to frequencies only; per-token statistics come \
                 from the per-token items alone"
                    .into(),
            );
        }
    }
    if r.prefill_vs_decode.overall.is_none() {
        n.push("prefill against decode needs data of both phases: not available".into());
    } else if r.prefill_vs_decode.workloads.is_empty() {
        n.push(
            "no workload label has data of both phases: the prefill/decode comparison pools \
             all data"
                .into(),
        );
    }
    for t in &r.config.coverage_top_ns {
        if *t >= r.shape.num_experts {
            n.push(format!(
                "top-{t} coverage is not available: the model has only {} experts",
                r.shape.num_experts
            ));
        }
    }
    n
}
