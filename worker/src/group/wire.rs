//! The byte layout of dispatch and combine messages between ranks.
//!
//! Dispatch (origin → host), little-endian:
//! `u32 tokens, u32 pairs, u16 pairs_per_token[tokens], (u32 expert, f32 weight)[pairs],
//! rows[tokens * hidden]` in the activation dtype. Combine (host → origin): `rows[tokens *
//! hidden]`, in the order the tokens arrived. Every length is checked against the message size
//! before anything is read, so a malformed message is an error naming the peer, never a panic.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::error::{ModelError, Result};

/// One token's share of a dispatch: its row and the (expert, weight) pairs the receiver runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWork {
    pub pairs: Vec<(u32, f32)>,
}

pub fn elem_size(dtype: DType) -> Result<usize> {
    match dtype {
        DType::F32 => Ok(4),
        DType::BF16 | DType::F16 => Ok(2),
        other => Err(ModelError::Dispatch(format!(
            "activations of dtype {other:?} cannot be sent"
        ))),
    }
}

/// Raw little-endian bytes of a 2-D activation tensor's rows.
pub fn rows_to_bytes(x: &Tensor) -> Result<Vec<u8>> {
    let flat = x.flatten_all()?;
    Ok(match x.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(ModelError::Dispatch(format!(
                "activations of dtype {other:?} cannot be sent"
            )))
        }
    })
}

/// Rows back into a `[rows, hidden]` tensor.
pub fn bytes_to_rows(
    bytes: &[u8],
    rows: usize,
    hidden: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let t = match dtype {
        DType::F32 => Tensor::from_vec(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>(),
            (rows, hidden),
            device,
        )?,
        DType::BF16 => Tensor::from_vec(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
            (rows, hidden),
            device,
        )?,
        DType::F16 => Tensor::from_vec(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
            (rows, hidden),
            device,
        )?,
        other => {
            return Err(ModelError::Dispatch(format!(
                "activations of dtype {other:?} cannot be received"
            )))
        }
    };
    Ok(t)
}

/// Encodes a dispatch message; `rows` holds the tokens' rows in order.
pub fn encode_dispatch(work: &[TokenWork], rows: &[u8]) -> Vec<u8> {
    let pairs: usize = work.iter().map(|w| w.pairs.len()).sum();
    let mut out = Vec::with_capacity(8 + work.len() * 2 + pairs * 8 + rows.len());
    out.extend_from_slice(&(work.len() as u32).to_le_bytes());
    out.extend_from_slice(&(pairs as u32).to_le_bytes());
    for w in work {
        out.extend_from_slice(&(w.pairs.len() as u16).to_le_bytes());
    }
    for w in work {
        for &(e, wt) in &w.pairs {
            out.extend_from_slice(&e.to_le_bytes());
            out.extend_from_slice(&wt.to_le_bytes());
        }
    }
    out.extend_from_slice(rows);
    out
}

/// Decodes a dispatch message from `peer`; returns the work items and the row bytes.
pub fn decode_dispatch(
    msg: &[u8],
    peer: usize,
    row_bytes: usize,
) -> Result<(Vec<TokenWork>, &[u8])> {
    let bad =
        |what: String| ModelError::Dispatch(format!("malformed dispatch from rank {peer}: {what}"));
    let u32_at = |o: usize| -> Option<u32> {
        msg.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if msg.is_empty() {
        return Ok((Vec::new(), &[]));
    }
    let tokens = u32_at(0).ok_or_else(|| bad("short header".into()))? as usize;
    let pairs = u32_at(4).ok_or_else(|| bad("short header".into()))? as usize;
    let counts_end = 8 + tokens * 2;
    let pairs_end = counts_end + pairs * 8;
    let expected = pairs_end + tokens * row_bytes;
    if msg.len() != expected {
        return Err(bad(format!(
            "{} bytes, header implies {expected} ({tokens} tokens, {pairs} pairs)",
            msg.len()
        )));
    }
    let mut work = Vec::with_capacity(tokens);
    let mut p = counts_end;
    let mut total = 0usize;
    for t in 0..tokens {
        let c = u16::from_le_bytes([msg[8 + 2 * t], msg[9 + 2 * t]]) as usize;
        total += c;
        if total > pairs {
            return Err(bad(format!(
                "token {t}: pair counts exceed the {pairs} pairs announced"
            )));
        }
        let mut v = Vec::with_capacity(c);
        for _ in 0..c {
            let e = u32::from_le_bytes([msg[p], msg[p + 1], msg[p + 2], msg[p + 3]]);
            let w = f32::from_le_bytes([msg[p + 4], msg[p + 5], msg[p + 6], msg[p + 7]]);
            v.push((e, w));
            p += 8;
        }
        work.push(TokenWork { pairs: v });
    }
    if total != pairs {
        return Err(bad(format!(
            "pair counts sum to {total}, header says {pairs}"
        )));
    }
    Ok((work, &msg[pairs_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reject_malformed() {
        let work = vec![
            TokenWork {
                pairs: vec![(3, 0.5), (7, 0.25)],
            },
            TokenWork {
                pairs: vec![(1, 1.0)],
            },
        ];
        let rows = vec![9u8; 2 * 8];
        let msg = encode_dispatch(&work, &rows);
        let (w, r) = decode_dispatch(&msg, 2, 8).unwrap();
        assert_eq!(w, work);
        assert_eq!(r, &rows[..]);
        assert!(decode_dispatch(&msg[..msg.len() - 1], 2, 8)
            .unwrap_err()
            .to_string()
            .contains("rank 2"));
        let mut lying = msg.clone();
        lying[4] = 9; // claims 9 pairs
        assert!(decode_dispatch(&lying, 1, 8).is_err());
        assert!(decode_dispatch(&[1, 2, 3], 1, 8).is_err());
    }
}
