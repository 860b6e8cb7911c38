//! The paper's trace analysis (`moeflow trace analyze`): an [`Analyzer`] folds validated
//! [`TraceItem`]s one at a time, merges with analyzers that folded other parts of the sources
//! (one per thread), and [`Analyzer::finish`] yields an [`AnalysisReport`] that serialises to
//! JSON, renders to Markdown and draws plots ([`write_report`]).
//!
//! Which statistics need per-token data ([`crate::RequestTrace`]) and which work from aggregate
//! counts ([`crate::CountsTrace`], e.g. SGLang's dumps):
//!
//! | family | module | aggregate counts |
//! |---|---|---|
//! | per-layer frequencies, skew (max/mean, Gini), hot experts | [`frequency`] | yes |
//! | prefill vs decode: Spearman/Pearson, top-N coverage | [`compare`] | yes, when both phases are labelled |
//! | per workload: hot sets, their overlap, correlation | [`workload`] | yes |
//! | layer level: P(j at layer l+1 \| i at l), top-20% coverage | [`transition`] | no |
//! | token level: the same for adjacent decode tokens | [`transition`] | no |
//! | co-activation: ratio to the random rate, top-10% share | [`coactivation`] | no |
//!
//! A statistic the data cannot support is `None` (JSON `null`, Markdown "n/a") and the
//! report's `notes` say why; it is never reported as zero.
//!
//! Cost: per-token data is queued per phase ([`AnalyzerConfig::batch_tokens`] tokens) and then
//! applied one matrix at a time, grouped by row, into flat u32 counters that spill into u64
//! before they could overflow; no map lookup per token. Memory is independent of the number of
//! requests: about 75 MB for DeepSeek-V3's 58 layers x 256 experts with every statistic on
//! (E x E per layer pair and phase, per layer and phase for pairs, per layer for adjacent
//! decode tokens), about 0.4 MB per workload label for frequencies. Measured on this project's
//! 2-core machine (`cargo bench -p moeflow-trace --bench analyze`, CPU time): about 3.5 M
//! token-layers per second per core for prefill-heavy requests, 1.9 M for decode-only ones,
//! 30 M with the frequency statistics alone.

mod buffer;
pub mod coactivation;
pub mod compare;
pub mod counters;
pub mod frequency;
mod markdown;
mod plot;
mod report;
pub mod stats;
pub mod transition;
pub mod workload;
mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::load::{LoadSummary, PhaseLoad};
use crate::model::{ModelShape, Phase, RequestTrace, TraceItem, TraceModelError};
use crate::MISSING_EXPERT;
use buffer::TokenBuffer;
use coactivation::PairCounts;
use frequency::HotSpec;
use transition::TransitionCounts;

pub use markdown::render_markdown;
pub use plot::{draw_plots, line_plot};
pub use report::{AnalysisReport, ByPhase, InputSummary, PrefillDecode};
pub use write::write_report;

/// Why an analysis could not be set up, merged or written.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("analyzer config: {0}")]
    Config(String),
    #[error("model shape: {0}")]
    Shape(String),
    #[error("cannot merge analyzers of different model shapes or configs")]
    Mismatch,
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("report JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot {path}: {message}")]
    Plot {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Thresholds and switches. Defaults follow the paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// An expert is hot above this multiple of its layer's mean load.
    pub hot_factor: f64,
    /// Size of the per-layer top list and of the hot sets compared between workloads.
    pub top_n: usize,
    /// Share of candidate experts counted as "top" in the transition statistics.
    pub top_fraction: f64,
    /// Share of expert pairs counted as "top" in the co-activation statistics.
    pub top_pair_fraction: f64,
    /// N of the "top-N decode experts covered by the top-N prefill experts" statistic.
    pub coverage_top_ns: Vec<usize>,
    /// Count co-activated pairs (E(E-1)/2 counters per layer and phase).
    pub coactivation: bool,
    /// Count layer- and token-level transitions (E x E counters per layer pair and phase).
    pub transitions: bool,
    /// How many of the hottest pairs the report lists.
    pub hottest_pairs: usize,
    /// Tokens per phase queued before the per-token counters are updated (see
    /// [`Analyzer::flush`]); results do not depend on it, speed and memory do.
    pub batch_tokens: usize,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        Self {
            hot_factor: 2.0,
            top_n: 10,
            top_fraction: 0.2,
            top_pair_fraction: 0.1,
            coverage_top_ns: vec![5, 10, 20],
            coactivation: true,
            transitions: true,
            hottest_pairs: 20,
            batch_tokens: 4096,
        }
    }
}

impl AnalyzerConfig {
    fn check(&self) -> Result<(), AnalysisError> {
        let frac = |name: &str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(AnalysisError::Config(format!(
                    "{name} {v}: must be in (0, 1]"
                )))
            }
        };
        frac("top_fraction", self.top_fraction)?;
        frac("top_pair_fraction", self.top_pair_fraction)?;
        if !(self.hot_factor.is_finite() && self.hot_factor > 0.0) {
            return Err(AnalysisError::Config(format!(
                "hot_factor {}: must be a positive number",
                self.hot_factor
            )));
        }
        if self.top_n == 0 {
            return Err(AnalysisError::Config("top_n: must be at least 1".into()));
        }
        if self.batch_tokens == 0 {
            return Err(AnalysisError::Config(
                "batch_tokens: must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn hot(&self) -> HotSpec {
        HotSpec {
            factor: self.hot_factor,
            top_n: self.top_n,
        }
    }
}

const PHASES: usize = 2;

/// Mergeable accumulator of every statistic; see the module doc.
#[derive(Debug, Clone)]
pub struct Analyzer {
    shape: ModelShape,
    config: AnalyzerConfig,
    /// Layer id -> index into `shape.moe_layers`, `u32::MAX` for dense layers.
    moe_index: Vec<u32>,
    /// Frequencies per workload label (counts only, no pairs).
    profiles: BTreeMap<Option<String>, LoadSummary>,
    /// Per phase; per-token data only.
    pairs: Option<Vec<PairCounts>>,
    /// Per phase, one slot per consecutive MoE-layer pair.
    layer_transitions: Option<Vec<TransitionCounts>>,
    /// One slot per MoE layer: adjacent decode tokens of one request.
    token_transitions: Option<TransitionCounts>,
    inputs: InputSummary,
    /// Reused grouping space of the batched updates; holds no statistic.
    scratch: counters::RowBatch,
    /// Prefill and decode tokens not yet applied to `pairs` and the transitions.
    buffers: [TokenBuffer; PHASES],
}

impl Analyzer {
    pub fn new(shape: ModelShape, config: AnalyzerConfig) -> Result<Self, AnalysisError> {
        config.check()?;
        if shape.num_experts == 0 || shape.num_experts >= MISSING_EXPERT as usize {
            return Err(AnalysisError::Shape(format!(
                "num_experts {}: must be in 1..{}",
                shape.num_experts, MISSING_EXPERT
            )));
        }
        let mut moe_index = vec![u32::MAX; shape.num_layers];
        for (i, &l) in shape.moe_layers.iter().enumerate() {
            if l >= shape.num_layers {
                return Err(AnalysisError::Shape(format!(
                    "MoE layer {l} beyond num_layers {}",
                    shape.num_layers
                )));
            }
            if i > 0 && shape.moe_layers[i - 1] >= l {
                return Err(AnalysisError::Shape(
                    "moe_layers must be strictly ascending".into(),
                ));
            }
            moe_index[l] = i as u32;
        }
        let (e, n, k) = (shape.num_experts, shape.moe_layers.len(), shape.top_k);
        Ok(Self {
            pairs: config
                .coactivation
                .then(|| (0..PHASES).map(|_| PairCounts::new(n, e, k)).collect()),
            layer_transitions: config.transitions.then(|| {
                (0..PHASES)
                    .map(|_| TransitionCounts::new(n.saturating_sub(1), e, k))
                    .collect()
            }),
            token_transitions: config.transitions.then(|| TransitionCounts::new(n, e, k)),
            moe_index,
            profiles: BTreeMap::new(),
            inputs: InputSummary::default(),
            scratch: counters::RowBatch::default(),
            buffers: [TokenBuffer::new(n, k), TokenBuffer::new(n, k)],
            shape,
            config,
        })
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Folds one item in after checking it against the shape; a bad item changes nothing.
    pub fn add(&mut self, item: &TraceItem) -> Result<(), TraceModelError> {
        item.validate(&self.shape)?;
        let label = item.workload().map(str::to_owned);
        let profile = match self.profiles.get_mut(&label) {
            Some(p) => p,
            None => self
                .profiles
                .entry(label)
                .or_insert_with(|| LoadSummary::new(self.shape.clone(), false)),
        };
        profile.add_validated(item);
        match item {
            TraceItem::Counts(_) => self.inputs.counts_items += 1,
            TraceItem::Request(r) => {
                self.inputs.requests += 1;
                self.add_request(r);
            }
        }
        Ok(())
    }

    /// Queues a request's tokens for the per-token statistics; applied in batches.
    fn add_request(&mut self, r: &RequestTrace) {
        for it in &r.iterations {
            let tokens = it.num_tokens() as u64;
            match it.phase {
                Phase::Prefill => self.inputs.prefill_tokens += tokens,
                Phase::Decode => self.inputs.decode_tokens += tokens,
            }
        }
        if self.pairs.is_none() && self.layer_transitions.is_none() {
            return;
        }
        let moe = &self.moe_index;
        let slot = |layer: u32| match moe.get(layer as usize) {
            Some(&i) if i != u32::MAX => Some(i as usize),
            _ => None,
        };
        let mut prev_decode = false;
        for it in &r.iterations {
            let decode = it.phase == Phase::Decode;
            self.buffers[usize::from(decode)].push(it, slot, decode && prev_decode);
            // An iteration without tokens is not buffered: the next one follows nothing.
            prev_decode = decode && it.num_tokens() > 0;
        }
        if self
            .buffers
            .iter()
            .any(|b| b.tokens() >= self.config.batch_tokens)
        {
            self.flush();
        }
    }

    /// Applies the queued tokens to the per-token counters, one matrix at a time. [`Analyzer::add`]
    /// does this every few thousand tokens and the report does it at the end; call it to time
    /// or to bound the work done so far.
    pub fn flush(&mut self) {
        let scratch = &mut self.scratch;
        let n = self.shape.moe_layers.len();
        for (p, buf) in self.buffers.iter().enumerate() {
            let tokens = buf.tokens();
            if tokens == 0 {
                continue;
            }
            if let Some(pairs) = &mut self.pairs {
                for m in 0..n {
                    pairs[p].add_batch(m, tokens, |t| buf.sel(m, t), scratch);
                }
            }
            if let Some(lt) = &mut self.layer_transitions {
                for m in 0..n.saturating_sub(1) {
                    lt[p].add_batch(m, tokens, |t| (buf.sel(m, t), buf.sel(m + 1, t)), scratch);
                }
            }
            if p == 1 {
                if let Some(tt) = &mut self.token_transitions {
                    let next = buf.followers();
                    for m in 0..n {
                        tt.add_batch(
                            m,
                            next.len(),
                            |i| (buf.sel(m, next[i] - 1), buf.sel(m, next[i])),
                            scratch,
                        );
                    }
                }
            }
        }
        self.buffers.iter_mut().for_each(TokenBuffer::clear);
    }

    fn pending(&self) -> bool {
        self.buffers.iter().any(|b| b.tokens() > 0)
    }

    /// Adds what another analyzer (same shape and config) folded.
    pub fn merge(&mut self, other: &Analyzer) -> Result<(), AnalysisError> {
        if self.shape != other.shape || self.config != other.config {
            return Err(AnalysisError::Mismatch);
        }
        if other.pending() {
            let mut flushed = other.clone();
            flushed.flush();
            return self.merge(&flushed);
        }
        for (label, summary) in &other.profiles {
            match self.profiles.get_mut(label) {
                Some(s) => s.merge(summary),
                None => {
                    self.profiles.insert(label.clone(), summary.clone());
                }
            }
        }
        if let (Some(a), Some(b)) = (&mut self.pairs, &other.pairs) {
            a.iter_mut().zip(b).for_each(|(a, b)| a.merge(b));
        }
        if let (Some(a), Some(b)) = (&mut self.layer_transitions, &other.layer_transitions) {
            a.iter_mut().zip(b).for_each(|(a, b)| a.merge(b));
        }
        if let (Some(a), Some(b)) = (&mut self.token_transitions, &other.token_transitions) {
            a.merge(b);
        }
        self.inputs.merge(&other.inputs);
        Ok(())
    }

    /// Every workload's loads merged: what the frequency statistics and the planners use.
    pub fn load_summary(&self) -> LoadSummary {
        let mut all = LoadSummary::new(self.shape.clone(), false);
        for s in self.profiles.values() {
            all.merge(s);
        }
        all
    }

    pub fn finish(mut self) -> AnalysisReport {
        self.flush();
        self.report()
    }

    /// The report of what was folded so far.
    pub fn report(&self) -> AnalysisReport {
        if self.pending() {
            let mut flushed = self.clone();
            flushed.flush();
            return flushed.report();
        }
        let hot = self.config.hot();
        let all = self.load_summary();
        let moe = &self.shape.moe_layers;

        let phase_freq = |phase: Option<Phase>, load: &PhaseLoad| {
            (!load.is_empty()).then(|| frequency::phase_frequencies(phase, load, hot))
        };
        let frequencies = ByPhase {
            all: phase_freq(None, &all.select(None)),
            prefill: phase_freq(Some(Phase::Prefill), &all.prefill),
            decode: phase_freq(Some(Phase::Decode), &all.decode),
        };
        let unphased = phase_freq(None, &all.unphased);

        let layer_pairs: Vec<(usize, usize)> = moe.windows(2).map(|w| (w[0], w[1])).collect();
        let layer_transitions = match &self.layer_transitions {
            Some(lt) => {
                let rep = |t: &TransitionCounts| {
                    transition::report(t, &layer_pairs, self.config.top_fraction)
                };
                let mut both = lt[0].clone();
                both.merge(&lt[1]);
                ByPhase {
                    all: rep(&both),
                    prefill: rep(&lt[0]),
                    decode: rep(&lt[1]),
                }
            }
            None => ByPhase::default(),
        };
        let same_layer: Vec<(usize, usize)> = moe.iter().map(|&l| (l, l)).collect();
        let token_transitions = self
            .token_transitions
            .as_ref()
            .and_then(|t| transition::report(t, &same_layer, self.config.top_fraction));
        let coactivation = match &self.pairs {
            Some(pc) => {
                let rep = |p: &PairCounts| {
                    coactivation::report(
                        p,
                        moe,
                        self.config.top_pair_fraction,
                        self.config.hottest_pairs,
                    )
                };
                let mut both = pc[0].clone();
                both.merge(&pc[1]);
                ByPhase {
                    all: rep(&both),
                    prefill: rep(&pc[0]),
                    decode: rep(&pc[1]),
                }
            }
            None => ByPhase::default(),
        };

        let ns = &self.config.coverage_top_ns;
        let per_workload: Vec<_> = self
            .profiles
            .iter()
            .filter(|(label, _)| label.is_some())
            .filter_map(|(label, s)| compare::compare(label.clone(), &s.prefill, &s.decode, ns))
            .collect();
        let prefill_vs_decode = PrefillDecode {
            mean_spearman: stats::mean_some(per_workload.iter().map(|c| c.mean_spearman)),
            mean_pearson: stats::mean_some(per_workload.iter().map(|c| c.mean_pearson)),
            overall: compare::compare(None, &all.prefill, &all.decode, ns),
            workloads: per_workload,
        };

        let mut profiles = Vec::new();
        let mut loads = Vec::new();
        for (label, s) in &self.profiles {
            for (phase, load) in [
                (Some(Phase::Prefill), &s.prefill),
                (Some(Phase::Decode), &s.decode),
                (None, &s.unphased),
            ] {
                if !load.is_empty() {
                    profiles.push(workload::profile(label.clone(), phase, load, hot));
                    loads.push(load);
                }
            }
        }
        let mut pairs = Vec::new();
        for a in 0..loads.len() {
            for b in a + 1..loads.len() {
                pairs.push(workload::pair(
                    (a, loads[a]),
                    (b, loads[b]),
                    self.config.top_n,
                ));
            }
        }

        let mut inputs = self.inputs.clone();
        inputs.workloads = self.profiles.keys().flatten().cloned().collect();
        let mut report = AnalysisReport {
            shape: self.shape.clone(),
            config: self.config.clone(),
            inputs,
            frequencies,
            unphased,
            layer_transitions,
            token_transitions,
            prefill_vs_decode,
            coactivation,
            workloads: workload::WorkloadReport {
                top_n: self.config.top_n,
                profiles,
                pairs,
            },
            notes: Vec::new(),
        };
        report.notes = report::notes(&report);
        report
    }
}

#[cfg(test)]
mod tests;
