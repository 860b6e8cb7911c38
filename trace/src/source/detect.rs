//! Which files under a path are traces, and in which format: file names and first bytes
//! decide each file's kind, a directory tree is walked in name order, a moeflow recording
//! directory is read through its binary file alone, and the format most files have wins (the
//! others are skipped with their reason).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{io_err, Format, Skipped, SourceError};
use crate::io::{binary, sglang};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Paper,
    TarGz,
    Counts,
    Jsonl,
    Binary,
}

impl Kind {
    pub(super) fn format(self) -> Format {
        match self {
            Kind::Paper | Kind::TarGz => Format::PaperTree,
            Kind::Counts => Format::SglangCounts,
            Kind::Jsonl => Format::Jsonl,
            Kind::Binary => Format::Binary,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub(super) path: PathBuf,
    /// Components below the root (the file name included).
    pub(super) rel: Vec<String>,
    pub(super) kind: Kind,
    pub(super) size: u64,
}

impl Unit {
    pub(super) fn rel_str(&self) -> String {
        self.rel.join("/")
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
pub(super) fn root_components(root: &Path) -> Vec<String> {
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

/// The files of a source, the format they are read as, and those skipped for holding another.
pub(super) struct Detected {
    /// The folder the files' `rel` paths start from.
    pub(super) root: PathBuf,
    pub(super) format: Format,
    pub(super) units: Vec<Unit>,
    pub(super) skipped: Vec<Skipped>,
}

/// Finds the trace files of `path` (a file or a directory tree) and their format.
pub(super) fn detect(path: &Path) -> Result<Detected, SourceError> {
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
    let mut skipped = Vec::new();
    units.retain(|u| {
        let keep = u.kind.format() == format;
        if !keep {
            skipped.push(Skipped {
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
    Ok(Detected {
        root,
        format,
        units,
        skipped,
    })
}
