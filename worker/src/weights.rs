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
    #[error("{path}: tensor `{name}` has dtype {dtype}, supported: F32, BF16, F16")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
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
        })
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
            for r in 0..rows {
                for c in 0..cols {
                    out[c * total + i * rows + r] = conv(decode(bytes, r * cols + c));
                }
            }
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
                let v: Vec<f32> = match src {
                    StDtype::F32 => as_f32(
                        &mut bytes
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    ),
                    StDtype::BF16 => as_f32(
                        &mut bytes
                            .chunks_exact(2)
                            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                    ),
                    StDtype::F16 => as_f32(
                        &mut bytes
                            .chunks_exact(2)
                            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
                    ),
                    other => {
                        return Err(WeightsError::Dtype {
                            path: file.path.clone(),
                            name: name.to_string(),
                            dtype: format!("{other:?}"),
                        })
                    }
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
}
