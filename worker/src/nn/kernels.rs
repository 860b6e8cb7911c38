//! f32 CPU kernels for the layers that dominate a forward pass: linear maps and (grouped)
//! SwiGLU feed-forward blocks.
//!
//! Why not candle's ops: candle's CPU matmul hands every product, however small, to `gemm`
//! with gemm's own multi-threading, and each op allocates its result. A MoE layer is many
//! small products (one per busy expert), where that threading is poor and the allocations
//! and copies between ops cost as much as the arithmetic; and at batch 1 gemm's
//! matrix-vector path runs on one thread, so the LM head and projections use half the
//! memory bandwidth of a 2-core machine. These kernels call the same `gemm` single-threaded
//! on blocks of the output and spread the blocks over rayon, fusing the SwiGLU activation
//! and the routing weight in between.
//!
//! Every entry point returns `None` when its inputs are not contiguous f32 CPU tensors; the
//! callers then use candle ops (bf16, CUDA).

use std::ops::Range;

use candle_core::{CpuStorage, Storage, StorageRef, Tensor};
use rayon::prelude::*;

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

// SAFETY: an `OutPtr` is only written through `gemm_block`, whose contract makes every
// concurrent caller write a disjoint block; the buffer outlives the tasks (it is borrowed
// mutably by the function that spawns them).
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

/// A read-only row-major matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Single-threaded `dst[off + i * dst_rs + j] = sum_l lhs(i, l) * rhs(l, j)` for `i < m`,
/// `j < n`, `l < k`.
///
/// # Safety
/// No other thread may read or write the `m x n` block of `dst` at `off` (row stride
/// `dst_rs`) during the call. Bounds are checked here.
pub(crate) unsafe fn gemm_block(
    dst: OutPtr,
    off: usize,
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        off + (m - 1) * dst_rs + n <= dst.len,
        "gemm_block: dst out of bounds"
    );
    if k == 0 {
        for i in 0..m {
            // SAFETY: in bounds (checked above) and exclusively ours (contract).
            unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(off + i * dst_rs), n) }.fill(0.0);
        }
        return;
    }
    assert!(
        (m - 1) * lhs.rs + (k - 1) * lhs.cs < lhs.data.len(),
        "gemm_block: lhs out of bounds"
    );
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(),
        "gemm_block: rhs out of bounds"
    );
    // SAFETY: every index gemm touches is within the extents checked above; the destination
    // block is exclusively ours (contract); gemm computes dst = 0 * dst + 1 * lhs * rhs and
    // with `read_dst = false` never reads dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr.add(off),
            1,
            dst_rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Up to this many rows, products with output-major weights run on the streaming dot
/// kernel instead of `gemm`: with few rows a product is bound by reading the weights, and
/// gemm packs output-major weights before using them.
const SMALL_M: usize = 16;

/// Up to this many rows, products with input-major weights run on the streaming axpy
/// kernel; up to [`PACK_M`], on `gemm` with the weights packed into column panels first;
/// above, on `gemm` directly. Unpacked, gemm walks an input-major matrix down narrow column
/// strips, one row (often one page) apart per step, which the prefetchers do not follow:
/// measured at about half the packed rate for 16-32 rows; from about 64 rows the packing
/// costs more than it saves. The axpy kernel is bound by its output stores beyond a few rows.
const AXPY_M: usize = 4;
const PACK_M: usize = 48;

/// Width of the column panels input-major weights are packed into (`k x PANEL` floats).
const PANEL: usize = 64;

thread_local! {
    /// Per-thread panel buffer of [`matmul_block`], reused across calls.
    static PANEL_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `out[i, c] = sum_l x[i, l] * w[l, c]` for a row-major `w` with row stride `w_rs`, reading
/// `w` row by row (sequential, prefetch-friendly) while `out` (`m x n`, row stride `out_rs`)
/// stays in L1.
#[inline(always)]
fn rows_axpy_body<const FMA: bool>(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    // Column chunks small enough that the output rows stay in L1.
    let chunk = (4096 / out.len().max(1)).clamp(64, 1024);
    let mut c0 = 0;
    while c0 < n {
        let cn = chunk.min(n - c0);
        for o in out.iter_mut() {
            o[c0..c0 + cn].fill(0.0);
        }
        for l in 0..k {
            let wr = &w[l * w_rs + c0..l * w_rs + c0 + cn];
            for (i, o) in out.iter_mut().enumerate() {
                let xi = x.data[i * x.rs + l * x.cs];
                for (o, &wv) in o[c0..c0 + cn].iter_mut().zip(wr) {
                    *o = fmadd::<FMA>(xi, wv, *o);
                }
            }
        }
        c0 += cn;
    }
}

/// `out[i, j] = dot(x[i, :], w[j, :])` for a row-major `w` (`n x k`, row stride `w_rs`):
/// each weight row is read from memory once and reused for every row of `x` from L1.
#[inline(always)]
fn rows_dot_body<const FMA: bool>(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    const L: usize = 32;
    for j in 0..n {
        let wr = &w[j * w_rs..j * w_rs + k];
        for (i, o) in out.iter_mut().enumerate() {
            let xr = &x.data[i * x.rs..i * x.rs + k];
            // 32 independent lanes: four vector accumulators hide the FMA latency.
            let mut acc = [0f32; L];
            let (wc, xc) = (wr.chunks_exact(L), xr.chunks_exact(L));
            let (wt, xt) = (wc.remainder(), xc.remainder());
            for (a, b) in wc.zip(xc) {
                for l in 0..L {
                    acc[l] = fmadd::<FMA>(a[l], b[l], acc[l]);
                }
            }
            let mut s: f32 = 0.0;
            for (a, b) in wt.iter().zip(xt) {
                s = fmadd::<FMA>(*a, *b, s);
            }
            o[j] = acc.iter().sum::<f32>() + s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_axpy_avx2(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    rows_axpy_body::<true>(n, k, x, w, w_rs, out)
}

/// AVX2 version of [`rows_dot_body`], register-blocked: tiles of up to 3 weight rows x 3
/// input rows, so that each 8-float load feeds 3 FMAs instead of one (the plain
/// version is bound by loads from L1 once several rows share a weight row) and every tile
/// has independent accumulators to hide the FMA latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_dot_avx2(
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    out: &mut [&mut [f32]],
) {
    const NB: usize = 3;
    const MB: usize = 3;
    let m = out.len();
    // Every row read by the tiles is `k` long and starts within these bounds.
    assert!(n == 0 || (n - 1) * w_rs + k <= w.len());
    assert!(m == 0 || (m - 1) * x.rs + k <= x.data.len());
    let mut j = 0;
    while j < n {
        let nb = NB.min(n - j);
        let mut i = 0;
        while i < m {
            let mb = MB.min(m - i);
            // While the first input tile streams this weight-row triple in from memory,
            // prefetch the triple after next: the hardware prefetcher alone leaves these
            // loads waiting on DRAM (half the kernel's time, by perf).
            let pf = if i == 0 {
                (j + 2 * NB).min(n)..(j + 3 * NB).min(n)
            } else {
                0..0
            };
            let t = (j, i, k, x, w, w_rs, pf);
            // SAFETY (all arms): rows j..j+nb of w and i..i+mb of x are in bounds (asserted
            // above); the CPU has AVX2 and FMA (this function's contract).
            unsafe {
                match (nb, mb) {
                    (3, 3) => dot_tile::<3, 3>(t, out),
                    (3, 2) => dot_tile::<3, 2>(t, out),
                    (3, 1) => dot_tile::<3, 1>(t, out),
                    (2, 3) => dot_tile::<2, 3>(t, out),
                    (2, 2) => dot_tile::<2, 2>(t, out),
                    (2, 1) => dot_tile::<2, 1>(t, out),
                    (1, 3) => dot_tile::<1, 3>(t, out),
                    (1, 2) => dot_tile::<1, 2>(t, out),
                    _ => dot_tile::<1, 1>(t, out),
                }
            }
            i += mb;
        }
        j += nb;
    }
}

/// One `NB x MB` tile of [`rows_dot_avx2`]: `out[i + c][j + r] = dot(w row j + r, x row i + c)`.
///
/// Rows `pf` of `w` are prefetched along the way.
///
/// # Safety
/// AVX2 and FMA available; rows `j..j + NB` of `w` and `i..i + MB` of `x` hold `k` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_tile<const NB: usize, const MB: usize>(
    (j, i, k, x, w, w_rs, pf): (usize, usize, usize, MatRef<'_>, &[f32], usize, Range<usize>),
    out: &mut [&mut [f32]],
) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let (wp, xp) = (w.as_ptr(), x.data.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); MB]; NB];
    let mut l = 0;
    while l < k8 {
        if l % 16 == 0 {
            for r in pf.clone() {
                // A hint only: the address is in bounds (rows < n, column l < k).
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(r * w_rs + l).cast());
            }
        }
        // NB weight vectors stay in registers while the MB input vectors stream past: with
        // the NB * MB accumulators that is 13 of the 16 vector registers, no spills.
        let mut wv = [_mm256_setzero_ps(); NB];
        for (r, v) in wv.iter_mut().enumerate() {
            // SAFETY: in bounds (contract).
            *v = unsafe { _mm256_loadu_ps(wp.add((j + r) * w_rs + l)) };
        }
        for c in 0..MB {
            // SAFETY: in bounds (contract).
            let xc = unsafe { _mm256_loadu_ps(xp.add((i + c) * x.rs + l)) };
            for (accr, wr) in acc.iter_mut().zip(&wv) {
                accr[c] = _mm256_fmadd_ps(*wr, xc, accr[c]);
            }
        }
        l += 8;
    }
    for (r, accr) in acc.iter().enumerate() {
        for (c, a) in accr.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` has room for 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for t in k8..k {
                s = w[(j + r) * w_rs + t].mul_add(x.data[(i + c) * x.rs + t], s);
            }
            out[i + c][j + r] = s;
        }
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which way the weight operand of a product is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightLayout {
    /// `w[l, c]` at `l * rs + c`: input-major (SwiGLU `gate_up` and `down`).
    InputMajor,
    /// `w[l, c]` at `c * rs + l`: output-major, as published (`Linear`).
    OutputMajor,
}

/// `dst[off + i * dst_rs + j] = sum_l x(i, l) * w(l, j)` for `i < m`, `j < n`, `l < k`,
/// single-threaded: streaming kernels for few rows, `gemm` otherwise. `w` starts at the
/// block's first column; `w_rs` is its stride between rows (input-major) or columns
/// (output-major).
///
/// # Safety
/// As [`gemm_block`]: no other thread may touch the destination block during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_block(
    dst: OutPtr,
    off: usize,
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: &[f32],
    w_rs: usize,
    layout: WeightLayout,
) {
    if m == 0 || n == 0 {
        return;
    }
    let rhs = match layout {
        WeightLayout::InputMajor => MatRef {
            data: w,
            rs: w_rs,
            cs: 1,
        },
        WeightLayout::OutputMajor => MatRef {
            data: w,
            rs: 1,
            cs: w_rs,
        },
    };
    if k > 0 && m > AXPY_M && m <= PACK_M && layout == WeightLayout::InputMajor {
        assert!(
            (k - 1) * w_rs + n <= w.len(),
            "matmul_block: w out of bounds"
        );
        return PANEL_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(k * PANEL, 0.0);
            let mut p0 = 0;
            while p0 < n {
                let pw = PANEL.min(n - p0);
                for l in 0..k {
                    buf[l * pw..(l + 1) * pw]
                        .copy_from_slice(&w[l * w_rs + p0..l * w_rs + p0 + pw]);
                }
                let packed = MatRef {
                    data: &buf[..k * pw],
                    rs: pw,
                    cs: 1,
                };
                // SAFETY: columns p0..p0 + pw of our block (forwarded contract).
                unsafe { gemm_block(dst, off + p0, dst_rs, m, pw, k, x, packed) };
                p0 += pw;
            }
        });
    }
    if m > SMALL_M || k == 0 || x.cs != 1 && layout == WeightLayout::OutputMajor {
        // (Input-major weights only get here above PACK_M rows.)
        // SAFETY: forwarded contract.
        return unsafe { gemm_block(dst, off, dst_rs, m, n, k, x, rhs) };
    }
    assert!(
        (m == 1 || dst_rs >= n) && off + (m - 1) * dst_rs + n <= dst.len,
        "matmul_block: dst out of bounds"
    );
    assert!(
        (m - 1) * x.rs + (k - 1) * x.cs < x.data.len(),
        "matmul_block: x out of bounds"
    );
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < w.len(),
        "matmul_block: w out of bounds"
    );
    let mut out: Vec<&mut [f32]> = (0..m)
        // SAFETY: each row of the block is in bounds (checked) and exclusively ours
        // (contract); the rows do not overlap (`dst_rs >= n` for a row-major destination).
        .map(|i| unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(off + i * dst_rs), n) })
        .collect();
    let out = &mut out[..];
    let avx2 = has_avx2_fma();
    match layout {
        WeightLayout::InputMajor => {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                return unsafe { rows_axpy_avx2(n, k, x, w, w_rs, out) };
            }
            rows_axpy_body::<false>(n, k, x, w, w_rs, out)
        }
        WeightLayout::OutputMajor => {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: as above.
                return unsafe { rows_dot_avx2(n, k, x, w, w_rs, out) };
            }
            rows_dot_body::<false>(n, k, x, w, w_rs, out)
        }
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

/// `x [m, in] · w[out, in]^T` for contiguous f32 CPU tensors (`None` otherwise, or when the
/// shapes do not line up, so that candle reports the error).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Option<Vec<f32>> {
    let (&[m, k], &[n, k2]) = (x.dims(), w.dims()) else {
        return None;
    };
    if k != k2 {
        return None;
    }
    with_f32(x, |xs| {
        with_f32(w, |ws| {
            let mut y = vec![0f32; m * n];
            let out = OutPtr::new(&mut y);
            let lhs = MatRef {
                data: xs,
                rs: k,
                cs: 1,
            };
            let run = |c: &Range<usize>| {
                // SAFETY: each task writes columns `c` of `y`, disjoint from the others.
                unsafe {
                    matmul_block(
                        out,
                        c.start,
                        n,
                        m,
                        c.len(),
                        k,
                        lhs,
                        &ws[c.start * k..],
                        k,
                        WeightLayout::OutputMajor,
                    )
                };
            };
            if m * n * k < SERIAL_MACS {
                run(&(0..n));
            } else {
                // Small m is bandwidth-bound (one block per thread streams its share of w);
                // large m gets more blocks for balance.
                let threads = rayon::current_num_threads();
                let parts = if m <= 16 { threads } else { 2 * threads };
                col_blocks(n, parts).par_iter().for_each(run);
            }
            y
        })
    })
    .flatten()
}

/// The weights of one SwiGLU block as f32 slices: `gate_up [hidden, 2F]` (gate columns first)
/// and `down [F, hidden]`, both row-major.
#[derive(Clone, Copy)]
pub(crate) struct SwiGluRef<'a> {
    pub gate_up: &'a [f32],
    pub down: &'a [f32],
}

/// Rows `rows` of the (gathered) input go through `ffn`.
#[derive(Clone)]
pub(crate) struct GroupWork<'a> {
    pub ffn: SwiGluRef<'a>,
    pub rows: Range<usize>,
}

/// `silu(x) = x / (1 + e^-x)`, as the reference computes it.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `g = silu(g) * u * s`, element-wise.
#[inline(always)]
fn silu_mul_body(g: &mut [f32], u: &[f32], s: f32) {
    for (gi, ui) in g.iter_mut().zip(u) {
        *gi = silu(*gi) * ui * s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32], s: f32) {
    silu_mul_body(g, u, s)
}

fn silu_mul(g: &mut [f32], u: &[f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { silu_mul_avx2(g, u, s) };
    }
    silu_mul_body(g, u, s)
}

/// SwiGLU over groups of rows: for each group, rows `rows` of `x [A, hidden]` go through its
/// block, and row `r` of the result `[A, hidden]` is scaled by `scale[r]` when given (applied
/// to the activation before the down projection, which is the same by linearity).
///
/// Work is split into (group, column block) tasks so that both many small groups (routed
/// experts at large batch) and one big group (a dense MLP, one busy expert) keep every
/// thread busy.
pub(crate) fn grouped_swiglu(
    x: &[f32],
    groups: &[GroupWork<'_>],
    hidden: usize,
    ffn: usize,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    let a = groups.iter().map(|g| g.rows.end).max().unwrap_or(0);
    let (h, f2) = (hidden, 2 * ffn);
    let mut act = vec![0f32; a * f2];
    let mut y = vec![0f32; a * h];
    if a == 0 {
        return y;
    }
    let total_macs = a * h * f2;
    let threads = rayon::current_num_threads();
    let serial = total_macs < SERIAL_MACS || threads == 1;
    // (group index, column block) tasks, biggest groups first for balance.
    let tasks = |cols: usize| -> Vec<(usize, Range<usize>)> {
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|&g| std::cmp::Reverse(groups[g].rows.len()));
        let mut t = Vec::new();
        for g in order {
            let n = groups[g].rows.len();
            if n == 0 {
                continue;
            }
            // A group's share of all rows, in units of 1 / (2 * threads).
            let parts = if serial {
                1
            } else {
                (n * 2 * threads).div_ceil(a).max(1)
            };
            t.extend(col_blocks(cols, parts).into_iter().map(|c| (g, c)));
        }
        t
    };
    let for_tasks = |t: Vec<(usize, Range<usize>)>, f: &(dyn Fn(&(usize, Range<usize>)) + Sync)| {
        if serial {
            t.iter().for_each(f);
        } else {
            t.par_iter().for_each(f);
        }
    };

    // Gate and up projections: act[rows, 0..2F] = x[rows] · gate_up.
    let out = OutPtr::new(&mut act);
    for_tasks(tasks(f2), &|(g, c)| {
        let gw = &groups[*g];
        let lhs = MatRef {
            data: &x[gw.rows.start * h..gw.rows.end * h],
            rs: h,
            cs: 1,
        };
        // SAFETY: tasks cover disjoint (rows, columns) blocks of `act`.
        unsafe {
            matmul_block(
                out,
                gw.rows.start * f2 + c.start,
                f2,
                gw.rows.len(),
                c.len(),
                h,
                lhs,
                &gw.ffn.gate_up[c.start..],
                f2,
                WeightLayout::InputMajor,
            )
        };
    });

    // silu(gate) * up * scale, written over the gate half of each row.
    let fuse = |(r, row): (usize, &mut [f32])| {
        let s = scale.map_or(1.0, |s| s[r]);
        let (g, u) = row.split_at_mut(ffn);
        silu_mul(g, u, s);
    };
    if serial {
        act.chunks_mut(f2).enumerate().for_each(fuse);
    } else {
        act.par_chunks_mut(f2).enumerate().for_each(fuse);
    }

    // Down projection: y[rows] = act[rows, 0..F] · down.
    let out = OutPtr::new(&mut y);
    let act = &act;
    for_tasks(tasks(h), &|(g, c)| {
        let gw = &groups[*g];
        let lhs = MatRef {
            data: &act[gw.rows.start * f2..gw.rows.end * f2],
            rs: f2,
            cs: 1,
        };
        // SAFETY: tasks cover disjoint (rows, columns) blocks of `y`.
        unsafe {
            matmul_block(
                out,
                gw.rows.start * h + c.start,
                h,
                gw.rows.len(),
                c.len(),
                ffn,
                lhs,
                &gw.ffn.down[c.start..],
                h,
                WeightLayout::InputMajor,
            )
        };
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn exp_is_accurate_over_the_range_softmax_and_silu_use() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        // Below the normal range: 0 instead of a subnormal.
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn col_blocks_cover_exactly() {
        for (n, parts) in [(1, 4), (31, 2), (512, 4), (1000, 3), (32000, 2)] {
            let b = col_blocks(n, parts);
            assert_eq!(b.first().map(|r| r.start), Some(0));
            assert_eq!(b.last().map(|r| r.end), Some(n));
            assert!(b.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn linear_matches_naive_for_small_and_large_shapes() {
        for (m, k, n) in [(1, 8, 5), (3, 64, 700), (40, 96, 130)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let xt = Tensor::from_vec(x.clone(), (m, k), &candle_core::Device::Cpu).unwrap();
            let wt_ = Tensor::from_vec(w, (n, k), &candle_core::Device::Cpu).unwrap();
            let got = linear(&xt, &wt_).unwrap();
            assert_eq!(got, naive(m, n, k, &x, &wt), "{m}x{k}x{n}");
        }
    }
}
