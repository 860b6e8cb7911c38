//! One entry point for every trace format: [`open`] detects the format of a file or a
//! directory tree, determines the [`ModelShape`] (and says where each part of it came from),
//! and [`Source::fold`] streams the items over worker threads. Every item is validated
//! against the shape before a consumer sees it; a bad file, block or request is reported in
//! [`ReadReport::skipped`] with its path and reason, never counted, never a panic.
//!
//! Threads: one reader thread walks the files (and tar.gz archives and binary blocks) and
//! hands raw bytes over a bounded channel to `threads` workers that parse, validate and fold,
//! so memory stays at a few files per thread whatever the number of requests.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::io::binary::{self, BinaryReader, RawBlock};
use crate::io::jsonl::{self, RowGroup};
use crate::io::known_models::{self, KnownModel};
use crate::io::paper::{self, TreeLabels};
use crate::io::{sglang, FormatError};
use crate::model::{ModelShape, Phase, TraceItem, MISSING_EXPERT};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Paper,
    TarGz,
    Counts,
    Jsonl,
    Binary,
}

impl Kind {
    fn format(self) -> Format {
        match self {
            Kind::Paper | Kind::TarGz => Format::PaperTree,
            Kind::Counts => Format::SglangCounts,
            Kind::Jsonl => Format::Jsonl,
            Kind::Binary => Format::Binary,
        }
    }
}

#[derive(Debug, Clone)]
struct Unit {
    path: PathBuf,
    /// Components below the root (the file name included).
    rel: Vec<String>,
    kind: Kind,
    size: u64,
}

impl Unit {
    fn rel_str(&self) -> String {
        self.rel.join("/")
    }
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
    units: Vec<Unit>,
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

fn classify(path: &Path) -> std::io::Result<Option<Kind>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        return Ok(Some(Kind::TarGz));
    }
    if name.ends_with(".tmp") {
        return Ok(None);
    }
    let mut prefix = [0u8; 256];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < prefix.len() {
        let k = f.read(&mut prefix[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let prefix = &prefix[..n];
    if binary::sniff(prefix) {
        return Ok(Some(Kind::Binary));
    }
    if name.ends_with(".jsonl") {
        return Ok(Some(Kind::Jsonl));
    }
    if name.ends_with(".json") {
        if sglang::sniff(prefix) {
            return Ok(Some(Kind::Counts));
        }
        if prefix.trim_ascii_start().starts_with(b"{") {
            return Ok(Some(Kind::Jsonl));
        }
        return Ok(Some(Kind::Paper));
    }
    Ok(None)
}

fn walk(dir: &Path, rel: &mut Vec<String>, out: &mut Vec<Unit>) -> Result<(), SourceError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let ft = std::fs::metadata(&path).map_err(io_err(&path))?;
        rel.push(name);
        if ft.is_dir() {
            walk(&path, rel, out)?;
        } else if let Some(kind) = classify(&path).map_err(io_err(&path))? {
            out.push(Unit {
                path: path.clone(),
                rel: rel.clone(),
                kind,
                size: ft.len(),
            });
        } else {
            tracing::debug!(path = %path.display(), "not a trace file, ignored");
        }
        rel.pop();
    }
    Ok(())
}

/// Path components of the root (the last four), for the tree labels.
fn root_components(root: &Path) -> Vec<String> {
    let abs = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let comps: Vec<String> = abs
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    comps[comps.len().saturating_sub(4)..].to_vec()
}

/// The binary file of a recording directory (`io::recording`): `dir` holds a moeflow binary
/// `trace.mfbin` and a `paper/` folder; anything else in `dir` is not part of the recording
/// and makes it an ordinary directory.
fn recording_binary(dir: &Path, meta: &std::fs::Metadata) -> Result<Option<Unit>, SourceError> {
    use crate::io::recording::{BINARY_FILE, PAPER_DIR};
    if !meta.is_dir() || !dir.join(PAPER_DIR).is_dir() {
        return Ok(None);
    }
    let bin = dir.join(BINARY_FILE);
    let Ok(bin_meta) = std::fs::metadata(&bin) else {
        return Ok(None);
    };
    if !bin_meta.is_file() || classify(&bin).map_err(io_err(&bin))? != Some(Kind::Binary) {
        return Ok(None);
    }
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries {
        let name = e.map_err(io_err(dir))?.file_name();
        let name = name.to_string_lossy();
        if name != PAPER_DIR && name != BINARY_FILE && !name.starts_with('.') {
            return Ok(None);
        }
    }
    Ok(Some(Unit {
        path: bin,
        rel: vec![BINARY_FILE.to_string()],
        kind: Kind::Binary,
        size: bin_meta.len(),
    }))
}

/// Detects the format of `path` (a file or a directory tree) and determines the shape. A
/// moeflow recording directory (`io::recording`) is read through its binary file alone.
pub fn open(path: &Path, opts: &ReadOptions) -> Result<Source, SourceError> {
    if opts.threads == 0 {
        return Err(SourceError::Threads(0));
    }
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let (root, mut units) = if let Some(unit) = recording_binary(path, &meta)? {
        tracing::info!(
            path = %path.display(),
            "a moeflow recording: reading {}, whose requests {}/ repeats in the paper's layout",
            crate::io::recording::BINARY_FILE,
            crate::io::recording::PAPER_DIR,
        );
        (path.to_path_buf(), vec![unit])
    } else if meta.is_dir() {
        let mut units = Vec::new();
        walk(path, &mut Vec::new(), &mut units)?;
        (path.to_path_buf(), units)
    } else {
        let kind = classify(path).map_err(io_err(path))?.unwrap_or(Kind::Paper);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let unit = Unit {
            path: path.to_path_buf(),
            rel: vec![name],
            kind,
            size: meta.len(),
        };
        (root, vec![unit])
    };
    if units.is_empty() {
        return Err(SourceError::Empty {
            path: path.to_path_buf(),
        });
    }
    // The format most files have: a stray or damaged file (which may sniff as another
    // format) is skipped with its reason instead of deciding the format of the tree.
    let mut tally: Vec<(Format, usize)> = Vec::new();
    for u in &units {
        let f = u.kind.format();
        match tally.iter_mut().find(|(g, _)| *g == f) {
            Some((_, n)) => *n += 1,
            None => tally.push((f, 1)),
        }
    }
    let format = tally
        .iter()
        .fold(tally[0], |best, &t| if t.1 > best.1 { t } else { best })
        .0;
    let mut pre_skipped = Vec::new();
    units.retain(|u| {
        let keep = u.kind.format() == format;
        if !keep {
            pre_skipped.push(Skipped {
                path: u.rel_str(),
                reason: format!(
                    "a {} file in a {} source",
                    u.kind.format().as_str(),
                    format.as_str()
                ),
            });
        }
        keep
    });
    let root_components = root_components(&root);
    let mut src = Source {
        path: path.to_path_buf(),
        format,
        shape: ModelShape {
            model: None,
            num_layers: 0,
            num_experts: 0,
            top_k: 0,
            moe_layers: Vec::new(),
        },
        num_experts_origin: Origin::Unknown,
        top_k_origin: Origin::Unknown,
        org_model: None,
        root_components,
        total_bytes: units.iter().map(|u| u.size).sum(),
        units,
        pre_skipped,
        opts: opts.clone(),
    };
    match format {
        Format::Binary => src.shape_from_binary()?,
        Format::SglangCounts => src.shape_from_counts()?,
        Format::Jsonl => src.shape_from_jsonl()?,
        Format::PaperTree => src.shape_from_paper()?,
    }
    tracing::info!(
        path = %path.display(),
        format = format.as_str(),
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

fn known_for(path: &Path, org_model: Option<&str>) -> Option<&'static KnownModel> {
    org_model
        .and_then(|m| m.rsplit('/').next())
        .and_then(known_models::lookup)
        .or_else(|| known_models::find_in_path(path))
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

    fn shape_err(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Shape {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn shape_from_binary(&mut self) -> Result<(), SourceError> {
        let u = &self.units[0];
        let r = BinaryReader::open(&u.path).map_err(|source| SourceError::Format {
            path: u.path.clone(),
            source,
        })?;
        self.shape = r.shape().clone();
        self.num_experts_origin = Origin::Data;
        self.top_k_origin = Origin::Data;
        Ok(())
    }

    fn take_options(
        &mut self,
        known: Option<&'static KnownModel>,
        k_data: Option<usize>,
        e_data: Option<usize>,
    ) {
        if let Some(e) = self.opts.num_experts {
            self.shape.num_experts = e;
            self.num_experts_origin = Origin::Options;
        } else if let Some(e) = e_data {
            self.shape.num_experts = e;
            self.num_experts_origin = Origin::Data;
        } else if let Some(m) = known {
            self.shape.num_experts = m.num_experts;
            self.num_experts_origin = Origin::KnownModel(m.name);
        }
        if let Some(k) = self.opts.top_k {
            self.shape.top_k = k;
            self.top_k_origin = Origin::Options;
        } else if let Some(k) = k_data {
            self.shape.top_k = k;
            self.top_k_origin = Origin::Data;
        } else if let Some(m) = known {
            self.shape.top_k = m.top_k;
            self.top_k_origin = Origin::KnownModel(m.name);
        }
        if self.shape.model.is_none() {
            self.shape.model = known.map(|m| m.name.to_string());
        }
    }

    fn shape_from_counts(&mut self) -> Result<(), SourceError> {
        let u = self.units[0].clone();
        let bytes = std::fs::read(&u.path).map_err(io_err(&u.path))?;
        let c = sglang::parse(&bytes, u.rel_str(), None, None).map_err(|source| {
            SourceError::Format {
                path: u.path.clone(),
                source,
            }
        })?;
        self.shape.num_layers = c.counts.len();
        self.shape.moe_layers = (0..c.counts.len())
            .filter(|&l| c.counts[l].is_some())
            .collect();
        let width = c.counts.iter().flatten().map(Vec::len).next();
        let known = known_models::find_in_path(&u.path);
        self.take_options(known, None, width);
        if self.opts.num_experts.is_some_and(|e| Some(e) != width) {
            return Err(self.shape_err(format!(
                "the option says {} experts, {} lists {:?}",
                self.shape.num_experts,
                u.path.display(),
                width
            )));
        }
        Ok(())
    }

    fn shape_from_jsonl(&mut self) -> Result<(), SourceError> {
        let u = self.units[0].clone();
        let f = File::open(&u.path).map_err(io_err(&u.path))?;
        let (mut max_layer, mut max_e, mut k) = (None::<u32>, 0u16, None);
        let mut layers = std::collections::BTreeSet::new();
        for g in jsonl::Groups::new(BufReader::new(f)).flatten() {
            for r in &g.rows {
                max_layer = max_layer.max(Some(r.layer));
                layers.insert(r.layer as usize);
                k.get_or_insert(r.experts.len());
                max_e = max_e.max(
                    r.experts
                        .iter()
                        .copied()
                        .filter(|&e| e != MISSING_EXPERT)
                        .max()
                        .unwrap_or(0),
                );
            }
        }
        let Some(max_layer) = max_layer else {
            return Err(self.shape_err(format!("{}: no readable rows", u.path.display())));
        };
        let known = known_models::find_in_path(&u.path);
        self.shape.num_layers = known
            .map_or(0, |m| m.num_layers)
            .max(max_layer as usize + 1);
        self.shape.moe_layers = layers.into_iter().collect();
        self.take_options(known, k, None);
        if self.opts.num_experts.is_none() && known.is_none() {
            self.shape.num_experts = max_e as usize + 1;
            self.num_experts_origin = Origin::Scanned { files: 1 };
        }
        Ok(())
    }

    fn shape_from_paper(&mut self) -> Result<(), SourceError> {
        // The first file that parses states the layers and top-k.
        let mut found = None;
        let mut scanned = 0usize;
        let mut max_e = 0u16;
        let mut failures = Vec::new();
        let mut budget = 64u64 << 20;
        let units = self.units.clone();
        'outer: for u in &units {
            let mut visit = |rel: Vec<String>, bytes: Vec<u8>| -> bool {
                let labels = paper::labels(&self.root_components, &rel);
                match paper::parse(&bytes, rel.join("/"), labels.workload.clone(), None) {
                    Ok(doc) => {
                        budget = budget.saturating_sub(bytes.len() as u64);
                        scanned += 1;
                        if found.is_none() {
                            found = Some((doc.clone(), labels.clone(), u.path.clone()));
                        }
                        let same = found
                            .as_ref()
                            .is_some_and(|(_, l, _)| l.org_model == labels.org_model);
                        if same {
                            max_e = max_e.max(
                                doc.request
                                    .iterations
                                    .iter()
                                    .flat_map(|i| i.layers.iter())
                                    .flat_map(|l| l.experts.iter().copied())
                                    .max()
                                    .unwrap_or(0),
                            );
                        }
                    }
                    Err(e) => failures.push(format!("{}: {e}", rel.join("/"))),
                }
                // Keep scanning ids only where the expert count must be inferred.
                found.is_some() && (self.opts.num_experts.is_some() || scanned >= 16 || budget == 0)
            };
            match u.kind {
                Kind::TarGz => {
                    let f = File::open(&u.path).map_err(io_err(&u.path))?;
                    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
                    let Ok(entries) = ar.entries() else { continue };
                    for e in entries {
                        let Ok(mut e) = e else { break };
                        let Some(rel) = tar_rel(&u.rel, &e) else {
                            continue;
                        };
                        let mut b = Vec::new();
                        if e.read_to_end(&mut b).is_err() {
                            break;
                        }
                        if visit(rel, b) {
                            break 'outer;
                        }
                    }
                }
                _ => {
                    let b = std::fs::read(&u.path).map_err(io_err(&u.path))?;
                    if visit(u.rel.clone(), b) {
                        break 'outer;
                    }
                }
            }
            if found.is_none() && failures.len() >= 64 {
                break;
            }
        }
        let Some((doc, labels, first_path)) = found else {
            return Err(self.shape_err(format!(
                "no readable paper JSON file; first failures: {}",
                failures
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        };
        self.org_model = labels.org_model.clone();
        self.shape.model = labels.org_model.clone();
        self.shape.num_layers = doc.num_layers;
        self.shape.moe_layers = doc.moe_layers.clone();
        let known = known_for(&first_path, labels.org_model.as_deref());
        if self.shape.model.is_some() && known.is_some() {
            self.shape.model = known.map(|m| m.name.to_string());
        }
        self.take_options(known, doc.top_k, None);
        if self.opts.num_experts.is_none() && known.is_none() {
            self.shape.num_experts = max_e as usize + 1;
            self.num_experts_origin = Origin::Scanned { files: scanned };
            tracing::warn!(
                num_experts = self.shape.num_experts,
                files = scanned,
                "expert count not stated: inferred as the highest id + 1; pass the expert count to be sure"
            );
        }
        if self.shape.top_k == 0 {
            return Err(self.shape_err("no token states top_k; pass it as an option"));
        }
        Ok(())
    }

    /// Streams every item through `f` on `threads` workers, each with its own accumulator
    /// from `init`; returns the accumulators (merge them) and what was read and skipped.
    pub fn fold<A: Send>(
        &self,
        init: impl Fn() -> A + Sync,
        f: impl Fn(&mut A, TraceItem) + Sync,
    ) -> Result<(Vec<A>, ReadReport), SourceError> {
        let threads = self.opts.threads.max(1);
        let (tx, rx) = sync_channel::<Work>(threads * 4);
        let rx = Mutex::new(rx);
        let skipped = Mutex::new(self.pre_skipped.clone());
        let items = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let pb = (self.opts.progress && std::io::stderr().is_terminal()).then(|| {
            let pb = ProgressBar::new(self.total_bytes);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            ) {
                pb.set_style(style);
            }
            pb
        });
        let skip = |path: String, reason: String| {
            tracing::debug!(%path, %reason, "skipped");
            if let Ok(mut s) = skipped.lock() {
                s.push(Skipped { path, reason });
            }
        };
        let accs = std::thread::scope(|s| {
            let producer = s.spawn(|| {
                let counter = Counter {
                    bytes: &bytes,
                    pb: pb.as_ref(),
                };
                for u in &self.units {
                    if !self.produce(u, &tx, &counter, &skip) {
                        break;
                    }
                }
                drop(tx);
            });
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut acc = init();
                        while let Some(w) = recv(&rx) {
                            let id = w.id();
                            match self.work(w) {
                                Ok(item) => match item.validate(&self.shape) {
                                    Ok(()) => {
                                        items.fetch_add(1, Ordering::Relaxed);
                                        f(&mut acc, item);
                                    }
                                    Err(e) => skip(id, e.to_string()),
                                },
                                Err(reason) => skip(id, reason),
                            }
                        }
                        acc
                    })
                })
                .collect();
            let accs: Vec<A> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
            let _ = producer.join();
            accs
        });
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        if accs.len() != threads {
            return Err(self.shape_err("a worker thread panicked"));
        }
        let report = ReadReport {
            items: items.into_inner(),
            bytes: bytes.into_inner(),
            skipped: skipped.into_inner().unwrap_or_default(),
        };
        Ok((accs, report))
    }

    /// Reads one unit into work; false when the consumers are gone.
    fn produce(
        &self,
        u: &Unit,
        tx: &std::sync::mpsc::SyncSender<Work>,
        counter: &Counter<'_>,
        skip: &(impl Fn(String, String) + Sync),
    ) -> bool {
        let open = || File::open(&u.path).map(|f| Counting { inner: f, counter });
        let file = match open() {
            Ok(f) => f,
            Err(e) => {
                skip(u.rel_str(), format!("I/O: {e}"));
                return true;
            }
        };
        match u.kind {
            Kind::Paper | Kind::Counts => {
                let mut b = Vec::with_capacity(u.size as usize);
                if let Err(e) = BufReader::new(file).read_to_end(&mut b) {
                    skip(u.rel_str(), format!("I/O: {e}"));
                    return true;
                }
                let w = if u.kind == Kind::Paper {
                    Work::Paper {
                        rel: u.rel.clone(),
                        bytes: b,
                    }
                } else {
                    Work::Counts {
                        rel: u.rel.clone(),
                        bytes: b,
                    }
                };
                tx.send(w).is_ok()
            }
            Kind::TarGz => {
                let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
                let entries = match ar.entries() {
                    Ok(e) => e,
                    Err(e) => {
                        skip(u.rel_str(), format!("tar.gz: {e}"));
                        return true;
                    }
                };
                for e in entries {
                    let mut e = match e {
                        Ok(e) => e,
                        Err(e) => {
                            skip(
                                u.rel_str(),
                                format!("tar.gz, rest of the archive not read: {e}"),
                            );
                            return true;
                        }
                    };
                    let Some(rel) = tar_rel(&u.rel, &e) else {
                        continue;
                    };
                    let mut b = Vec::new();
                    if let Err(err) = e.read_to_end(&mut b) {
                        skip(
                            rel.join("/"),
                            format!("tar.gz, rest of the archive not read: {err}"),
                        );
                        return true;
                    }
                    if tx.send(Work::Paper { rel, bytes: b }).is_err() {
                        return false;
                    }
                }
                true
            }
            Kind::Jsonl => {
                for g in jsonl::Groups::new(BufReader::new(file)) {
                    let w = match g {
                        Ok(g) => Work::Jsonl {
                            file: u.rel_str(),
                            group: g,
                        },
                        Err(e) => {
                            skip(u.rel_str(), e.to_string());
                            continue;
                        }
                    };
                    if tx.send(w).is_err() {
                        return false;
                    }
                }
                true
            }
            Kind::Binary => {
                let mut r = match BinaryReader::new(BufReader::with_capacity(1 << 20, file)) {
                    Ok(r) => r,
                    Err(e) => {
                        skip(u.rel_str(), e.to_string());
                        return true;
                    }
                };
                if r.shape() != &self.shape {
                    skip(
                        u.rel_str(),
                        format!(
                            "model shape {:?} differs from the source's {:?}",
                            r.shape(),
                            self.shape
                        ),
                    );
                    return true;
                }
                while let Some(b) = r.next_block() {
                    match b {
                        Ok(block) => {
                            if tx
                                .send(Work::Binary {
                                    file: u.rel_str(),
                                    block,
                                })
                                .is_err()
                            {
                                return false;
                            }
                        }
                        Err(e) => skip(u.rel_str(), e.to_string()),
                    }
                }
                true
            }
        }
    }

    fn work(&self, w: Work) -> Result<TraceItem, String> {
        match w {
            Work::Paper { rel, bytes } => {
                let labels = paper::labels(&self.root_components, &rel);
                self.check_model(&labels)?;
                let doc = paper::parse(
                    &bytes,
                    rel.join("/"),
                    labels.workload,
                    Some(self.shape.top_k),
                )
                .map_err(|e| e.to_string())?;
                doc.check_layout(&self.shape).map_err(|e| e.to_string())?;
                Ok(TraceItem::Request(doc.request))
            }
            Work::Counts { rel, bytes } => {
                let name = rel.last().map(String::as_str).unwrap_or_default();
                let stem = name.strip_suffix(".json").unwrap_or(name);
                let (phase, workload): (Option<Phase>, String) = sglang::labels_from_stem(stem);
                let c = sglang::parse(&bytes, rel.join("/"), Some(workload), phase)
                    .map_err(|e| e.to_string())?;
                if c.counts.len() != self.shape.num_layers {
                    return Err(format!(
                        "{} layers, the source has {}",
                        c.counts.len(),
                        self.shape.num_layers
                    ));
                }
                Ok(TraceItem::Counts(c))
            }
            Work::Jsonl { group, .. } => jsonl::build(&group)
                .map(TraceItem::Request)
                .map_err(|e| e.to_string()),
            Work::Binary { block, .. } => block
                .decode(&self.shape)
                .map(TraceItem::Request)
                .map_err(|e| e.to_string()),
        }
    }

    fn check_model(&self, labels: &TreeLabels) -> Result<(), String> {
        match (&self.org_model, &labels.org_model) {
            (Some(a), Some(b)) if a != b => {
                Err(format!("a file of model `{b}` in a source of model `{a}`"))
            }
            _ => Ok(()),
        }
    }
}

/// Path of a tar entry as if the archive `<subject>.tar.gz` were the folder `<subject>`;
/// `None` for entries that are not JSON files.
fn tar_rel<R: Read>(archive_rel: &[String], e: &tar::Entry<'_, R>) -> Option<Vec<String>> {
    if !e.header().entry_type().is_file() {
        return None;
    }
    let p = e.path().ok()?;
    let name = p.to_string_lossy();
    if !name.ends_with(".json") {
        return None;
    }
    let archive = archive_rel.last()?;
    let subject = archive
        .strip_suffix(".tar.gz")
        .or_else(|| archive.strip_suffix(".tgz"))
        .unwrap_or(archive);
    let mut rel: Vec<String> = archive_rel[..archive_rel.len() - 1].to_vec();
    rel.push(subject.to_string());
    let mut inner: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if inner.len() > 1 && inner[0] == subject {
        inner.remove(0);
    }
    rel.extend(inner);
    Some(rel)
}

enum Work {
    Paper { rel: Vec<String>, bytes: Vec<u8> },
    Counts { rel: Vec<String>, bytes: Vec<u8> },
    Jsonl { file: String, group: RowGroup },
    Binary { file: String, block: RawBlock },
}

impl Work {
    fn id(&self) -> String {
        match self {
            Work::Paper { rel, .. } | Work::Counts { rel, .. } => rel.join("/"),
            Work::Jsonl { file, group } => format!("{file}:{} ({})", group.first_line, group.key),
            Work::Binary { file, block } => format!("{file}@{}", block.offset),
        }
    }
}

fn recv(rx: &Mutex<Receiver<Work>>) -> Option<Work> {
    rx.lock().ok()?.recv().ok()
}

struct Counter<'a> {
    bytes: &'a AtomicU64,
    pb: Option<&'a ProgressBar>,
}

/// Counts the bytes read from a file, for the report and the progress bar.
struct Counting<'a, R> {
    inner: R,
    counter: &'a Counter<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(pb) = self.counter.pb {
            pb.inc(n as u64);
        }
        Ok(n)
    }
}
