//! f32 views of byte messages. Activations are f32 on the CPU path; the wire carries bytes in
//! little-endian order so that ranks on different hosts agree whatever their native order.

use crate::error::CommError;

/// Little-endian bytes of `values` (one copy; the caller's buffer is left alone).
pub fn f32_to_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// f32 values of a message from `peer`; a length that is not a multiple of 4 means the peer
/// sent something other than f32 data.
pub fn bytes_to_f32(peer: usize, bytes: &[u8]) -> Result<Vec<f32>, CommError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(CommError::protocol(
            peer,
            format!(
                "expected f32 data, got {} bytes (not a multiple of 4)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
