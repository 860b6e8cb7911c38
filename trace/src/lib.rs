//! Expert-selection traces: which routed experts every token selected, at every MoE layer,
//! in prefill and in each decode step.
//!
//! One trace model ([`TraceItem`]) serves every source and every consumer: the readers of the
//! paper's JSON tree, SGLang's expert-count dumps, JSONL routing logs and moeflow's binary
//! format all produce it; the analysis, the placement planners and the evaluators consume it.
//! Per-token items ([`RequestTrace`]) support every statistic; aggregate items
//! ([`CountsTrace`]) support only the frequency ones, and consumers must say "not available"
//! for the rest rather than report zero.
//!
//! [`analysis`] computes the paper's observations from any mix of sources (its module doc
//! lists which statistics need per-token data); [`synth`] generates seeded traces whose skew,
//! correlations, co-activation, phase drift and workload mix are set by knobs. [`fold`] maps
//! one model's expert counts onto another model's shape (a small model replaying or planning
//! for a large one's load).

pub mod analysis;
pub mod fold;
pub mod io;
mod load;
mod model;
pub mod source;
pub mod synth;

pub use analysis::{write_report, AnalysisError, AnalysisReport, Analyzer, AnalyzerConfig};
pub use fold::{fold_counts, FoldError};
pub use io::binary::{BinaryReader, BinaryWriter, RawBlock};
pub use io::paper::{PaperTreeWriter, PaperWrite};
pub use io::{FormatError, WriteError};
pub use load::{LayerLoad, LoadSummary, PhaseLoad};
pub use model::{
    CountsTrace, Iteration, LayerRouting, ModelShape, Phase, RequestTrace, TraceItem,
    TraceModelError, MISSING_EXPERT,
};
pub use source::{open, Format, Origin, ReadOptions, ReadReport, Skipped, Source, SourceError};
pub use synth::{SynthConfig, SynthError, SynthGenerator, SynthWorkload};
