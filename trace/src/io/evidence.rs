//! What a format's first files say about the model shape. Each format reads its own evidence
//! (`paper::ShapeScan`, `jsonl::shape_evidence`, `sglang::shape_evidence`); [`crate::source`]
//! weighs it against the caller's options and the known models, so the formats need not know
//! either.

use std::path::PathBuf;

/// The shape facts one format found, before options and known models are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeEvidence {
    /// The file the facts came from; a known model is looked up by its path.
    pub path: PathBuf,
    /// The model the data names (the paper tree's `<org>/<model>` folders).
    pub model: Option<String>,
    pub num_layers: Layers,
    /// Layers that route tokens, ascending.
    pub moe_layers: Vec<usize>,
    /// Routed experts per layer, when the data states it.
    pub num_experts: Option<usize>,
    /// Experts per token, when the data states it.
    pub top_k: Option<usize>,
    /// The highest expert id seen, where the data may be scanned for a lower bound of the
    /// expert count; `None` where it may not.
    pub ids: Option<IdScan>,
}

/// How far the data can be trusted on the layer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// The data lists every layer.
    Stated(usize),
    /// Only layers that routed a token appear (highest + 1); a known model may have more.
    AtLeast(usize),
}

/// The highest expert id in the files scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdScan {
    pub max_expert: u16,
    pub files: usize,
}
