//! Reading version-1 payloads (written until the routing model of version 2): the skeleton,
//! then expert ids as byte planes, missing bitmaps and f16 gate weights as byte planes, the
//! whole payload deflated. Kept so that traces recorded before version 2 still read.

use half::f16;

use super::super::FormatError;
use super::structure::{self, Cursor, FLAG_MISSING};
use crate::model::{ModelShape, RequestTrace, MISSING_EXPERT};

/// Decodes one version-1 request payload (already inflated). Every count is checked against
/// the bytes left: each id takes at least one byte.
pub(super) fn decode_request(b: &[u8], shape: &ModelShape) -> Result<RequestTrace, FormatError> {
    let wide = shape.num_experts > 256;
    let mut c = Cursor { b, p: 0 };
    let sk = structure::decode(&mut c, b.len())?;
    let total_ids = sk.total_ids();
    let lo = c.bytes(total_ids, "expert ids")?;
    let hi = if wide {
        Some(c.bytes(total_ids, "expert ids (high bytes)")?)
    } else {
        None
    };
    let mut experts: Vec<u16> = match hi {
        Some(hi) => lo
            .iter()
            .zip(hi)
            .map(|(&l, &h)| u16::from(l) | (u16::from(h) << 8))
            .collect(),
        None => lo.iter().map(|&l| u16::from(l)).collect(),
    };
    let mut start = 0;
    for e in &sk.entries {
        let n = e.ids;
        if e.flags & FLAG_MISSING != 0 {
            let bits = c.bytes(n.div_ceil(8), "missing bitmap")?;
            for (j, x) in experts[start..start + n].iter_mut().enumerate() {
                if bits[j / 8] & (1 << (j % 8)) != 0 {
                    *x = MISSING_EXPERT;
                }
            }
        }
        start += n;
    }
    let n_weights = sk.total_weights();
    let wlo = c.bytes(n_weights, "gate weights")?;
    let whi = c.bytes(n_weights, "gate weights (high bytes)")?;
    let weights: Vec<f32> = wlo
        .iter()
        .zip(whi)
        .map(|(&l, &h)| f16::from_bits(u16::from(l) | (u16::from(h) << 8)).to_f32())
        .collect();
    if c.remaining() != 0 {
        return Err(c.err("end of block (trailing bytes)"));
    }
    Ok(sk.assemble(&experts, &weights))
}
