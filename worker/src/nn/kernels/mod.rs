//! f32 CPU kernels for the layers that dominate a forward pass: linear maps and (grouped)
//! SwiGLU feed-forward blocks.
//!
//! Why not candle's ops: candle's CPU matmul hands every product, however small, to `gemm`
//! with gemm's own multi-threading, and every op allocates its result. A MoE layer is many
//! small products (one per busy expert), where that threading is poor and the allocations
//! and copies between ops cost as much as the arithmetic. Measured on the layer
//! (hidden 1024, 64 experts, top-8), the candle path reached 4-30% of the machine's matmul
//! rate; these kernels reach 60-84% from 256 tokens up (BENCHMARKS.md).
//!
//! What they do instead: each product is split into (row group, column block) tasks spread
//! over rayon, each run single-threaded by the kernel that suits its shape (see
//! [`matmul_block`]): gemm's own matrix-vector code for one row, streaming AVX2 kernels for
//! a few rows (bound by reading the weights), gemm into a column-major scratch or on packed
//! column panels for a few dozen rows, plain gemm above. The SwiGLU activation and the routing weight are fused in
//! between the two projections.
//!
//! Every entry point returns `None` when its inputs are not contiguous f32 CPU tensors; the
//! callers then use candle ops (bf16, CUDA).
//!
//! Layout: `gemm` (single-threaded products by shape, and the parallel linear maps), `avx2`
//! (the few-row streaming kernels, portable and AVX2), `swiglu` (grouped SwiGLU), `scratch`
//! (the per-thread buffer pool); this file holds the views they share.

mod avx2;
mod gemm;
mod scratch;
mod swiglu;
#[cfg(test)]
mod tests;

use std::ops::Range;

use candle_core::{CpuStorage, Storage, StorageRef, Tensor};

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::has_avx2_fma;
pub(crate) use gemm::{linear, linear_rows};
pub(crate) use scratch::Scratch;
pub(crate) use swiglu::{grouped_swiglu, GroupWork, SwiGluRef};

/// Below this many multiply-adds a product runs on the calling thread: splitting it over
/// rayon costs more than it saves.
const SERIAL_MACS: usize = 1 << 17;

/// Narrowest column block handed to one task; narrower blocks waste the GEMM micro-kernel.
const MIN_BLOCK_COLS: usize = 32;

/// The data of a contiguous f32 tensor in CPU memory, borrowed (the tensor's storage stays
/// read-locked while the guard lives).
pub(crate) struct F32Guard<'a> {
    guard: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> F32Guard<'a> {
    /// `None` unless `t` is a contiguous f32 CPU tensor.
    pub(crate) fn new(t: &'a Tensor) -> Option<Self> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*guard {
            Storage::Cpu(CpuStorage::F32(_)) => Some(Self {
                guard,
                range: start..end,
            }),
            _ => None,
        }
    }

    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            // `new` only admits f32 CPU storage, and the guard keeps it from changing.
            _ => &[],
        }
    }
}

/// Runs `f` on the data of `t` if it is a contiguous f32 tensor in CPU memory.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    F32Guard::new(t).map(|g| f(g.slice()))
}

/// An output buffer that parallel tasks fill in disjoint blocks.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: an `OutPtr` is only written through `gemm_block` and `matmul_block`, whose
// contracts make every concurrent caller write a disjoint block; the buffer outlives the
// tasks (it is borrowed mutably by the function that spawns them).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }
}

/// The destination of one block of a product: rows start at `off`, `rs` apart, in `out`.
#[derive(Clone, Copy)]
pub(crate) struct Dst {
    pub out: OutPtr,
    pub off: usize,
    pub rs: usize,
}

impl Dst {
    /// The same destination, `cols` columns further right.
    fn right(self, cols: usize) -> Self {
        Self {
            off: self.off + cols,
            ..self
        }
    }
}

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Which way the weight operand of a product is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WeightLayout {
    /// `w(l, c)` at `l * rs + c`: input-major (SwiGLU `gate_up` and `down`).
    InputMajor,
    /// `w(l, c)` at `c * rs + l`: output-major, as published (`Linear`).
    OutputMajor,
}

/// The weight operand of a product, starting at the block's first column.
#[derive(Clone, Copy)]
pub(crate) struct Weights<'a> {
    pub data: &'a [f32],
    /// Stride between rows (input-major) or columns (output-major).
    pub rs: usize,
    pub layout: WeightLayout,
}

/// Splits `0..n` into `parts` column blocks (at least [`MIN_BLOCK_COLS`] wide, multiples of
/// 16 so that block edges fall on SIMD boundaries).
fn col_blocks(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, (n / MIN_BLOCK_COLS).max(1));
    let width = n.div_ceil(parts).next_multiple_of(16);
    (0..n)
        .step_by(width.max(1))
        .map(|s| s..(s + width).min(n))
        .collect()
}

/// `a * b + c`, fused where `FMA` (the kernels compiled for a CPU that has it) so that the
/// portable and AVX2 versions share one body.
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` in f32 to a few ulp, branch-free so that loops over it vectorise (the libm call
/// does not): `2^n * p(r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and a degree-6 Taylor
/// polynomial for `e^r`. `n` is rounded with the `1.5 * 2^23` trick rather than `round()`,
/// which needs SSE4.1 to vectorise. Large inputs saturate at `e^88` (finite; what SiLU and
/// softmax need), inputs below `-87.3` (and `-inf`) give 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    const LO: f32 = -87.3;
    let xc = x.clamp(LO, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // n is in -126..=127 after the clamp: a normal power of two.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LO {
        0.0
    } else {
        p * scale
    }
}
