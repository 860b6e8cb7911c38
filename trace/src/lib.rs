//! Expert-selection traces: which routed experts every token selected, at every MoE layer,
//! in prefill and in each decode step.
//!
//! One trace model ([`TraceItem`]) serves every source and every consumer: the readers of the
//! paper's JSON tree, SGLang's expert-count dumps, JSONL routing logs and moeflow's binary
//! format all produce it; the analysis, the placement planners and the evaluators consume it.
//! Per-token items ([`RequestTrace`]) support every statistic; aggregate items
//! ([`CountsTrace`]) support only the frequency ones, and consumers must say "not available"
//! for the rest rather than report zero.

pub mod io;
mod load;
mod model;

pub use io::binary::{BinaryReader, BinaryWriter, RawBlock};
pub use io::paper::{PaperTreeWriter, PaperWrite};
pub use io::{FormatError, WriteError};
pub use load::{LayerLoad, LoadSummary, PhaseLoad};
pub use model::{
    CountsTrace, Iteration, LayerRouting, ModelShape, Phase, RequestTrace, TraceItem,
    TraceModelError, MISSING_EXPERT,
};
