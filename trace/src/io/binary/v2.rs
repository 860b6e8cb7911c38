//! Version-2 request payloads: the skeleton columns (`structure`, deflated when that helps),
//! then the expert ids and gate weights range-coded under the adaptive routing model, reset
//! at every block.

use std::io::{Read, Write};

use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use half::f16;

use super::range_coder::{Decoder, Encoder};
use super::routing_model::RoutingModel;
use super::structure::{self, Cursor};
use super::MAX_BLOCK_LEN;
use crate::io::{varint, FormatError};
use crate::model::{ModelShape, Phase, RequestTrace};

pub(super) const STRUCTURE_STORED: u8 = 0;
pub(super) const STRUCTURE_DEFLATE: u8 = 1;

/// Most expert ids a version-2 block of `payload_len` bytes may hold, so that a corrupt count
/// is refused before anything is allocated for it (decoding allocates 2 bytes per id). The
/// probability clamp of the coder makes every binary decision cost at least 0.022 bits, so
/// a byte carries at most about 360 decisions and every id but a layer's first costs at
/// least one: real blocks stay far below 512 ids per byte.
pub(super) fn max_ids(payload_len: usize) -> usize {
    (1usize << 16).saturating_add(payload_len.saturating_mul(512))
}

/// Encodes one request as a version-2 payload: the skeleton columns (deflated at `level`,
/// stored when that does not help), then the range-coded ids and weights. Expects a request
/// valid for `shape`.
pub(super) fn encode_payload(
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
    let n_weights = sk.total_weights();
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
