//! The paper's `<subject>.tar.gz` archives, read as if each were the folder `<subject>`: the
//! shape scan and the fold walk their JSON entries the same way and differ only in what they
//! do with a damaged archive.

use std::io::{BufReader, Read};
use std::ops::ControlFlow;

/// Why an archive was not read to its end.
#[derive(Debug)]
pub(super) enum TarStop {
    /// Its entries could not be listed at all.
    Open(std::io::Error),
    /// A header is damaged; the rest of the archive is not read.
    Entry(std::io::Error),
    /// One entry's bytes could not be read; the rest of the archive is not read.
    Read {
        rel: Vec<String>,
        source: std::io::Error,
    },
}

impl TarStop {
    /// The path (the archive's, or the entry's where one was being read) and the reason to
    /// report this under.
    pub(super) fn skipped(self, archive_rel: &str) -> (String, String) {
        match self {
            TarStop::Open(e) => (archive_rel.to_string(), format!("tar.gz: {e}")),
            TarStop::Entry(e) => (
                archive_rel.to_string(),
                format!("tar.gz, rest of the archive not read: {e}"),
            ),
            TarStop::Read { rel, source } => (
                rel.join("/"),
                format!("tar.gz, rest of the archive not read: {source}"),
            ),
        }
    }
}

/// Hands every JSON file of the gzip-compressed tar stream `reader` to `visit`, with its path
/// below the source's root, until `visit` breaks (returned) or the archive ends.
pub(super) fn for_each_json<R: Read>(
    reader: R,
    archive_rel: &[String],
    mut visit: impl FnMut(Vec<String>, Vec<u8>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, TarStop> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(reader)));
    let entries = ar.entries().map_err(TarStop::Open)?;
    for e in entries {
        let mut e = e.map_err(TarStop::Entry)?;
        let Some(rel) = entry_rel(archive_rel, &e) else {
            continue;
        };
        let mut b = Vec::new();
        if let Err(source) = e.read_to_end(&mut b) {
            return Err(TarStop::Read { rel, source });
        }
        if visit(rel, b).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Path of a tar entry as if the archive `<subject>.tar.gz` were the folder `<subject>`;
/// `None` for entries that are not JSON files.
fn entry_rel<R: Read>(archive_rel: &[String], e: &tar::Entry<'_, R>) -> Option<Vec<String>> {
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
