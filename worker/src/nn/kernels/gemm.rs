//! Products on one thread, by the kernel that suits their shape ([`matmul_block`]), and the
//! linear maps that split a product over rayon into such blocks ([`linear_rows`]).

use std::ops::Range;

use candle_core::Tensor;
use rayon::prelude::*;

use super::avx2::stream_rows;
use super::{col_blocks, Dst, F32Guard, MatRef, OutPtr, WeightLayout, Weights, SERIAL_MACS};

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
    // SAFETY: `off` is within the output (checked above).
    let ptr = unsafe { out.ptr.add(off) };
    let dst = RawMat { ptr, rs, cs: 1 };
    // SAFETY: the destination block is in bounds (checked above) and exclusively ours
    // (contract).
    unsafe { gemm_strided(dst, m, n, k, lhs, rhs, "gemm_block") }
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
    let dst = RawMat {
        ptr: tmp.as_mut_ptr(),
        rs: 1,
        cs: m,
    };
    // SAFETY: `tmp` holds the `m x n` result (checked above) and is borrowed exclusively.
    unsafe { gemm_strided(dst, m, n, k, lhs, rhs, "gemm_colmajor") }
}

/// A destination of gemm: element `(i, j)` at `ptr + i * rs + j * cs`.
struct RawMat {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}

/// Single-threaded gemm of `lhs (m x k) · rhs (k x n)` into `dst`, after checking that both operands hold every element
/// read (`kernel` names the caller in the panic). `m`, `n` and `k` are at least 1.
///
/// # Safety
/// Every destination element is valid for writes and no other thread reads or writes it
/// during the call.
unsafe fn gemm_strided(
    dst: RawMat,
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    kernel: &str,
) {
    assert!(
        (m - 1) * lhs.rs + (k - 1) * lhs.cs < lhs.data.len(),
        "{kernel}: lhs out of bounds"
    );
    assert!(
        (k - 1) * rhs.rs + (n - 1) * rhs.cs < rhs.data.len(),
        "{kernel}: rhs out of bounds"
    );
    // SAFETY: every index gemm touches is within the extents checked above or valid for
    // writes and exclusively ours (contract); gemm computes dst = 0 * dst + 1 * lhs * rhs and
    // with `read_dst = false` never reads dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs as isize,
            dst.rs as isize,
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
    let mut out_rows: Vec<&mut [f32]> = (0..m)
        // SAFETY: each row of the block is in bounds (checked) and exclusively ours
        // (contract); the rows do not overlap (`rs >= n`).
        .map(|i| unsafe { std::slice::from_raw_parts_mut(out.ptr.add(off + i * rs), n) })
        .collect();
    stream_rows(n, k, x, w, &mut out_rows)
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
