//! The file header: magic, format version, and the model shape every block is coded
//! against, checksummed. Written once by the writer and checked by the reader before any
//! block.

use std::io::Read;

use super::{read_full, MAGIC, MAX_BLOCK_LEN, MIN_VERSION, VERSION};
use crate::io::{varint, FormatError};
use crate::model::{ModelShape, MISSING_EXPERT};

/// What a checked header says.
pub(super) struct Header {
    pub(super) shape: ModelShape,
    pub(super) version: u16,
    /// Bytes the header takes, checksum included.
    pub(super) len: u64,
}

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

pub(super) fn header_bytes(shape: &ModelShape) -> Vec<u8> {
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

/// Reads and checks the header at the start of `r`.
pub(super) fn read_header(r: &mut impl Read) -> Result<Header, FormatError> {
    let mut fixed = [0u8; 16];
    let n = read_full(r, &mut fixed)?;
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
    if read_full(r, &mut rest)? < rest.len() {
        return Err(FormatError::Truncated("header".into()));
    }
    let (body, crc) = rest.split_at(len as usize);
    let mut h = crc32fast::Hasher::new();
    h.update(&fixed);
    h.update(body);
    if h.finalize().to_le_bytes() != crc {
        return Err(FormatError::Checksum("header".into()));
    }
    Ok(Header {
        shape: decode_shape(body)?,
        version,
        len: 16 + rest.len() as u64,
    })
}

/// Whether `prefix` (the first bytes of a file) starts like a binary trace.
pub fn sniff(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}
