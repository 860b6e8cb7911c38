//! Streaming the blocks of a binary trace: each block's header and checksum are checked as
//! it is read; decoding ([`RawBlock::decode`]) is left to the caller's threads.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::DeflateDecoder;

use super::header::read_header;
use super::{read_full, v1, v2};
use super::{
    BLOCK_HEADER_LEN, BLOCK_TAG, CODEC_DEFLATE, CODEC_MODEL, CODEC_RAW, END_TAG, MAX_BLOCK_LEN,
};
use crate::io::FormatError;
use crate::model::{ModelShape, RequestTrace};

/// One request block as stored, checksum verified, not yet decoded: the reader hands these
/// to worker threads, which inflate and decode them in parallel.
#[derive(Debug, Clone)]
pub struct RawBlock {
    /// Byte offset of the block in the file.
    pub offset: u64,
    version: u16,
    codec: u8,
    raw_len: u32,
    payload: Vec<u8>,
}

impl RawBlock {
    /// Stored (compressed) size including the block header.
    pub fn stored_len(&self) -> u64 {
        (BLOCK_HEADER_LEN + self.payload.len()) as u64
    }

    /// Inflates and decodes the request.
    pub fn decode(&self, shape: &ModelShape) -> Result<RequestTrace, FormatError> {
        let at = |e: FormatError| match e {
            FormatError::Layout(m) => {
                FormatError::Layout(format!("block at byte {}: {m}", self.offset))
            }
            other => other,
        };
        match (self.version, self.codec) {
            (2, CODEC_MODEL) => v2::decode_request(&self.payload, shape).map_err(at),
            (1, CODEC_RAW) => v1::decode_request(&self.payload, shape).map_err(at),
            (1, CODEC_DEFLATE) => {
                let mut raw = Vec::with_capacity(self.raw_len as usize);
                DeflateDecoder::new(&self.payload[..])
                    .take(u64::from(self.raw_len) + 1)
                    .read_to_end(&mut raw)
                    .map_err(|e| {
                        FormatError::Layout(format!(
                            "block at byte {}: deflate stream: {e}",
                            self.offset
                        ))
                    })?;
                if raw.len() != self.raw_len as usize {
                    return Err(FormatError::Layout(format!(
                        "block at byte {}: inflated to {} bytes, header says {}",
                        self.offset,
                        raw.len(),
                        self.raw_len
                    )));
                }
                v1::decode_request(&raw, shape).map_err(at)
            }
            (v, c) => Err(FormatError::Layout(format!(
                "block at byte {}: unknown codec {c} for format version {v}",
                self.offset
            ))),
        }
    }
}

/// Streams the blocks of a binary trace. Stops at the first damaged block (its length cannot
/// be trusted), reporting it; a missing end block is not an error (the recorder may still be
/// writing), a truncated last block is.
pub struct BinaryReader<R: Read> {
    r: R,
    shape: ModelShape,
    version: u16,
    offset: u64,
    count: u64,
    done: bool,
    /// Whether the end block was seen.
    complete: bool,
}

impl BinaryReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        Self::new(BufReader::with_capacity(1 << 20, File::open(path)?))
    }
}

impl<R: Read> BinaryReader<R> {
    /// Reads and checks the header.
    pub fn new(mut r: R) -> Result<Self, FormatError> {
        let header = read_header(&mut r)?;
        Ok(Self {
            r,
            shape: header.shape,
            version: header.version,
            offset: header.len,
            count: 0,
            done: false,
            complete: false,
        })
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The file's format version (1 or 2).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Whether the writer's end block has been read (the file is complete).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next request block; `None` at the end of the file or after an error.
    pub fn next_block(&mut self) -> Option<Result<RawBlock, FormatError>> {
        if self.done {
            return None;
        }
        let r = self.read_block();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }

    fn read_block(&mut self) -> Option<Result<RawBlock, FormatError>> {
        let at = self.offset;
        let mut tag = [0u8; 4];
        match read_full(&mut self.r, &mut tag) {
            Ok(0) => return None,
            Ok(4) => {}
            Ok(_) => return Some(Err(trunc(at, "block tag"))),
            Err(e) => return Some(Err(e.into())),
        }
        if tag == END_TAG {
            let mut rest = [0u8; 12];
            match read_full(&mut self.r, &mut rest) {
                Ok(12) => {}
                Ok(_) => return Some(Err(trunc(at, "end block"))),
                Err(e) => return Some(Err(e.into())),
            }
            let mut h = crc32fast::Hasher::new();
            h.update(&tag);
            h.update(&rest[..8]);
            if h.finalize().to_le_bytes() != rest[8..] {
                return Some(Err(FormatError::Checksum(format!(
                    "end block at byte {at}"
                ))));
            }
            let mut count = [0u8; 8];
            count.copy_from_slice(&rest[..8]);
            let count = u64::from_le_bytes(count);
            if count != self.count {
                return Some(Err(FormatError::Layout(format!(
                    "end block at byte {at} counts {count} requests, the file holds {}",
                    self.count
                ))));
            }
            self.offset += 16;
            let mut extra = [0u8; 1];
            return match read_full(&mut self.r, &mut extra) {
                Ok(0) => {
                    self.complete = true;
                    None
                }
                Ok(_) => Some(Err(FormatError::Layout(format!(
                    "data after the end block at byte {}",
                    self.offset
                )))),
                Err(e) => Some(Err(e.into())),
            };
        }
        if tag != BLOCK_TAG {
            return Some(Err(FormatError::Layout(format!(
                "byte {at}: expected a block tag, found {tag:02x?}"
            ))));
        }
        let mut head = [0u8; BLOCK_HEADER_LEN];
        head[..4].copy_from_slice(&tag);
        match read_full(&mut self.r, &mut head[4..]) {
            Ok(n) if n == BLOCK_HEADER_LEN - 4 => {}
            Ok(_) => return Some(Err(trunc(at, "block header"))),
            Err(e) => return Some(Err(e.into())),
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (stored, raw_len, crc) = (u32_at(5), u32_at(9), u32_at(13));
        if stored > MAX_BLOCK_LEN || raw_len > MAX_BLOCK_LEN {
            return Some(Err(FormatError::Layout(format!(
                "block at byte {at}: length {stored}/{raw_len} over the limit"
            ))));
        }
        let mut payload = vec![0u8; stored as usize];
        match read_full(&mut self.r, &mut payload) {
            Ok(n) if n == payload.len() => {}
            Ok(n) => {
                return Some(Err(FormatError::Truncated(format!(
                    "last block at byte {at}: {n} of {stored} payload bytes (the recorder stopped mid-write?)"
                ))))
            }
            Err(e) => return Some(Err(e.into())),
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&head[..13]);
        h.update(&payload);
        if h.finalize() != crc {
            return Some(Err(FormatError::Checksum(format!("block at byte {at}"))));
        }
        self.offset += (BLOCK_HEADER_LEN + payload.len()) as u64;
        self.count += 1;
        Some(Ok(RawBlock {
            offset: at,
            version: self.version,
            codec: head[4],
            raw_len,
            payload,
        }))
    }
}

fn trunc(at: u64, what: &str) -> FormatError {
    FormatError::Truncated(format!("{what} at byte {at}"))
}

impl<R: Read> Iterator for BinaryReader<R> {
    type Item = Result<RequestTrace, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let shape = self.shape.clone();
        self.next_block().map(|b| b.and_then(|b| b.decode(&shape)))
    }
}
