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

/// Single-threaded `dst(i, j) = sum_l lhs(i, l) * rhs(l, j)` for `i < m`, `j < n`, `l < k`.
///
/// # Safety
/// No other thread may read or write the `m x n` destination block during the call.
/// Bounds are checked here.
pub(crate) unsafe fn gemm_block(
    dst: Dst,
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    let Dst { out, off, rs } = dst;
    assert!(
        (m == 1 || rs >= n) && off + (m - 1) * rs + n <= out.len,
        "gemm_block: dst out of bounds"
    );
    if k == 0 {
        for i in 0..m {
            // SAFETY: in bounds (checked above) and exclusively ours (contract).
            unsafe { std::slice::from_raw_parts_mut(out.ptr.add(off + i * rs), n) }.fill(0.0);
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
            out.ptr.add(off),
            1,
            rs as isize,
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

/// Single-threaded `tmp[j * m + i] = sum_l lhs(i, l) * rhs(l, j)`: the product in
/// column-major order, which lets gemm run its micro-kernel on `rhs` without walking it
/// down column strips.
fn gemm_colmajor(tmp: &mut [f32], m: usize, n: usize, k: usize, lhs: MatRef<'_>, rhs: MatRef<'_>) {
    if m == 0 || n == 0 || k == 0 {
        tmp[..m * n].fill(0.0);
        return;
    }
    assert!(tmp.len() >= m * n, "gemm_colmajor: tmp too small");
    assert!(
        (m - 1) * lhs.rs + (k - 1) * lhs.cs < lhs.data.len(),
        "gemm_colmajor: lhs out of bounds"
    );
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(),
        "gemm_colmajor: rhs out of bounds"
    );
    // SAFETY: every index gemm touches is within the extents checked above, and `tmp` is
    // borrowed exclusively; with `read_dst = false` gemm only writes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            tmp.as_mut_ptr(),
            m as isize,
            1,
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

/// Products with input-major weights, by number of rows `m` (single-thread rates measured
/// for a `1024 x 1024` weight on this machine, BENCHMARKS.md):
///
/// - `m <= AXPY_M`: the streaming axpy kernel (bound by reading the weights; beyond a few
///   rows it is bound by its output stores instead);
/// - `m <= COLMAJOR_M`: gemm into a column-major scratch, transposed into place (gemm's
///   row-major path walks an input-major matrix down narrow column strips, one row, often
///   one page, apart per step, which the prefetchers do not follow: 27 vs 60 GFLOP/s at 16
///   rows, 35 vs 71 at 32);
/// - `m <= PACK_M`: gemm on weights packed into column panels first (72 vs 58 GFLOP/s at 48
///   rows);
/// - above: gemm directly (from about 64 rows packing costs more than it saves).
const AXPY_M: usize = 4;
const COLMAJOR_M: usize = 32;
const PACK_M: usize = 48;

/// Width of the column panels input-major weights are packed into (`k x PANEL` floats).
const PANEL: usize = 64;

thread_local! {
    /// Per-thread scratch of [`matmul_block`] (packed panels, column-major results), reused
    /// across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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
            // Prefetch the weight rows four triples ahead into L2 while this triple is in
            // use, spread over the passes of the input tiles (one row per pass) so that few
            // misses are in flight at once. The hardware prefetcher alone left these loads
            // waiting on DRAM: the LM head at 16 rows ran at 47 GFLOP/s on one core against
            // 77 with the weights in cache; with these prefetches, 58 (one triple ahead into
            // L1: 53).
            let passes = m.div_ceil(MB);
            let pass = i / MB;
            let next = (j + 4 * NB).min(n)..(j + 5 * NB).min(n);
            let pf = if passes < NB {
                if pass == 0 {
                    next
                } else {
                    0..0
                }
            } else if pass < next.len() {
                next.start + pass..next.start + pass + 1
            } else {
                0..0
            };
            let t = Tile {
                j,
                i,
                k,
                x,
                w,
                w_rs,
                pf,
            };
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

/// Where one tile of [`rows_dot_avx2`] starts: weight row `j`, input row `i`, `k` long;
/// weight rows `pf` are prefetched along the way.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    j: usize,
    i: usize,
    k: usize,
    x: MatRef<'a>,
    w: &'a [f32],
    w_rs: usize,
    pf: Range<usize>,
}

/// One `NB x MB` tile of [`rows_dot_avx2`]: `out[i + c][j + r] = dot(w row j + r, x row i + c)`.
///
/// # Safety
/// AVX2 and FMA available; rows `j..j + NB` of `w` and `i..i + MB` of `x` hold `k` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_tile<const NB: usize, const MB: usize>(t: Tile<'_>, out: &mut [&mut [f32]]) {
    let Tile {
        j,
        i,
        k,
        x,
        w,
        w_rs,
        pf,
    } = t;
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let (wp, xp) = (w.as_ptr(), x.data.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); MB]; NB];
    let mut l = 0;
    while l < k8 {
        if l % 16 == 0 {
            for r in pf.clone() {
                // A hint only: the address is in bounds (rows < n, column l < k).
                _mm_prefetch::<_MM_HINT_T1>(wp.wrapping_add(r * w_rs + l).cast());
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

/// Whether the AVX2 + FMA versions of the kernels can run (checked once, then cached by
/// the standard library).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
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

/// `dst(i, j) = sum_l x(i, l) * w(l, j)` for `i < m`, `j < n`, `l < k`, single-threaded,
/// by the kernel that suits the shape:
///
/// - one row: gemm's matrix-vector code (streams the weights at full bandwidth);
/// - output-major weights, up to [`SMALL_M`] rows: the tiled AVX2 dot kernel;
/// - input-major weights, up to [`AXPY_M`] rows: the streaming axpy kernel;
/// - input-major weights, up to [`COLMAJOR_M`] rows: gemm into a column-major scratch;
/// - input-major weights, up to [`PACK_M`] rows: gemm on weights packed into panels;
/// - otherwise: gemm.
///
/// # Safety
/// As [`gemm_block`]: no other thread may touch the destination block during the call.
pub(crate) unsafe fn matmul_block(
    dst: Dst,
    m: usize,
    n: usize,
    k: usize,
    x: MatRef<'_>,
    w: Weights<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    let rhs = match w.layout {
        WeightLayout::InputMajor => MatRef {
            data: w.data,
            rs: w.rs,
            cs: 1,
        },
        WeightLayout::OutputMajor => MatRef {
            data: w.data,
            rs: 1,
            cs: w.rs,
        },
    };
    let input_major = w.layout == WeightLayout::InputMajor;
    if k > 0 && m > AXPY_M && m <= COLMAJOR_M && input_major {
        let Dst { out, off, rs } = dst;
        assert!(
            rs >= n && off + (m - 1) * rs + n <= out.len,
            "matmul_block: dst out of bounds"
        );
        return SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(m * n, 0.0);
            // tmp(i, j) at j * m + i.
            gemm_colmajor(&mut buf[..m * n], m, n, k, x, rhs);
            for i in 0..m {
                // SAFETY: row i of the block is in bounds (checked) and exclusively ours
                // (contract).
                let row = unsafe { std::slice::from_raw_parts_mut(out.ptr.add(off + i * rs), n) };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = buf[j * m + i];
                }
            }
        });
    }
    if k > 0 && m > COLMAJOR_M && m <= PACK_M && input_major {
        assert!(
            (k - 1) * w.rs + n <= w.data.len(),
            "matmul_block: w out of bounds"
        );
        return SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(k * PANEL, 0.0);
            let mut p0 = 0;
            while p0 < n {
                let pw = PANEL.min(n - p0);
                for l in 0..k {
                    buf[l * pw..(l + 1) * pw]
                        .copy_from_slice(&w.data[l * w.rs + p0..l * w.rs + p0 + pw]);
                }
                let packed = MatRef {
                    data: &buf[..k * pw],
                    rs: pw,
                    cs: 1,
                };
                // SAFETY: columns p0..p0 + pw of our block (forwarded contract).
                unsafe { gemm_block(dst.right(p0), m, pw, k, x, packed) };
                p0 += pw;
            }
        });
    }
    if m == 1 || k == 0 || (input_major && m > AXPY_M) || m > SMALL_M || x.cs != 1 {
        // SAFETY: forwarded contract.
        return unsafe { gemm_block(dst, m, n, k, x, rhs) };
    }
    let Dst { out, off, rs } = dst;
    assert!(
        rs >= n && off + (m - 1) * rs + n <= out.len,
        "matmul_block: dst out of bounds"
    );
    assert!(
        (m - 1) * x.rs + k <= x.data.len(),
        "matmul_block: x out of bounds"
    );
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < w.data.len(),
        "matmul_block: w out of bounds"
    );
    let mut rows: Vec<&mut [f32]> = (0..m)
        // SAFETY: each row of the block is in bounds (checked) and exclusively ours
        // (contract); the rows do not overlap (`rs >= n`).
        .map(|i| unsafe { std::slice::from_raw_parts_mut(out.ptr.add(off + i * rs), n) })
        .collect();
    let rows = &mut rows[..];
    #[cfg(target_arch = "x86_64")]
    let avx2 = has_avx2_fma();
    match w.layout {
        WeightLayout::InputMajor => {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                return unsafe { rows_axpy_avx2(n, k, x, w.data, w.rs, rows) };
            }
            rows_axpy_body::<false>(n, k, x, w.data, w.rs, rows)
        }
        WeightLayout::OutputMajor => {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: as above.
                return unsafe { rows_dot_avx2(n, k, x, w.data, w.rs, rows) };
            }
            rows_dot_body::<false>(n, k, x, w.data, w.rs, rows)
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

thread_local! {
    /// Large buffers of the calling thread's MoE layers, kept between layers and steps.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The pool keeps at most this many floats (64 MiB) per thread.
const POOL_MAX_FLOATS: usize = 1 << 24;

/// A scratch buffer from the calling thread's pool, returned to it on drop. A fresh
/// allocation of tens of megabytes costs a page fault per 4 KiB on first touch (8% of a
/// 1024-token MoE layer, by perf); reused buffers are already mapped. Contents are
/// unspecified: users write before they read.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    pub(crate) fn take(len: usize) -> Self {
        let mut v = POOL
            .with(|p| {
                let mut p = p.borrow_mut();
                let best = (0..p.len()).max_by_key(|&i| p[i].capacity())?;
                Some(p.swap_remove(best))
            })
            .unwrap_or_default();
        v.resize(len, 0.0);
        Scratch(v)
    }

    /// The buffer, leaving the pool for good (it becomes a tensor's storage).
    pub(crate) fn into_inner(mut self) -> Vec<f32> {
        std::mem::take(&mut self.0)
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        // `try_with`: during thread teardown the pool may be gone; then the buffer is freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            let held: usize = p.iter().map(Vec::capacity).sum();
            if held + v.capacity() <= POOL_MAX_FLOATS {
                p.push(v);
            }
        });
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
    linear_rows(x, &[w])?.pop()
}

/// `x · w^T` for every `w` in `ws` (each `[out_i, in]`), as row-major f32 rows, in one
/// parallel region: the projections that read the same input (q, k and v) then cost one
/// hand-off to the thread pool instead of three, which at one token is a good part of their
/// time. `None` unless `x` and every `w` are contiguous f32 CPU tensors of matching shapes.
pub(crate) fn linear_rows(x: &Tensor, ws: &[&Tensor]) -> Option<Vec<Vec<f32>>> {
    let &[m, k] = x.dims() else {
        return None;
    };
    let mut outs = Vec::with_capacity(ws.len());
    let mut guards = Vec::with_capacity(ws.len());
    for w in ws {
        let &[n, k2] = w.dims() else {
            return None;
        };
        if k2 != k {
            return None;
        }
        guards.push((n, F32Guard::new(w)?));
        outs.push(vec![0f32; m * n]);
    }
    let xg = F32Guard::new(x)?;
    let lhs = MatRef {
        data: xg.slice(),
        rs: k,
        cs: 1,
    };
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr::new(o)).collect();
    let run = |(i, c): &(usize, Range<usize>)| {
        let (n, g) = &guards[*i];
        let dst = Dst {
            out: ptrs[*i],
            off: c.start,
            rs: *n,
        };
        let w = Weights {
            data: &g.slice()[c.start * k..],
            rs: k,
            layout: WeightLayout::OutputMajor,
        };
        // SAFETY: each task writes columns `c` of output `i`, disjoint from the others.
        unsafe { matmul_block(dst, m, c.len(), k, lhs, w) };
    };
    let macs: usize = guards.iter().map(|(n, _)| m * n * k).sum();
    if macs < SERIAL_MACS {
        for (i, (n, _)) in guards.iter().enumerate() {
            run(&(i, 0..*n));
        }
    } else {
        // Few rows are bandwidth-bound (one block per thread streams its share of each w);
        // more rows get more blocks for balance.
        let threads = rayon::current_num_threads();
        let parts = if m <= 16 { threads } else { 2 * threads };
        let tasks: Vec<(usize, Range<usize>)> = guards
            .iter()
            .enumerate()
            .flat_map(|(i, (n, _))| col_blocks(*n, parts).into_iter().map(move |c| (i, c)))
            .collect();
        tasks.par_iter().for_each(run);
    }
    Some(outs)
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
/// to the activation before the down projection, which is the same by linearity). `A` is
/// the largest row end; the groups must cover `0..A` (rows outside every group come back
/// unspecified).
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
) -> Scratch {
    let a = groups.iter().map(|g| g.rows.end).max().unwrap_or(0);
    let (h, f2) = (hidden, 2 * ffn);
    // Every element of both is written below: each (row, column) by exactly one task.
    let mut act = Scratch::take(a * f2);
    let mut y = Scratch::take(a * h);
    if a == 0 {
        return y;
    }
    let total_macs = a * h * f2;
    let threads = rayon::current_num_threads();
    let serial = total_macs < SERIAL_MACS || threads == 1;
    // (group index, column block) tasks, biggest groups first for balance.
    type Task = (usize, Range<usize>);
    let tasks = |cols: usize| -> Vec<Task> {
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
    let for_tasks = |t: Vec<Task>, f: &(dyn Fn(&Task) + Sync)| {
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
        let dst = Dst {
            out,
            off: gw.rows.start * f2 + c.start,
            rs: f2,
        };
        let w = Weights {
            data: &gw.ffn.gate_up[c.start..],
            rs: f2,
            layout: WeightLayout::InputMajor,
        };
        // SAFETY: tasks cover disjoint (rows, columns) blocks of `act`.
        unsafe { matmul_block(dst, gw.rows.len(), c.len(), h, lhs, w) };
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
        let dst = Dst {
            out,
            off: gw.rows.start * h + c.start,
            rs: h,
        };
        let w = Weights {
            data: &gw.ffn.down[c.start..],
            rs: h,
            layout: WeightLayout::InputMajor,
        };
        // SAFETY: tasks cover disjoint (rows, columns) blocks of `y`.
        unsafe { matmul_block(dst, gw.rows.len(), c.len(), ffn, lhs, w) };
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

    /// Every kernel path of `matmul_block`, both layouts, into a strided, offset block;
    /// small integer values make every summation order exact.
    #[test]
    fn matmul_block_matches_naive_on_every_path() {
        for layout in [WeightLayout::InputMajor, WeightLayout::OutputMajor] {
            for m in [1, 2, 3, 4, 5, 16, 17, 40, 49, 70] {
                for (k, n) in [(1, 1), (13, 7), (64, 70), (9, 130)] {
                    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 7) as f32 - 3.0).collect();
                    // w(l, c) for l < k, c < n, stored per layout with a padded stride.
                    let wv = |l: usize, c: usize| ((l * 5 + c * 3) % 7) as f32 - 3.0;
                    let (w, w_rs) = match layout {
                        WeightLayout::InputMajor => {
                            let rs = n + 5;
                            let mut w = vec![0f32; k * rs];
                            for l in 0..k {
                                for c in 0..n {
                                    w[l * rs + c] = wv(l, c);
                                }
                            }
                            (w, rs)
                        }
                        WeightLayout::OutputMajor => {
                            let rs = k + 3;
                            let mut w = vec![0f32; n * rs];
                            for c in 0..n {
                                for l in 0..k {
                                    w[c * rs + l] = wv(l, c);
                                }
                            }
                            (w, rs)
                        }
                    };
                    let wn: Vec<f32> = (0..k * n).map(|i| wv(i / n, i % n)).collect();
                    let want = naive(m, n, k, &x, &wn);
                    let (off, rs) = (2, n + 3);
                    let mut buf = vec![f32::NAN; off + m * rs];
                    let dst = Dst {
                        out: OutPtr::new(&mut buf),
                        off,
                        rs,
                    };
                    let xm = MatRef {
                        data: &x,
                        rs: k,
                        cs: 1,
                    };
                    let wr = Weights {
                        data: &w,
                        rs: w_rs,
                        layout,
                    };
                    // SAFETY: single-threaded; the block is in bounds.
                    unsafe { matmul_block(dst, m, n, k, xm, wr) };
                    for i in 0..m {
                        assert_eq!(
                            &buf[off + i * rs..off + i * rs + n],
                            &want[i * n..(i + 1) * n],
                            "{layout:?} m={m} k={k} n={n} row {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_swiglu_matches_naive() {
        let (h, f) = (24, 40);
        let ffns: Vec<(Vec<f32>, Vec<f32>)> = (0..3)
            .map(|e| {
                let gu = (0..h * 2 * f)
                    .map(|i| (((i * 31 + e * 7) % 17) as f32 - 8.0) * 0.02)
                    .collect();
                let d = (0..f * h)
                    .map(|i| (((i * 13 + e * 5) % 11) as f32 - 5.0) * 0.03)
                    .collect();
                (gu, d)
            })
            .collect();
        // Group sizes that take the single-row, axpy, packed and plain gemm paths.
        let sizes = [1, 3, 20, 60];
        let a: usize = sizes.iter().sum();
        let x: Vec<f32> = (0..a * h)
            .map(|i| ((i % 23) as f32 - 11.0) * 0.05)
            .collect();
        let scale: Vec<f32> = (0..a).map(|r| 0.5 + r as f32 * 0.01).collect();
        let mut groups = Vec::new();
        let mut start = 0;
        for (g, &n) in sizes.iter().enumerate() {
            let (gu, d) = &ffns[g % ffns.len()];
            groups.push(GroupWork {
                ffn: SwiGluRef {
                    gate_up: gu,
                    down: d,
                },
                rows: start..start + n,
            });
            start += n;
        }
        let got = grouped_swiglu(&x, &groups, h, f, Some(&scale));
        for gw in &groups {
            for r in gw.rows.clone() {
                let xr = &x[r * h..(r + 1) * h];
                let hid = naive(1, 2 * f, h, xr, gw.ffn.gate_up);
                let act: Vec<f32> = (0..f)
                    .map(|j| {
                        let g = hid[j];
                        g / (1.0 + (-g).exp()) * hid[f + j] * scale[r]
                    })
                    .collect();
                let want = naive(1, h, f, &act, gw.ffn.down);
                for (c, (a, b)) in got[r * h..(r + 1) * h].iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "row {r} col {c}: {a} vs {b}"
                    );
                }
            }
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
