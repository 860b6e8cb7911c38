//! Readers and writers of the trace formats, one file per format. Each reader turns one unit
//! of input (a file, a tar entry, a binary block, one request's JSONL rows) into
//! [`crate::TraceItem`]s and never panics on bad bytes; [`crate::source`] detects formats,
//! determines the model shape and drives the readers in parallel.

pub mod binary;
pub mod evidence;
pub mod jsonl;
pub mod known_models;
pub mod paper;
pub mod paper_scan;
pub mod sglang;

/// The layout `moeflow serve --trace-dir DIR` records into: the same requests twice, as the
/// paper's JSON tree under `DIR/paper/` (for existing tools) and as one binary file (compact,
/// with gate weights and metadata). A reader given such a directory reads the binary file only
/// (see [`crate::open`]): reading both would count every request twice.
pub mod recording {
    /// Folder of the paper's JSON tree under a recording directory.
    pub const PAPER_DIR: &str = "paper";
    /// The binary file under a recording directory.
    pub const BINARY_FILE: &str = "trace.mfbin";
}

use std::path::PathBuf;

use crate::model::TraceModelError;

/// Why one unit of input could not be read. Names the byte offset or the field at fault; the
/// source adds the file path.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("byte {offset}: {message}")]
    Syntax { offset: usize, message: String },
    #[error("{0}")]
    Layout(String),
    #[error(transparent)]
    Model(#[from] TraceModelError),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("checksum mismatch: {0}")]
    Checksum(String),
}

/// Why a writer refused a request or could not write it.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("request `{id}`: {source}")]
    Invalid {
        id: String,
        #[source]
        source: TraceModelError,
    },
    #[error("request `{id}`: {message}")]
    Unrepresentable { id: String, message: String },
}

/// LEB128 unsigned varints, used by the binary format's columns.
pub(crate) mod varint {
    pub fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Reads one varint at `*pos`; `None` when the buffer ends or the value overflows u64.
    pub fn get(buf: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *buf.get(*pos)?;
            *pos += 1;
            if shift == 63 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn round_trips(v: u64) {
                let mut b = Vec::new();
                super::put(&mut b, v);
                let mut p = 0;
                prop_assert_eq!(super::get(&b, &mut p), Some(v));
                prop_assert_eq!(p, b.len());
            }

            #[test]
            fn never_panics(b: Vec<u8>) {
                let mut p = 0;
                let _ = super::get(&b, &mut p);
            }
        }
    }
}
