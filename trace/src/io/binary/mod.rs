//! moeflow's compact binary trace format: a header with the model shape, then one
//! self-delimiting, checksummed block per request: its skeleton columns (deflated) and its
//! expert ids and gate weights, range-coded under an adaptive routing model that is reset
//! at every block. A live recorder appends and flushes one block per finished request; a
//! reader streams blocks one at a time, decodes them in parallel, and reports a truncated
//! last block instead of failing the whole file. Version-1 files (deflated byte columns)
//! still read. The byte layout is documented in `docs/trace-format.md`.

mod range_coder;
mod routing_model;
mod structure;
mod v1;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use half::f16;

use self::range_coder::{Decoder, Encoder};
use self::routing_model::RoutingModel;
use self::structure::{Cursor, FLAG_WEIGHTS};
use super::varint;
use super::{FormatError, WriteError};
use crate::model::{validate_request, ModelShape, Phase, RequestTrace, MISSING_EXPERT};

/// First bytes of every binary trace file.
pub const MAGIC: [u8; 8] = *b"MOEFLOWT";
/// Format version this code writes. It reads this one and version 1.
pub const VERSION: u16 = 2;
/// Oldest version this code reads.
pub const MIN_VERSION: u16 = 1;
const BLOCK_TAG: [u8; 4] = *b"MFRQ";
const END_TAG: [u8; 4] = *b"MFEN";
/// Version-1 block codecs: the payload stored or deflated.
const CODEC_RAW: u8 = 0;
const CODEC_DEFLATE: u8 = 1;
/// Version-2 block codec: skeleton plus range-coded ids and weights.
const CODEC_MODEL: u8 = 2;
const BLOCK_HEADER_LEN: usize = 17;
/// Largest header or block accepted, so that a corrupt length cannot make a reader allocate
/// gigabytes.
pub const MAX_BLOCK_LEN: u32 = 1 << 30;

// ---------------------------------------------------------------------------------------
// Header

fn encode_shape(shape: &ModelShape) -> Vec<u8> {
    let mut b = Vec::new();
    match &shape.model {
        Some(m) => {
            b.push(1);
            varint::put(&mut b, m.len() as u64);
            b.extend_from_slice(m.as_bytes());
        }
        None => b.push(0),
    }
    varint::put(&mut b, shape.num_layers as u64);
    varint::put(&mut b, shape.num_experts as u64);
    varint::put(&mut b, shape.top_k as u64);
    varint::put(&mut b, shape.moe_layers.len() as u64);
    for &l in &shape.moe_layers {
        varint::put(&mut b, l as u64);
    }
    b
}

fn decode_shape(b: &[u8]) -> Result<ModelShape, FormatError> {
    let bad = |what: &str| FormatError::Layout(format!("header: bad or missing {what}"));
    let mut p = 0;
    let flag = *b.first().ok_or_else(|| bad("model flag"))?;
    p += 1;
    let model = match flag {
        0 => None,
        1 => {
            let n = varint::get(b, &mut p).ok_or_else(|| bad("model length"))? as usize;
            let end = p.checked_add(n).filter(|&e| e <= b.len());
            let end = end.ok_or_else(|| bad("model name"))?;
            let s = std::str::from_utf8(&b[p..end]).map_err(|_| bad("model name (UTF-8)"))?;
            p = end;
            Some(s.to_string())
        }
        _ => return Err(bad("model flag")),
    };
    let mut num = |what: &str| -> Result<usize, FormatError> {
        let v = varint::get(b, &mut p).ok_or_else(|| bad(what))?;
        usize::try_from(v).map_err(|_| bad(what))
    };
    let num_layers = num("num_layers")?;
    let num_experts = num("num_experts")?;
    let top_k = num("top_k")?;
    let n_moe = num("MoE layer count")?;
    if n_moe > num_layers {
        return Err(bad("MoE layer count (more than num_layers)"));
    }
    // Each id takes at least one byte: refuse a count the body cannot hold before allocating.
    if n_moe > b.len() {
        return Err(bad("MoE layer count (more ids than the header holds)"));
    }
    let mut moe_layers = Vec::with_capacity(n_moe);
    for _ in 0..n_moe {
        let l = num("MoE layer id")?;
        if l >= num_layers || moe_layers.last().is_some_and(|&prev| prev >= l) {
            return Err(bad("MoE layer id (not ascending within num_layers)"));
        }
        moe_layers.push(l);
    }
    if num_experts == 0 || num_experts > MISSING_EXPERT as usize || top_k > u16::MAX as usize {
        return Err(bad("num_experts or top_k (out of range)"));
    }
    Ok(ModelShape {
        model,
        num_layers,
        num_experts,
        top_k,
        moe_layers,
    })
}

fn header_bytes(shape: &ModelShape) -> Vec<u8> {
    let body = encode_shape(shape);
    let mut h = Vec::with_capacity(20 + body.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&(body.len() as u32).to_le_bytes());
    h.extend_from_slice(&body);
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Whether `prefix` (the first bytes of a file) starts like a binary trace.
pub fn sniff(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}

// ---------------------------------------------------------------------------------------
// Request payload (version 2)

const STRUCTURE_STORED: u8 = 0;
const STRUCTURE_DEFLATE: u8 = 1;

/// Most expert ids a version-2 block of `payload_len` bytes may hold, so that a corrupt count
/// is refused before anything is allocated for it (decoding allocates 2 bytes per id). The
/// probability clamp of the coder makes every binary decision cost at least 0.022 bits, so
/// a byte carries at most about 360 decisions and every id but a layer's first costs at
/// least one: real blocks stay far below 512 ids per byte.
fn max_ids(payload_len: usize) -> usize {
    (1usize << 16).saturating_add(payload_len.saturating_mul(512))
}

/// Encodes one request as a version-2 payload: the skeleton columns (deflated at `level`,
/// stored when that does not help), then the range-coded ids and weights. Expects a request
/// valid for `shape`.
fn encode_payload(
    r: &RequestTrace,
    shape: &ModelShape,
    level: Compression,
) -> std::io::Result<Vec<u8>> {
    let mut skeleton = Vec::new();
    structure::encode(r, &mut skeleton);
    let mut deflated = None;
    if level.level() > 0 {
        let mut enc = DeflateEncoder::new(Vec::with_capacity(skeleton.len() / 4), level);
        enc.write_all(&skeleton)?;
        let z = enc.finish()?;
        if z.len() < skeleton.len() {
            deflated = Some(z);
        }
    }
    let mut out = Vec::with_capacity(skeleton.len() + 16);
    out.push(if deflated.is_some() {
        STRUCTURE_DEFLATE
    } else {
        STRUCTURE_STORED
    });
    varint::put(&mut out, skeleton.len() as u64);
    let stored = deflated.as_deref().unwrap_or(&skeleton);
    varint::put(&mut out, stored.len() as u64);
    out.extend_from_slice(stored);

    let entries = || r.iterations.iter().flat_map(|it| it.layers.iter());
    let mut experts: Vec<u16> = entries().flat_map(|l| l.experts.iter().copied()).collect();
    let mut weights: Vec<u16> = entries()
        .filter_map(|l| l.weights.as_deref())
        .flatten()
        .map(|&w| f16::from_f32(w).to_bits())
        .collect();
    let iterations: Vec<(Phase, usize)> = r
        .iterations
        .iter()
        .map(|it| (it.phase, it.layers.len()))
        .collect();
    let skel_entries: Vec<structure::Entry> = entries()
        .map(|l| structure::Entry {
            layer: l.layer,
            top_k: l.top_k,
            ids: l.experts.len(),
            flags: structure::entry_flags(l),
        })
        .collect();
    let mut enc = Encoder::new(out);
    RoutingModel::new(shape)
        .code_request(
            &mut enc,
            &iterations,
            &skel_entries,
            &mut experts,
            &mut weights,
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(enc.finish())
}

/// Encodes one request as a version-2 payload with the skeleton stored uncompressed (what a
/// block holds is this with the skeleton deflated when that is smaller). Expects a request
/// valid for `shape`.
pub fn encode_request(r: &RequestTrace, shape: &ModelShape) -> Vec<u8> {
    // Encoding a valid request cannot fail: the model refuses only what a decoder reads.
    encode_payload(r, shape, Compression::none()).unwrap_or_default()
}

/// Decodes one version-2 payload. Every count is checked against the bytes there are, so a
/// corrupt block yields an error naming the column, never a panic or a huge allocation.
pub fn decode_request(b: &[u8], shape: &ModelShape) -> Result<RequestTrace, FormatError> {
    let mut c = Cursor { b, p: 0 };
    let codec = c.bytes(1, "skeleton codec")?[0];
    let raw_len = c.num("skeleton length")?;
    let stored_len = c.num("skeleton stored length")?;
    let stored = c.bytes(stored_len, "skeleton")?;
    let inflated;
    let skeleton = match codec {
        STRUCTURE_STORED if raw_len == stored_len => stored,
        STRUCTURE_DEFLATE if raw_len <= MAX_BLOCK_LEN as usize => {
            let mut raw = Vec::with_capacity(raw_len.min(stored_len.saturating_mul(64)));
            DeflateDecoder::new(stored)
                .take(raw_len as u64 + 1)
                .read_to_end(&mut raw)
                .map_err(|e| FormatError::Layout(format!("request block: skeleton: {e}")))?;
            if raw.len() != raw_len {
                return Err(c.err("skeleton length (inflated size differs)"));
            }
            inflated = raw;
            &inflated[..]
        }
        _ => return Err(c.err("skeleton codec")),
    };
    let mut sc = Cursor { b: skeleton, p: 0 };
    let sk = structure::decode(&mut sc, max_ids(b.len()))?;
    if sc.remaining() != 0 {
        return Err(sc.err("end of skeleton (trailing bytes)"));
    }
    let stream = &b[c.p..];
    let mut experts = vec![0u16; sk.total_ids()];
    let n_weights: usize = sk
        .entries
        .iter()
        .filter(|e| e.flags & FLAG_WEIGHTS != 0)
        .map(|e| e.ids)
        .sum();
    let mut weights = vec![0u16; n_weights];
    let mut dec = Decoder::new(stream);
    RoutingModel::new(shape).code_request(
        &mut dec,
        &sk.iterations,
        &sk.entries,
        &mut experts,
        &mut weights,
    )?;
    if dec.overran() {
        return Err(FormatError::Layout(
            "request block: expert ids: the coded stream ends early".into(),
        ));
    }
    if !dec.consumed_all() {
        return Err(FormatError::Layout(
            "request block: expert ids: trailing bytes after the coded stream".into(),
        ));
    }
    let weights: Vec<f32> = weights
        .iter()
        .map(|&w| f16::from_bits(w).to_f32())
        .collect();
    Ok(sk.assemble(&experts, &weights))
}

// ---------------------------------------------------------------------------------------
// Writer

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

// ---------------------------------------------------------------------------------------
// Reader

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
            (2, CODEC_MODEL) => decode_request(&self.payload, shape).map_err(at),
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

/// Reads up to `buf.len()` bytes; fewer only at end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> BinaryReader<R> {
    /// Reads and checks the header.
    pub fn new(mut r: R) -> Result<Self, FormatError> {
        let mut fixed = [0u8; 16];
        let n = read_full(&mut r, &mut fixed)?;
        if n < 8 || fixed[..8] != MAGIC {
            return Err(FormatError::Layout(
                "not a moeflow binary trace (bad magic)".into(),
            ));
        }
        if n < 16 {
            return Err(FormatError::Truncated("header".into()));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::Layout(format!(
                "binary trace version {version}, this reader reads versions {MIN_VERSION} to {VERSION}"
            )));
        }
        let len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
        if len > MAX_BLOCK_LEN {
            return Err(FormatError::Layout(format!("header length {len}")));
        }
        let mut rest = vec![0u8; len as usize + 4];
        if read_full(&mut r, &mut rest)? < rest.len() {
            return Err(FormatError::Truncated("header".into()));
        }
        let (body, crc) = rest.split_at(len as usize);
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed);
        h.update(body);
        if h.finalize().to_le_bytes() != crc {
            return Err(FormatError::Checksum("header".into()));
        }
        let shape = decode_shape(body)?;
        Ok(Self {
            r,
            shape,
            version,
            offset: 16 + rest.len() as u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Iteration, LayerRouting};
    use proptest::prelude::*;

    fn shape(num_experts: usize) -> ModelShape {
        ModelShape {
            model: Some("test/model".into()),
            num_layers: 3,
            num_experts,
            top_k: 2,
            moe_layers: vec![1, 2],
        }
    }

    fn request(n: usize) -> RequestTrace {
        RequestTrace {
            id: "q/1.json".into(),
            workload: Some("bench/subject".into()),
            prompt_len: 2,
            started_ms: Some(1_700_000_000_000),
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![
                        LayerRouting {
                            layer: 1,
                            top_k: 2,
                            experts: vec![0, (n - 1) as u16, MISSING_EXPERT, MISSING_EXPERT],
                            weights: Some(vec![0.75, 0.25, 0.0, 0.0]),
                        },
                        LayerRouting {
                            layer: 2,
                            top_k: 2,
                            experts: vec![3, 1, 2, 0],
                            weights: None,
                        },
                    ],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![LayerRouting {
                        layer: 2,
                        top_k: 2,
                        experts: vec![1, 2],
                        weights: None,
                    }],
                },
            ],
        }
    }

    #[test]
    fn round_trips_narrow_and_wide_ids_with_weights_and_gaps() {
        for n in [8usize, 256, 384, 4000] {
            let s = shape(n);
            let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
            w.append(&request(n)).unwrap();
            let bytes = w.finish().unwrap();
            let mut r = BinaryReader::new(&bytes[..]).unwrap();
            assert_eq!(r.shape(), &s);
            let got = r.next().unwrap().unwrap();
            assert_eq!(got, request(n));
            assert!(r.next().is_none());
            assert!(r.complete());
        }
    }

    #[test]
    fn writer_refuses_invalid_requests() {
        let mut w = BinaryWriter::new(Vec::new(), &shape(2)).unwrap();
        assert!(matches!(
            w.append(&request(8)),
            Err(WriteError::Invalid { .. })
        ));
    }

    #[test]
    fn truncated_last_block_is_reported_after_the_good_ones() {
        let s = shape(8);
        let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
        w.append(&request(8)).unwrap();
        w.append(&request(8)).unwrap();
        let bytes = w.finish().unwrap();
        let cut = &bytes[..bytes.len() - 16 - 5];
        let got: Vec<_> = BinaryReader::new(cut).unwrap().collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(FormatError::Truncated(_))));
    }

    #[test]
    fn a_block_claiming_more_ids_than_it_can_hold_is_refused() {
        let mut skeleton = vec![0u8, 0, 0, 1, 0, 1, 1, 2];
        varint::put(&mut skeleton, 1 << 40);
        skeleton.push(0);
        let mut payload = vec![STRUCTURE_STORED];
        varint::put(&mut payload, skeleton.len() as u64);
        varint::put(&mut payload, skeleton.len() as u64);
        payload.extend_from_slice(&skeleton);
        let err = decode_request(&payload, &shape(8)).unwrap_err().to_string();
        assert!(err.contains("token count"), "{err}");
    }

    #[test]
    fn flipped_byte_fails_the_checksum() {
        let s = shape(8);
        let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
        w.append(&request(8)).unwrap();
        let mut bytes = w.finish().unwrap();
        let i = bytes.len() - 20;
        bytes[i] ^= 0x40;
        let got: Vec<_> = BinaryReader::new(&bytes[..]).unwrap().collect();
        assert!(matches!(got[0], Err(FormatError::Checksum(_))));
    }

    /// Requests of any shape the model accepts: prefill and decode, ids drawn from a few hot
    /// experts or anywhere (so candidates hit and miss), missing ids, weights or none.
    fn arb_request(e: usize, k: usize) -> impl Strategy<Value = RequestTrace> {
        let id = prop_oneof![0..e as u16, 0..4u16.min(e as u16), Just(MISSING_EXPERT)];
        // Any f16 but NaN, which never equals itself.
        let weight = any::<u16>().prop_map(|b| {
            let w = f16::from_bits(b);
            if w.is_nan() {
                0.0
            } else {
                w.to_f32()
            }
        });
        let entry = move |tokens: std::ops::Range<usize>| {
            (
                proptest::collection::vec(id.clone(), tokens.start * k..tokens.end * k),
                any::<bool>(),
                proptest::collection::vec(weight.clone(), 0..64 * k),
            )
                .prop_map(move |(mut ex, with_w, w)| {
                    ex.truncate(ex.len() / k * k);
                    let weights = (with_w && w.len() >= ex.len()).then(|| w[..ex.len()].to_vec());
                    (ex, weights)
                })
        };
        let layers = move |tokens: std::ops::Range<usize>| {
            proptest::collection::vec(entry(tokens), 2).prop_map(move |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (experts, weights))| LayerRouting {
                        layer: i as u32 + 1,
                        top_k: k as u16,
                        experts,
                        weights,
                    })
                    .collect::<Vec<_>>()
            })
        };
        (layers(0..40), proptest::collection::vec(layers(1..2), 0..6)).prop_map(
            |(prefill, decode)| RequestTrace {
                id: "p".into(),
                workload: None,
                prompt_len: prefill[0].num_tokens(),
                started_ms: None,
                finished_ms: None,
                iterations: std::iter::once(Iteration {
                    phase: Phase::Prefill,
                    layers: prefill,
                })
                .chain(decode.into_iter().map(|layers| Iteration {
                    phase: Phase::Decode,
                    layers,
                }))
                .collect(),
            },
        )
    }

    proptest! {
        #[test]
        fn any_request_round_trips_exactly(
            (e, r) in prop_oneof![Just(3usize), Just(8), Just(256), Just(384), Just(5000)]
                .prop_flat_map(|e| (Just(e), arb_request(e, if e < 8 { 2 } else { 8 })))
        ) {
            let mut s = shape(e);
            s.top_k = if e < 8 { 2 } else { 8 };
            let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
            // Decode iterations hold one token per layer: skip requests the model refuses.
            if w.append(&r).is_ok() {
                let bytes = w.finish().unwrap();
                let got = BinaryReader::new(&bytes[..]).unwrap().next().unwrap().unwrap();
                prop_assert_eq!(got, r);
            }
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_request(&b, &shape(300));
            let _ = decode_request(&b, &shape(8));
            let mut with_magic = header_bytes(&shape(8));
            with_magic.extend_from_slice(&b);
            if let Ok(r) = BinaryReader::new(&with_magic[..]) {
                for item in r {
                    let _ = item;
                }
            }
        }
    }
}
