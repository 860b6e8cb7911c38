//! A streaming writer of single-file safetensors checkpoints with f32 tensors.
//!
//! The `safetensors` crate serializes from tensors held in memory; a 140M-parameter checkpoint
//! would then need its whole 560 MB resident before a byte is written. The format is simple
//! enough to stream instead: an 8-byte little-endian header length, a JSON header mapping each
//! name to `{dtype, shape, data_offsets}` (plus `__metadata__`), padded with spaces to a
//! multiple of 8, then the raw little-endian data in header order. Peak memory is one chunk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use indicatif::ProgressBar;
use serde_json::{json, Map, Value};

use super::tensors::{fill, TensorSpec, BLOCK};
use super::SynthError;

/// Values generated and written per step (a multiple of the RNG block size).
const CHUNK: usize = 16 * BLOCK;

/// The header bytes (length prefix included) for `tensors` in the given order, which is also
/// the order of their data.
pub fn header(tensors: &[&TensorSpec]) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.numel() * 4;
        map.insert(
            t.name.clone(),
            json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = Value::Object(map).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out
}

/// Writes `tensors` (sorted by name, as the `safetensors` library orders them) with values
/// drawn from `seed` to `path`, via a temporary file renamed at the end so that an interrupted
/// run never leaves a truncated checkpoint behind. Returns the file size.
pub fn write_checkpoint(
    path: &Path,
    tensors: &[TensorSpec],
    seed: u64,
    progress: &ProgressBar,
) -> Result<u64, SynthError> {
    let mut sorted: Vec<&TensorSpec> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let tmp = path.with_extension("safetensors.partial");
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SynthError::Io { path: p, source }
    };
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let head = header(&sorted);
    w.write_all(&head).map_err(io_err(&tmp))?;
    let mut written = head.len() as u64;
    let mut values = vec![0f32; CHUNK];
    let mut bytes = Vec::with_capacity(CHUNK * 4);
    for t in sorted {
        let numel = t.numel();
        let mut start = 0;
        while start < numel {
            let n = CHUNK.min(numel - start);
            fill(t, seed, start, &mut values[..n]);
            bytes.clear();
            bytes.extend(values[..n].iter().flat_map(|v| v.to_le_bytes()));
            w.write_all(&bytes).map_err(io_err(&tmp))?;
            written += bytes.len() as u64;
            progress.inc(bytes.len() as u64);
            start += n;
        }
    }
    let file = w.into_inner().map_err(|e| SynthError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::tensors::{linear, norm};

    #[test]
    fn streams_a_file_the_safetensors_crate_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // A tensor larger than one chunk checks that chunks continue the right blocks.
        let tensors = vec![norm("b.norm", 5), linear("a.big", 3, CHUNK)];
        let size = write_checkpoint(&path, &tensors, 3, &ProgressBar::hidden()).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(size, data.len() as u64);
        let header_len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let st = safetensors::SafeTensors::deserialize(&data).unwrap();
        let big = st.tensor("a.big").unwrap();
        assert_eq!(big.shape(), &[3, CHUNK]);
        assert_eq!(big.dtype(), safetensors::Dtype::F32);
        let mut want = vec![0f32; 3 * CHUNK];
        fill(&tensors[1], 3, 0, &mut want);
        let got: Vec<f32> = big
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, want);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&data).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        assert!(!dir.path().join("model.safetensors.partial").exists());
    }
}
