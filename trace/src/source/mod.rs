//! One entry point for every trace format: [`open`] detects the format of a file or a
//! directory tree, determines the [`ModelShape`] (and says where each part of it came from),
//! and [`Source::fold`] streams the items over worker threads. Every item is validated
//! against the shape before a consumer sees it; a bad file, block or request is reported in
//! [`ReadReport::skipped`] with its path and reason, never counted, never a panic.
//!
//! Threads: one reader thread walks the files (and tar.gz archives and binary blocks) and
//! hands raw bytes over a bounded channel to `threads` workers that parse, validate and fold,
//! so memory stays at a few files per thread whatever the number of requests.
//!
//! Layout: `detect` (which files, which format), `shape` (the shape and its origins, from
//! each format's evidence in `io::<format>`), `fold` (the threads), `archive` (tar.gz
//! entries, for both).

mod archive;
mod detect;
mod fold;
mod shape;

use std::path::{Path, PathBuf};

use crate::io::FormatError;
use crate::model::ModelShape;

/// What the caller knows that a format may not state.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Routed experts per layer (the paper's JSON does not say).
    pub num_experts: Option<usize>,
    /// Experts per token (SGLang's counts do not say).
    pub top_k: Option<usize>,
    /// Parsing threads (the reader thread comes on top).
    pub threads: usize,
    /// Show a progress bar on stderr, when it is a terminal.
    pub progress: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            num_experts: None,
            top_k: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: true,
        }
    }
}

/// The formats a source can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The paper's JSON tree (plain files and `<subject>.tar.gz` archives).
    PaperTree,
    /// SGLang `logical_count` dumps.
    SglangCounts,
    /// JSONL routing rows.
    Jsonl,
    /// moeflow's binary format.
    Binary,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::PaperTree => "paper JSON",
            Format::SglangCounts => "SGLang expert counts",
            Format::Jsonl => "JSONL routing rows",
            Format::Binary => "moeflow binary",
        }
    }
}

/// Where one number of the shape came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Stated by the data itself.
    Data,
    /// From [`ReadOptions`].
    Options,
    /// From the built-in table of published models, matched by a path component.
    KnownModel(&'static str),
    /// The highest id seen in the first files, plus one: a lower bound.
    Scanned { files: usize },
    /// Nobody says; the shape holds 0.
    Unknown,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Data => f.write_str("from the data"),
            Origin::Options => f.write_str("from the options"),
            Origin::KnownModel(m) => write!(f, "from the known shape of {m}"),
            Origin::Scanned { files } => {
                write!(
                    f,
                    "highest id + 1 in the first {files} files (a lower bound)"
                )
            }
            Origin::Unknown => f.write_str("unknown"),
        }
    }
}

/// Why a source could not be opened at all (per-file problems are skipped and reported
/// instead).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: no trace files found (looked for .json, .jsonl, .tar.gz and moeflow binary files)"
    )]
    Empty { path: PathBuf },
    #[error("{path}: cannot determine the model shape: {reason}")]
    Shape { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{0} threads: at least one is needed")]
    Threads(usize),
}

/// A file, block or request that was not read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What a [`Source::fold`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Items that passed validation and reached the fold.
    pub items: u64,
    /// Input bytes read (compressed bytes for archives).
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
}

/// An opened trace source.
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
    format: Format,
    shape: ModelShape,
    num_experts_origin: Origin,
    top_k_origin: Origin,
    org_model: Option<String>,
    root_components: Vec<String>,
    units: Vec<detect::Unit>,
    pre_skipped: Vec<Skipped>,
    total_bytes: u64,
    opts: ReadOptions,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SourceError {
    fn shape(path: &Path, reason: impl Into<String>) -> Self {
        SourceError::Shape {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Detects the format of `path` (a file or a directory tree) and determines the shape. A
/// moeflow recording directory (`io::recording`) is read through its binary file alone.
pub fn open(path: &Path, opts: &ReadOptions) -> Result<Source, SourceError> {
    if opts.threads == 0 {
        return Err(SourceError::Threads(0));
    }
    let detected = detect::detect(path)?;
    let root_components = detect::root_components(&detected.root);
    let shaped = shape::infer(
        path,
        detected.format,
        &detected.units,
        &root_components,
        opts,
    )?;
    let src = Source {
        path: path.to_path_buf(),
        format: detected.format,
        shape: shaped.shape,
        num_experts_origin: shaped.num_experts_origin,
        top_k_origin: shaped.top_k_origin,
        org_model: shaped.org_model,
        root_components,
        total_bytes: detected.units.iter().map(|u| u.size).sum(),
        units: detected.units,
        pre_skipped: detected.skipped,
        opts: opts.clone(),
    };
    tracing::info!(
        path = %path.display(),
        format = src.format.as_str(),
        model = src.shape.model.as_deref().unwrap_or("unknown"),
        num_layers = src.shape.num_layers,
        moe_layers = src.shape.moe_layers.len(),
        num_experts = src.shape.num_experts,
        num_experts_origin = %src.num_experts_origin,
        top_k = src.shape.top_k,
        top_k_origin = %src.top_k_origin,
        "opened trace source"
    );
    Ok(src)
}

impl Source {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn format(&self) -> Format {
        self.format
    }
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }
    /// Where `shape().num_experts` came from.
    pub fn num_experts_origin(&self) -> &Origin {
        &self.num_experts_origin
    }
    /// Where `shape().top_k` came from; [`Origin::Unknown`] (top_k 0) for counts nobody
    /// labelled, which per-token consumers must refuse.
    pub fn top_k_origin(&self) -> &Origin {
        &self.top_k_origin
    }
    /// Input bytes of all files, for progress and throughput.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
    /// Number of files (archives and binary files count once).
    pub fn num_files(&self) -> usize {
        self.units.len()
    }
}
