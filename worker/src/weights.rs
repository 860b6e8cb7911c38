//! Memory-mapped safetensors checkpoints: one `model.safetensors` or the shards named by
//! `model.safetensors.index.json`.
//!
//! Tensors are copied out of the mapping into the runtime dtype one at a time, and the pages
//! they came from are released right after (`MADV_DONTNEED`), so loading keeps the resident
//! set close to the size of the weights instead of twice that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};

use crate::config::WeightFormat;

/// Why a checkpoint's weights could not be read. Each variant names the file and, where one
/// is at fault, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file (truncated or malformed): {msg}")]
    Malformed { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Index { path: PathBuf, msg: String },
    #[error("{dir}: no model.safetensors, model.safetensors.index.json or *.safetensors file")]
    NoWeights { dir: PathBuf },
    #[error("{dir}: missing tensor `{name}`")]
    Missing { dir: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error(
        "{path}: tensor `{name}` has dtype {dtype}, supported: F32, BF16, F16, and F8_E4M3 with \
         block scales (block-wise fp8 checkpoints)"
    )]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: FP8 tensor `{name}`: {msg}")]
    Fp8 {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("tensor `{name}`: {source}")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

struct TensorEntry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Byte range in the file (absolute, header included).
    start: usize,
    end: usize,
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

/// The tensors of a checkpoint directory, addressable by their published names.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, TensorEntry>,
    dtype: DType,
    device: Device,
    format: WeightFormat,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl WeightStore {
    /// Maps the checkpoint in `dir`; tensors are produced in `dtype` on `device`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self, WeightsError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.exists() {
            shard_paths(&index, dir)?
        } else if single.exists() {
            vec![single]
        } else {
            let rd = std::fs::read_dir(dir).map_err(|source| WeightsError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(WeightsError::NoWeights {
                    dir: dir.to_path_buf(),
                });
            }
            v
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|source| WeightsError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the mapping is read-only; a checkpoint modified while being loaded yields
            // wrong values but not unsoundness in safe code that only copies bytes out.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightsError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| WeightsError::Malformed {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                tensors.insert(
                    name.clone(),
                    TensorEntry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            files.push(MappedFile { path, mmap });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            tensors,
            dtype,
            device: device.clone(),
            format: WeightFormat::Float,
        })
    }

    /// How the checkpoint stores its weights (`config.json`'s `quantization_config`): with
    /// [`WeightFormat::Fp8Block`], F8_E4M3 tensors are dequantized with their
    /// `<name>_scale_inv` tiles while they are read.
    pub fn with_format(mut self, format: WeightFormat) -> Self {
        self.format = format;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Total bytes of tensor data in the files.
    pub fn file_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.end - t.start).sum()
    }

    /// The stored shape of a tensor, if present.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, WeightsError> {
        self.tensors.get(name).ok_or_else(|| WeightsError::Missing {
            dir: self.dir.clone(),
            name: name.to_string(),
        })
    }

    /// Loads tensor `name`, checking that its shape is `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        self.get_as(name, shape, self.dtype)
    }

    /// Loads tensor `name` in an explicit dtype (router gates and biases are kept in f32).
    pub fn get_as(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor, WeightsError> {
        let e = self.entry(name)?;
        self.check_shape(name, e, shape)?;
        self.read(name, e, e.start, e.end, shape, dtype)
    }

    /// Loads `name[index]` of a tensor stacked along its first dimension (fused expert weights
    /// such as Llama-4's `experts.gate_up_proj`), checking the full stacked shape.
    pub fn get_stacked(
        &self,
        name: &str,
        full_shape: &[usize],
        index: usize,
    ) -> Result<Tensor, WeightsError> {
        let e = self.entry(name)?;
        self.check_shape(name, e, full_shape)?;
        let inner: Vec<usize> = full_shape[1..].to_vec();
        let per = (e.end - e.start) / full_shape[0].max(1);
        let start = e.start + index * per;
        self.read(name, e, start, start + per, &inner, self.dtype)
    }

    /// Loads the 2-D tensors `names`, each `[rows, cols]`, stacked along their rows and
    /// transposed: `[cols, names.len() * rows]` (SwiGLU's input-major `gate_up` from the
    /// published `gate_proj` and `up_proj`). Each element is written straight into the final
    /// buffer: loading through `Tensor::cat` and `t().contiguous()` made three transient
    /// copies per expert, and the holes they left in the heap kept the resident set about
    /// 25% above the weights.
    pub(crate) fn get_stacked_transposed(
        &self,
        names: &[&str],
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, WeightsError> {
        let wrap = |source| WeightsError::Tensor {
            name: names.join("+"),
            source,
        };
        match self.dtype {
            DType::F32 => self.stack_t(names, rows, cols, |v| v),
            DType::BF16 => self.stack_t(names, rows, cols, bf16::from_f32),
            DType::F16 => self.stack_t(names, rows, cols, f16::from_f32),
            // Other runtime dtypes (none in use): through f32.
            other => self
                .stack_t(names, rows, cols, |v| v)?
                .to_dtype(other)
                .map_err(wrap),
        }
    }

    fn stack_t<T: candle_core::WithDType>(
        &self,
        names: &[&str],
        rows: usize,
        cols: usize,
        conv: impl Fn(f32) -> T,
    ) -> Result<Tensor, WeightsError> {
        let total = names.len() * rows;
        let mut out = vec![T::zero(); cols * total];
        for (i, name) in names.iter().enumerate() {
            let e = self.entry(name)?;
            self.check_shape(name, e, &[rows, cols])?;
            // Element j = r * cols + c of this tensor goes to row c, column i * rows + r.
            let mut put = |value: &dyn Fn(usize) -> f32| {
                for r in 0..rows {
                    for c in 0..cols {
                        out[c * total + i * rows + r] = conv(value(r * cols + c));
                    }
                }
            };
            if e.dtype == StDtype::F8_E4M3 {
                let v = self.fp8_values(name, e, e.start, e.end, &[rows, cols])?;
                put(&|j| v[j]);
                continue;
            }
            let file = &self.files[e.file];
            let bytes = &file.mmap[e.start..e.end];
            let decode: fn(&[u8], usize) -> f32 = match e.dtype {
                StDtype::F32 => {
                    |b, j| f32::from_le_bytes([b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]])
                }
                StDtype::BF16 => |b, j| bf16::from_le_bytes([b[2 * j], b[2 * j + 1]]).to_f32(),
                StDtype::F16 => |b, j| f16::from_le_bytes([b[2 * j], b[2 * j + 1]]).to_f32(),
                other => {
                    return Err(WeightsError::Dtype {
                        path: file.path.clone(),
                        name: name.to_string(),
                        dtype: format!("{other:?}"),
                    })
                }
            };
            put(&|j| decode(bytes, j));
            release(&file.mmap, e.start, e.end - e.start);
        }
        Tensor::from_vec(out, (cols, total), &self.device).map_err(|source| WeightsError::Tensor {
            name: names.join("+"),
            source,
        })
    }

    fn check_shape(
        &self,
        name: &str,
        e: &TensorEntry,
        shape: &[usize],
    ) -> Result<(), WeightsError> {
        if e.shape != shape {
            return Err(WeightsError::Shape {
                path: self.files[e.file].path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: e.shape.clone(),
            });
        }
        Ok(())
    }

    fn read(
        &self,
        name: &str,
        e: &TensorEntry,
        start: usize,
        end: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor, WeightsError> {
        if e.dtype == StDtype::F8_E4M3 {
            let v = self.fp8_values(name, e, start, end, shape)?;
            return Tensor::from_vec(v, shape, &self.device)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(|source| WeightsError::Tensor {
                    name: name.to_string(),
                    source,
                });
        }
        let file = &self.files[e.file];
        let bytes = &file.mmap[start..end];
        let as_f32 = |it: &mut dyn Iterator<Item = f32>| -> Vec<f32> { it.collect() };
        let t = match (e.dtype, dtype) {
            (StDtype::F32, DType::F32) => {
                let v = as_f32(
                    &mut bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                Tensor::from_vec(v, shape, &self.device)
            }
            (StDtype::BF16, DType::BF16) => {
                let v: Vec<bf16> = bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Tensor::from_vec(v, shape, &self.device)
            }
            (StDtype::F16, DType::F16) => {
                let v: Vec<f16> = bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Tensor::from_vec(v, shape, &self.device)
            }
            (src, dst) => {
                let Some(v) = floats_to_f32(src, bytes) else {
                    return Err(WeightsError::Dtype {
                        path: file.path.clone(),
                        name: name.to_string(),
                        dtype: format!("{src:?}"),
                    });
                };
                Tensor::from_vec(v, shape, &self.device).and_then(|t| t.to_dtype(dst))
            }
        }
        .map_err(|source| WeightsError::Tensor {
            name: name.to_string(),
            source,
        })?;
        release(&file.mmap, start, end - start);
        Ok(t)
    }
}

impl WeightStore {
    /// The f32 values of the F8_E4M3 tensor `name` (2-D `[rows, cols]`, read whole): each
    /// element decoded and multiplied by the scale of its tile in `<name>_scale_inv`
    /// (`[ceil(rows / block[0]), ceil(cols / block[1])]`, F32/BF16/F16), the dequantization
    /// of DeepSeek's published checkpoints.
    fn fp8_values(
        &self,
        name: &str,
        e: &TensorEntry,
        start: usize,
        end: usize,
        shape: &[usize],
    ) -> Result<Vec<f32>, WeightsError> {
        let path = &self.files[e.file].path;
        let fail = |msg: String| WeightsError::Fp8 {
            path: path.clone(),
            name: name.to_string(),
            msg,
        };
        let WeightFormat::Fp8Block { block: [br, bc] } = self.format else {
            return Err(fail(
                "config.json has no block-wise fp8 `quantization_config`, so its scales are unknown"
                    .into(),
            ));
        };
        let &[rows, cols] = shape else {
            return Err(fail(format!(
                "only 2-D weights are read as FP8, asked for shape {shape:?}"
            )));
        };
        if start != e.start || end != e.end || e.end - e.start != rows * cols {
            return Err(fail(
                "FP8 weights are read whole, not as part of a fused tensor".into(),
            ));
        }
        let scale_name = format!("{name}_scale_inv");
        let s = self.entry(&scale_name)?;
        let grid = [rows.div_ceil(br), cols.div_ceil(bc)];
        self.check_shape(&scale_name, s, &grid)?;
        let sbytes = &self.files[s.file].mmap[s.start..s.end];
        let Some(scales) = floats_to_f32(s.dtype, sbytes) else {
            return Err(WeightsError::Dtype {
                path: self.files[s.file].path.clone(),
                name: scale_name,
                dtype: format!("{:?}", s.dtype),
            });
        };
        let bytes = &self.files[e.file].mmap[start..end];
        let lut = &*E4M3;
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let srow = &scales[(r / br) * grid[1]..][..grid[1]];
            let brow = &bytes[r * cols..][..cols];
            out.extend(
                brow.iter()
                    .enumerate()
                    .map(|(c, &b)| lut[b as usize] * srow[c / bc]),
            );
        }
        release(&self.files[e.file].mmap, start, end - start);
        Ok(out)
    }
}

/// The little-endian F32, BF16 or F16 values in `bytes` as f32; `None` for other dtypes.
fn floats_to_f32(dtype: StDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Every F8_E4M3 ("fn" variant: exponent bias 7, no infinities, S.1111.111 is NaN) byte's
/// value.
static E4M3: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0f32; 256];
    for (b, v) in t.iter_mut().enumerate() {
        *v = e4m3_to_f32(b as u8);
    }
    t
});

/// One F8_E4M3 value, from the format's definition.
fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    let magnitude = if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    };
    sign * magnitude
}

/// Drops the just-copied pages from this process's resident set; the kernel can re-read them
/// from the page cache should they be needed again.
fn release(mmap: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: the mapping is private and read-only and no reference into the range
        // outlives this call (the bytes were copied); after DONTNEED a later read sees the
        // file's contents again.
        let _ =
            unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }
    #[cfg(not(unix))]
    let _ = (mmap, offset, len);
}

fn shard_paths(index: &Path, dir: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| WeightsError::Index {
        path: index.to_path_buf(),
        msg: format!("malformed JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| WeightsError::Index {
            path: index.to_path_buf(),
            msg: "missing object `weight_map`".into(),
        })?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let f = file.as_str().ok_or_else(|| WeightsError::Index {
            path: index.to_path_buf(),
            msg: format!("weight_map[`{tensor}`] is not a file name"),
        })?;
        if f.contains('/') || f.contains("..") {
            return Err(WeightsError::Index {
                path: index.to_path_buf(),
                msg: format!("weight_map[`{tensor}`] = `{f}` leaves the checkpoint directory"),
            });
        }
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    shards.sort();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `get_stacked_transposed` equals `cat` + transpose, in every runtime dtype, from f32
    /// and bf16 files; a wrong shape names the tensor.
    #[test]
    fn stacked_transposed_matches_cat_then_transpose() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = (Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            * 0.5)
            .unwrap();
        for file_dtype in [DType::F32, DType::BF16] {
            let path = dir.path().join("model.safetensors");
            let tensors = [
                ("a", a.to_dtype(file_dtype).unwrap()),
                ("b", b.to_dtype(file_dtype).unwrap()),
            ];
            candle_core::safetensors::save(&tensors.into_iter().collect(), &path).unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let ws = WeightStore::open(dir.path(), dtype, &dev).unwrap();
                let got = ws.get_stacked_transposed(&["a", "b"], 3, 4).unwrap();
                let want = Tensor::cat(&[&a, &b], 0)
                    .and_then(|t| t.t())
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap();
                assert_eq!((got.dims(), got.dtype()), (&[4, 6][..], dtype));
                let diff = (got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap())
                    .and_then(|d| d.abs())
                    .and_then(|d| d.max_all())
                    .and_then(|d| d.to_scalar::<f32>())
                    .unwrap();
                assert_eq!(diff, 0.0, "{file_dtype:?} file, {dtype:?} runtime");
                let err = ws.get_stacked_transposed(&["a", "b"], 4, 3).unwrap_err();
                assert!(err.to_string().contains("`a`"), "{err}");
            }
        }
    }

    /// Every E4M3 code decodes as the float8 crate (candle's F8E4M3) decodes it.
    #[test]
    fn e4m3_matches_an_independent_decoder() {
        let codes: Vec<u8> = (0..=255).collect();
        let t = Tensor::from_raw_buffer(&codes, DType::F8E4M3, &[256], &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        for (b, want) in codes.iter().zip(t) {
            let got = E4M3[*b as usize];
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{b:#04x}: {got} vs {want}"
            );
        }
        assert_eq!(E4M3[0x7e], 448.0);
        assert_eq!(E4M3[0x01], 2f32.powi(-9));
    }

    /// A block-wise FP8 weight dequantizes tile by tile, through `get` and
    /// `get_stacked_transposed`; a missing or misshapen scale and an FP8 tensor without the
    /// config are refused by name.
    #[test]
    fn fp8_weights_dequantize_with_their_tile_scales() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        // 3 x 5 codes (values exactly representable), 2 x 2 tiles: scales grid 2 x 3.
        let q: Vec<f32> = (0..15).map(|i| (i as f32 - 7.0) * 0.5).collect();
        let scales = [1.0f32, 2.0, 4.0, 8.0, 16.0, 32.0];
        let w = Tensor::from_vec(q.clone(), (3, 5), &dev).unwrap();
        let tensors = [
            ("l.weight", w.to_dtype(DType::F8E4M3).unwrap()),
            (
                "l.weight_scale_inv",
                Tensor::from_vec(scales.to_vec(), (2, 3), &dev).unwrap(),
            ),
            ("bad.weight", w.to_dtype(DType::F8E4M3).unwrap()),
            (
                "bad.weight_scale_inv",
                Tensor::ones((1, 3), DType::F32, &dev).unwrap(),
            ),
            ("lone.weight", w.to_dtype(DType::F8E4M3).unwrap()),
        ];
        let path = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&tensors.into_iter().collect(), &path).unwrap();
        let want: Vec<f32> = (0..15)
            .map(|i| q[i] * scales[(i / 5) / 2 * 3 + (i % 5) / 2])
            .collect();

        let ws = WeightStore::open(dir.path(), DType::F32, &dev)
            .unwrap()
            .with_format(WeightFormat::Fp8Block { block: [2, 2] });
        let got = ws.get("l.weight", &[3, 5]).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let bf = WeightStore::open(dir.path(), DType::BF16, &dev)
            .unwrap()
            .with_format(WeightFormat::Fp8Block { block: [2, 2] });
        let got = bf.get("l.weight", &[3, 5]).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let st = ws.get_stacked_transposed(&["l.weight"], 3, 5).unwrap();
        let want_t = Tensor::from_vec(want.clone(), (3, 5), &dev)
            .and_then(|t| t.t())
            .unwrap();
        assert_eq!(
            st.to_vec2::<f32>().unwrap(),
            want_t.to_vec2::<f32>().unwrap()
        );

        let err = ws.get("bad.weight", &[3, 5]).unwrap_err().to_string();
        assert!(
            err.contains("bad.weight_scale_inv") && err.contains("[2, 3]"),
            "{err}"
        );
        let err = ws.get("lone.weight", &[3, 5]).unwrap_err().to_string();
        assert!(err.contains("lone.weight_scale_inv"), "{err}");
        let plain = WeightStore::open(dir.path(), DType::F32, &dev).unwrap();
        let err = plain.get("l.weight", &[3, 5]).unwrap_err().to_string();
        assert!(
            err.contains("quantization_config") && err.contains("l.weight"),
            "{err}"
        );
    }
}
