//! Appending requests to a binary trace: the header once, then one checksummed block per
//! request, flushed, then an end block with the request count.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;

use super::header::header_bytes;
use super::v2::{encode_payload, max_ids};
use super::{BLOCK_HEADER_LEN, BLOCK_TAG, CODEC_MODEL, END_TAG, MAX_BLOCK_LEN};
use crate::io::WriteError;
use crate::model::{validate_request, ModelShape, RequestTrace};

/// Appends requests to a binary trace, one flushed block per request, so that a crash loses
/// at most the request being written and a reader can follow the file while it grows.
pub struct BinaryWriter<W: Write> {
    w: W,
    label: PathBuf,
    shape: ModelShape,
    count: u64,
    level: Compression,
    bytes: u64,
}

impl BinaryWriter<BufWriter<File>> {
    /// Creates (truncates) `path` and writes the header.
    pub fn create(path: &Path, shape: &ModelShape) -> Result<Self, WriteError> {
        let io = |source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let f = File::create(path).map_err(io)?;
        Self::with_label(BufWriter::new(f), shape, path.to_path_buf())
    }
}

impl<W: Write> BinaryWriter<W> {
    /// Writes the header to any sink (a socket, a buffer).
    pub fn new(w: W, shape: &ModelShape) -> Result<Self, WriteError> {
        Self::with_label(w, shape, PathBuf::from("<stream>"))
    }

    fn with_label(mut w: W, shape: &ModelShape, label: PathBuf) -> Result<Self, WriteError> {
        let h = header_bytes(shape);
        let io = |source| WriteError::Io {
            path: label.clone(),
            source,
        };
        w.write_all(&h).map_err(io)?;
        w.flush().map_err(io)?;
        Ok(Self {
            w,
            label,
            shape: shape.clone(),
            count: 0,
            level: Compression::new(6),
            bytes: h.len() as u64,
        })
    }

    /// Deflate level 0-9 for the skeleton columns of the following blocks (0 stores them
    /// uncompressed). Expert ids and gate weights are always range-coded; the level only
    /// trades a little speed on long decode runs, whose skeleton repeats per iteration.
    pub fn set_level(&mut self, level: u32) {
        self.level = Compression::new(level.min(9));
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Requests appended so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes written so far, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks `r` against the shape, writes it as one block and flushes. Returns the block's
    /// size in bytes.
    pub fn append(&mut self, r: &RequestTrace) -> Result<u64, WriteError> {
        validate_request(r, &self.shape).map_err(|source| WriteError::Invalid {
            id: r.id.clone(),
            source,
        })?;
        let stored = encode_payload(r, &self.shape, self.level).map_err(|e| {
            WriteError::Unrepresentable {
                id: r.id.clone(),
                message: e.to_string(),
            }
        })?;
        if stored.len() > MAX_BLOCK_LEN as usize {
            return Err(WriteError::Unrepresentable {
                id: r.id.clone(),
                message: format!("block of {} bytes exceeds {MAX_BLOCK_LEN}", stored.len()),
            });
        }
        let ids: usize = r
            .iterations
            .iter()
            .flat_map(|it| &it.layers)
            .map(|l| l.experts.len())
            .sum();
        if ids > max_ids(stored.len()) {
            return Err(WriteError::Unrepresentable {
                id: r.id.clone(),
                message: format!(
                    "{ids} expert ids coded into {} bytes exceed the format's bound of {}",
                    stored.len(),
                    max_ids(stored.len())
                ),
            });
        }
        let codec = CODEC_MODEL;
        let mut head = [0u8; BLOCK_HEADER_LEN];
        head[..4].copy_from_slice(&BLOCK_TAG);
        head[4] = codec;
        head[5..9].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        // Version 2: the "raw length" field repeats the payload length.
        head[9..13].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&head[..13]);
        h.update(&stored);
        head[13..17].copy_from_slice(&h.finalize().to_le_bytes());
        let io = |source| WriteError::Io {
            path: self.label.clone(),
            source,
        };
        self.w.write_all(&head).map_err(io)?;
        self.w.write_all(&stored).map_err(io)?;
        self.w.flush().map_err(io)?;
        self.count += 1;
        let n = (BLOCK_HEADER_LEN + stored.len()) as u64;
        self.bytes += n;
        Ok(n)
    }

    /// Writes the end block (the request count, so a reader can tell a complete file from
    /// one whose recorder stopped) and returns the sink.
    pub fn finish(mut self) -> Result<W, WriteError> {
        let mut end = Vec::with_capacity(16);
        end.extend_from_slice(&END_TAG);
        end.extend_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&end);
        end.extend_from_slice(&crc.to_le_bytes());
        let io = |source| WriteError::Io {
            path: self.label.clone(),
            source,
        };
        self.w.write_all(&end).map_err(io)?;
        self.w.flush().map_err(io)?;
        Ok(self.w)
    }
}
